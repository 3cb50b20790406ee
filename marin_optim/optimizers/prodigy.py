"""Prodigy: Adam whose step size is estimated from the distance travelled (learning-rate free)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optax

from marin_optim.config import OptimizerConfig
from marin_optim.transforms.prodigy import prodigy
from marin_optim.validation import check_positive, check_range

GROUP = "Learning-rate free"


@OptimizerConfig.register_subclass("prodigy")
@dataclass(frozen=True)
class ProdigyConfig(OptimizerConfig):
    """Prodigy: AdamW with the learning rate estimated online (learning_rate is a multiplier).

    Update (Mishchenko & Defazio, 2023, https://arxiv.org/abs/2306.06101): Adam on ``d g`` with
    step ``d * lr_t * sqrt(1 - beta2^t) / (1 - beta1^t)``, where ``d`` grows towards
    ``sum_k dlr_k <g_k, x_0 - x_k> / ||s||_1``; decoupled decay ``-wd * dlr * p`` on the leaves
    the decay mask selects. ``optax.contrib.prodigy`` underneath (optax decays every leaf; the
    mask is ours). ``learning_rate`` multiplies the estimate (1.0 in the paper) and follows the
    shared schedule; ``safeguard_warmup`` is on by default because that schedule warms up.
    """

    learning_rate: float = 1.0
    """Multiplier of the estimated step size (1.0 = the paper's Prodigy)."""
    weight_decay: float = 0.0
    """Decoupled weight decay, multiplied by the estimated step."""
    beta1: float = 0.9
    """Decay rate of the first moment."""
    beta2: float = 0.999
    """Decay rate of the second moment."""
    beta3: float | None = None
    """Decay rate of the distance estimate's averages; null: sqrt(beta2)."""
    epsilon: float = 1e-8
    """Added to the denominator (scaled by d)."""
    estim_lr0: float = 1e-6
    """Initial estimate d_0 (should be small)."""
    estim_lr_coef: float = 1.0
    """Multiplier of the raw estimate (the paper's d_coef)."""
    safeguard_warmup: bool = True
    """Leave the learning rate out of the estimate's denominator (recommended with warmup)."""

    def validate(self) -> None:
        super().validate()
        check_range(self, "beta3", 0.0, 1.0, hi_open=True, allow_none=True)
        check_positive(self, "estim_lr0")
        check_positive(self, "estim_lr_coef")

    def update_rule(self, hp: Mapping[str, Any]) -> optax.GradientTransformation:
        return prodigy(
            learning_rate=hp["learning_rate"],
            betas=(self.beta1, self.beta2),
            beta3=self.beta3,
            eps=self.epsilon,
            estim_lr0=self.estim_lr0,
            estim_lr_coef=self.estim_lr_coef,
            weight_decay=hp["weight_decay"] if self.uses_weight_decay else 0.0,
            mask=self.build_weight_decay_mask(),
            safeguard_warmup=self.safeguard_warmup,
        )
