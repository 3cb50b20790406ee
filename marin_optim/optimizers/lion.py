"""Lion: sign of an interpolated momentum."""

from __future__ import annotations

from dataclasses import dataclass

import optax

from marin_optim.config import OptimizerConfig
from marin_optim.transforms.single_pass import OnePassRule, lion_rule

GROUP = "Sign-based"


@OptimizerConfig.register_subclass("lion")
@dataclass(frozen=True)
class LionConfig(OptimizerConfig):
    """Lion (EvoLved Sign Momentum) with decoupled weight decay; the paper's defaults.

    Update (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms",
    https://arxiv.org/abs/2302.06675, Algorithm 2)::

        u = sign(b1 m + (1 - b1) g)
        m = b2 m + (1 - b2) g
        p = p - lr (u + wd p)

    Every coordinate moves by exactly lr, so Lion's learning rate is typically 3-10x smaller
    than AdamW's and its weight decay 3-10x larger. Defaults: lr 1e-4, beta2 0.99, weight decay
    1.0 (the paper's); Levanter's ``lion`` defaults to lr 6e-4, beta2 0.95, weight decay 0.1.
    """

    learning_rate: float = 1e-4
    """Peak learning rate (smaller than Adam's: the update is a sign)."""
    weight_decay: float = 1.0
    """Decoupled weight decay (larger than Adam's, keeping lr * wd similar)."""
    beta1: float = 0.9
    """Interpolation rate used for the update direction."""
    beta2: float = 0.99
    """Decay rate of the momentum."""

    def direction(self) -> optax.GradientTransformation:
        return optax.scale_by_lion(self.beta1, self.beta2)

    def single_pass_rule(self) -> OnePassRule:
        return lion_rule(self.beta1, self.beta2)
