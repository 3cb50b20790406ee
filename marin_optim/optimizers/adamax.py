"""Adamax: Adam with an infinity-norm second moment."""

from __future__ import annotations

from dataclasses import dataclass

import optax

from marin_optim.config import OptimizerConfig
from marin_optim.transforms.single_pass import OnePassRule, adamax_rule

GROUP = "Adam family"


@OptimizerConfig.register_subclass("adamax")
@dataclass(frozen=True)
class AdamaxConfig(OptimizerConfig):
    """Adamax: Adam whose second moment is an exponentially weighted infinity norm.

    Update (Kingma & Ba, 2015, https://arxiv.org/abs/1412.6980, Algorithm 2)::

        m = b1 m + (1 - b1) g;  u = max(b2 u, |g| + eps)
        p = p - lr (m / ((1 - b1^t) u) + wd p)

    Matches ``torch.optim.Adamax`` (same placement of eps inside the max) with decoupled decay.
    Defaults follow Marin's speedrun Adamax.
    """

    beta1: float = 0.9
    """Decay rate of the first moment."""
    beta2: float = 0.95
    """Decay rate of the infinity norm."""
    epsilon: float = 1e-8
    """Added to |g| inside the max."""

    def direction(self) -> optax.GradientTransformation:
        return optax.scale_by_adamax(self.beta1, self.beta2, self.epsilon)

    def single_pass_rule(self) -> OnePassRule:
        return adamax_rule(self.beta1, self.beta2, self.epsilon)
