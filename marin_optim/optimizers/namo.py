"""NAMO and NAMO-D: Newton-Schulz-orthogonalised momentum with norm-based adaptive step sizes.

Levanter's ``namo`` and ``namoD`` (fields, defaults and numbers): hidden matrices take the rule
of :mod:`marin_optim.transforms.namo`, everything else AdamW at ``adam_lr``, split by
:class:`~marin_optim.labels.ParamLabeler` as in ``muon``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import optax

from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError
from marin_optim.optimizers.muon import AdamWFallbackConfig, check_newton_schulz_fields
from marin_optim.transforms.namo import namo, namo_d
from marin_optim.transforms.newton_schulz import NS_DTYPES
from marin_optim.validation import check_positive, check_range, where_of

GROUP = "Matrix-aware (orthogonalised updates)"


@OptimizerConfig.register_subclass("namo")
@dataclass(frozen=True)
class NamoConfig(AdamWFallbackConfig):
    """NAMO: orthogonalised momentum with an Adam-like adaptive rate per matrix; AdamW for the rest.

    Matrix update (Zhang et al., 2026, "NAMO: Norm-Based Adaptive Moment Estimation with
    Orthogonalized Momentum", https://arxiv.org/abs/2602.17080; see
    :func:`~marin_optim.transforms.namo.namo`), step ``t`` from 1::

        M = momentum M + (1 - momentum) G;  U = momentum M + (1 - momentum) G (nesterov) or M
        v = mu2 v + (1 - mu2) ||G||_F^2
        alpha = min(lr sqrt(1 - mu2^t) / (1 - momentum^t) ||U||_F / (sqrt(v) + adamnorm_eps), 1)
        W = W - wd alpha W - min(alpha scale_coeff sqrt(max(out, in)), 1) NS(U)

    Embeddings, the output head, norms and biases use AdamW at ``adam_lr`` (same schedule
    shape) with ``adam_weight_decay``. Fields, defaults and numbers are Levanter's ``namo``
    (``max_grad_norm`` clips the AdamW branch only; Newton-Schulz in float32); ours adds
    ``clip_scope: all``, ``ns_dtype: bfloat16``, ``param_labels``, and the schedule, guard and
    group fields. The matrices' decay follows the weight-decay mask (Levanter decays every
    matrix it routes to NAMO whatever ``weight_decay_modules`` says).
    """

    learning_rate: float = 1e-2
    """Peak learning rate of the NAMO (matrix) branch, before its adaptive factor."""
    weight_decay: float = 0.1
    """Decoupled weight decay of the matrices (scaled by their adaptive rate) and of the AdamW
    branch unless adam_weight_decay is set."""
    momentum: float = 0.95
    """First-moment decay (M = momentum M + (1 - momentum) G; bias-corrected)."""
    mu2: float = 0.99
    """Decay of the second moment of the gradient norms (bias-corrected)."""
    adamnorm_eps: float = 1e-8
    """Added to sqrt(v) in the adaptive rate."""
    nesterov: bool = True
    """Orthogonalise momentum M + (1 - momentum) G (Nesterov) instead of M."""
    backend_steps: int = 5
    """Newton-Schulz iterations."""
    muon_epsilon: float = 1e-8
    """Added to the Frobenius norm before Newton-Schulz."""
    scale_coeff: float = 0.2
    """Shape factor of the orthogonal step: scale_coeff sqrt(max(out, in)) (Kimi's 0.2)."""
    coefficient_type: str = "simple"
    """Newton-Schulz coefficients: simple (the paper's), quintic, polar_express or aol (see muon)."""
    ns_dtype: Literal["bfloat16", "float32"] = "float32"
    """Operand dtype of the Newton-Schulz matrix products (float32 = Levanter's numbers)."""

    BRANCHES: ClassVar[dict[str, str]] = {
        "matrix": "namo",
        "embedding": "adam",
        "head": "adam",
        "vector": "adam",
    }

    def validate(self) -> None:
        super().validate()
        check_newton_schulz_fields(self)
        check_range(self, "momentum", 0.0, 1.0, hi_open=True)
        check_range(self, "mu2", 0.0, 1.0, hi_open=True)
        check_range(self, "adamnorm_eps", 0.0)
        check_positive(self, "scale_coeff")
        if self.cautious_weight_decay:
            raise ConfigError(
                f"{where_of(self, 'cautious_weight_decay')}=True: NAMO's matrix decay is part of its "
                "adaptive update; only plain decay (false) is supported"
            )

    def matrix_options(self, hp: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments of the matrix rule shared by NAMO and NAMO-D."""
        return {
            "learning_rate": hp["learning_rate"],
            "weight_decay": hp["weight_decay"] if self.uses_weight_decay else 0.0,
            "weight_decay_mask": self.build_weight_decay_mask(),
            "momentum": self.momentum,
            "mu2": self.mu2,
            "nesterov": self.nesterov,
            "adamnorm_eps": self.adamnorm_eps,
            "scale_coeff": self.scale_coeff,
            "ns_coefficients": self.coefficient_type,
            "ns_steps": self.backend_steps,
            "eps": self.muon_epsilon,
            "ns_dtype": NS_DTYPES[self.ns_dtype],
        }

    def matrix_update(self, hp: Mapping[str, Any]) -> optax.GradientTransformation:
        """The matrix branch: the parameter change itself (rate and decay inside)."""
        return namo(self.labeler().matrix_axes, **self.matrix_options(hp))

    def update_rule(self, hp: Mapping[str, Any]) -> optax.GradientTransformation:
        return self.partition(
            {self.BRANCHES["matrix"]: self.matrix_update(hp), "adam": self.fallback_branch(hp)}
        )


@OptimizerConfig.register_subclass("namoD")
@dataclass(frozen=True)
class NamoDConfig(NamoConfig):
    """NAMO-D: NAMO with one adaptive rate per input column, clamped around the matrix's mean.

    Matrix update (Zhang et al., 2026, https://arxiv.org/abs/2602.17080, NAMO-D; see
    :func:`~marin_optim.transforms.namo.namo_d`), with ``M``, ``U``, ``NS`` and the bias
    correction ``beta = lr sqrt(1 - mu2^t) / (1 - momentum^t)`` as in ``namo``, per column ``j``::

        v_j = mu2 v_j + (1 - mu2) ||G_j||^2
        s_j = clip(||U_j|| / (sqrt(v_j) + adamnorm_eps), c mean(s), mean(s) / c)
        W_j = W_j max(1 - wd min(beta s_j, 1), 0) - min(beta s_j scale_coeff sqrt(max(out, in)), 1) NS(U)_j

    with ``c = col_state_clamp_c`` (outside ``(0, 1]``: no clamp). Other fields as in ``namo``
    (Levanter's ``namoD``). A column is one input feature of the layer (Levanter's ``Linear``
    layout is out-first, where the two agree).
    """

    col_state_clamp_c: float = 0.75
    """Clamp of the column scales to [c mean, mean / c]; 1 = the matrix mean for every column,
    a value outside (0, 1] = no clamp."""

    def matrix_update(self, hp: Mapping[str, Any]) -> optax.GradientTransformation:
        return namo_d(self.labeler().matrix_axes, clamp_c=self.col_state_clamp_c, **self.matrix_options(hp))
