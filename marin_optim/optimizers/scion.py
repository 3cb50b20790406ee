"""Scion: spectral-norm steps for hidden matrices, sign steps for everything else (Levanter's ``scion``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import optax

from marin_optim.config import OptimizerConfig
from marin_optim.optimizers.muon import MatrixOptimizerConfig, _check_ns_fields
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
    (sign(m) + wd p)`` with ``m = beta1 m + (1 - beta1) G``. The signum learning rate is injected
    as ``signum_learning_rate`` (the same schedule shape). Levanter's ``learning_rate`` defaults
    to 6e-4 (beside an ``lr`` of 0.02 it never reads); ours to 0.02.
    """

    learning_rate: float = 0.02
    """Peak learning rate of the spectral (matrix) branch."""
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
    ns_coefficients: str = "standard"
    """Newton-Schulz coefficients: standard, quintic or polar_express."""
    ns_dtype: Literal["bfloat16", "float32"] = "bfloat16"
    """Compute dtype of the Newton-Schulz iterations."""
    beta1: float = 0.9
    """Sign branch: decay rate of its momentum."""

    BRANCHES: ClassVar[dict[str, str]] = {
        "matrix": "scion",
        "embedding": "signum",
        "head": "signum",
        "vector": "signum",
    }

    def validate(self) -> None:
        super().validate()
        check_positive(self, "scion_to_signum_lr")
        _check_ns_fields(self, "backend_steps")
        check_range(self, "scion_epsilon", 0.0)

    def hyperparameter_schedules(self, num_train_steps: int) -> dict[str, Any]:
        schedules = super().hyperparameter_schedules(num_train_steps)
        signum_peak = self.learning_rate * self.scion_to_signum_lr
        schedules["signum_learning_rate"] = self.lr_scheduler(num_train_steps, override_lr=signum_peak)
        return schedules

    def update_rule(self, hp: Mapping[str, Any]) -> optax.GradientTransformation:
        # An exponential average (1 - momentum) G and Muon's sum G give the same direction
        # after Newton-Schulz normalises it, and the same sign; only eps sees the scale.
        spectral = scale_by_muon(
            self.labeler().matrix_axes,
            momentum=self.momentum,
            nesterov=False,
            ns_coefficients=self.ns_coefficients,
            ns_steps=self.backend_steps,
            eps=self.scion_epsilon,
            ns_dtype=NS_DTYPES[self.ns_dtype],
            lr_scaling="spectral",
        )
        signum = optax.chain(optax.trace(decay=self.beta1), optax.scale_by_sign())
        return self.partition(
            {
                "scion": self.branch(hp, spectral, hp["learning_rate"]),
                "signum": self.branch(hp, signum, hp["signum_learning_rate"]),
            }
        )
