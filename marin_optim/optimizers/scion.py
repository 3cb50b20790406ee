"""Scion: spectral-norm steps for hidden matrices, sign steps for everything else (Levanter's ``scion``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import optax

from marin_optim.config import OptimizerConfig
from marin_optim.optimizers.muon import MatrixOptimizerConfig, check_newton_schulz_fields, check_unread_lr
from marin_optim.transforms.muon import scale_by_muon
from marin_optim.transforms.newton_schulz import NS_DTYPES
from marin_optim.validation import check_positive, check_range

GROUP = "Matrix-aware (orthogonalised updates)"


@OptimizerConfig.register_subclass("scion")
@dataclass(frozen=True)
class ScionConfig(MatrixOptimizerConfig):
    """Scion: orthogonalised momentum for hidden matrices, signum for embeddings, head and vectors.

    Pethick et al., 2025, "Training Deep Learning Models with Norm-Constrained LMOs",
    https://arxiv.org/abs/2502.07529, with Levanter's ``scion`` semantics: hidden matrices take
    the spectral-norm step ``p = p - lr (sqrt(max(1, out/in)) NS(M) + wd p)`` with ``M = momentum
    M + (1 - momentum) G`` (no Nesterov); every other parameter (embeddings, the output head,
    norms, biases) takes the sign (l-infinity) step ``p = p - lr * scion_to_signum_lr *
    (sign(m) + wd p)`` with ``m = beta1 m + (1 - beta1) G``, its gradients clipped by their own
    norm (``clip_scope: signum``, Levanter's; ``all`` = one global clip). The signum learning
    rate is injected as ``signum_learning_rate`` (the same schedule shape). Fields, defaults and
    numbers are Levanter's; ``coefficient_type: polar_express`` past 8 steps (the default
    ``backend_steps`` is 10) and ``aol`` past 4 repeat their last row where Levanter cycles
    (:mod:`marin_optim.transforms.newton_schulz`).
    """

    learning_rate: float = 6e-4
    """Peak learning rate of the spectral (matrix) branch (Levanter's default)."""
    lr: float = 0.02
    """Levanter's unread field: accepted at 0.02 only (learning_rate is the spectral rate)."""
    scion_to_signum_lr: float = 0.25
    """The sign branch's learning rate as a multiple of learning_rate."""
    weight_decay: float = 0.0
    """Decoupled weight decay in both branches, multiplied by each branch's learning rate."""
    momentum: float = 0.95
    """Momentum of the spectral branch (an exponential average)."""
    backend_steps: int = 10
    """Newton-Schulz iterations (Levanter's scion default)."""
    scion_epsilon: float = 1e-8
    """Added to the Frobenius norm before Newton-Schulz."""
    coefficient_type: str = "quintic"
    """Newton-Schulz coefficients: simple, quintic, polar_express or aol (see muon)."""
    ns_dtype: Literal["bfloat16", "float32"] = "float32"
    """Operand dtype of the Newton-Schulz matrix products (float32 = Levanter's numbers with
    float32 gradients)."""
    beta1: float = 0.9
    """Sign branch: decay rate of its momentum."""
    max_grad_norm: float | None = 1.0
    """Gradient-norm clip of the gradients clip_scope names; None or 0 disables it."""
    clip_scope: Literal["signum", "all"] = "signum"
    """What max_grad_norm clips: signum = the sign branch's gradients by their own norm
    (Levanter; per parameter group with group_overrides), all = one global clip over every
    parameter."""

    RENAMED_FIELDS: ClassVar[dict[str, str]] = {
        "ns_coefficients": "coefficient_type (Levanter's name; `standard` is `simple`)"
    }
    BRANCHES: ClassVar[dict[str, str]] = {
        "matrix": "scion",
        "embedding": "signum",
        "head": "signum",
        "vector": "signum",
    }

    def validate(self) -> None:
        super().validate()
        check_positive(self, "scion_to_signum_lr")
        check_newton_schulz_fields(self)
        check_unread_lr(self, "spectral (matrix)")
        check_range(self, "scion_epsilon", 0.0)

    def branch_rates(self) -> dict[str, tuple[float | str, float]]:
        return {
            **super().branch_rates(),
            "signum": (self.learning_rate * self.scion_to_signum_lr, self.weight_decay),
        }

    def hyperparameter_schedules(self, num_train_steps: int) -> dict[str, Any]:
        schedules = super().hyperparameter_schedules(num_train_steps)
        signum_peak = self.learning_rate * self.scion_to_signum_lr
        schedules["signum_learning_rate"] = self.lr_scheduler(num_train_steps, override_lr=signum_peak)
        return schedules

    def update_rule(self, hp: Mapping[str, Any]) -> optax.GradientTransformation:
        spectral = scale_by_muon(
            self.labeler().matrix_axes,
            momentum=self.momentum,
            nesterov=False,
            ema=True,
            ns_coefficients=self.coefficient_type,
            ns_steps=self.backend_steps,
            eps=self.scion_epsilon,
            ns_dtype=NS_DTYPES[self.ns_dtype],
            lr_scaling="spectral",
        )
        # sign(beta1 m + G) = sign of the average beta1 m + (1 - beta1) G, which is (1 - beta1) times it.
        signum = optax.chain(
            *self.branch_clip("signum"), optax.trace(decay=self.beta1), optax.scale_by_sign()
        )
        return self.partition(
            {
                "scion": self.branch(hp, spectral, hp["learning_rate"]),
                "signum": self.branch(hp, signum, hp["signum_learning_rate"]),
            }
        )
