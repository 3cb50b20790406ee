"""Lion: sign of an interpolated momentum."""

from __future__ import annotations

from dataclasses import dataclass

import optax

from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError
from marin_optim.transforms.single_pass import OnePassRule, lion_rule
from marin_optim.validation import where_of

GROUP = "Sign-based"

_UNUSED_EPSILON = 1e-8


@OptimizerConfig.register_subclass("lion")
@dataclass(frozen=True)
class LionConfig(OptimizerConfig):
    """Lion (EvoLved Sign Momentum) with decoupled weight decay; Levanter's defaults.

    Update (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms",
    https://arxiv.org/abs/2302.06675, Algorithm 2)::

        u = sign(b1 m + (1 - b1) g)
        m = b2 m + (1 - b2) g
        p = p - lr (u + wd p)

    Defaults are Levanter's ``lion``: learning rate 6e-4, weight decay 0.1, beta2 0.95. Every
    coordinate moves by exactly lr, so the paper suggests a learning rate 3-10x smaller than
    AdamW's, a weight decay 3-10x larger (keeping lr * wd similar) and beta2 0.99, e.g.
    ``learning_rate: 1e-4, weight_decay: 1.0, beta2: 0.99``.
    """

    beta1: float = 0.9
    """Interpolation rate used for the update direction."""
    beta2: float = 0.95
    """Decay rate of the momentum."""
    epsilon: float = _UNUSED_EPSILON
    """Unused (Lion divides by nothing); accepted at its default so Levanter's blocks load."""

    def validate(self) -> None:
        super().validate()
        if self.epsilon != _UNUSED_EPSILON:
            raise ConfigError(
                f"{where_of(self, 'epsilon')}={self.epsilon!r}: Lion has no epsilon (its update is a "
                f"sign; Levanter accepts the field and ignores it); remove it or leave {_UNUSED_EPSILON:g}"
            )

    def direction(self) -> optax.GradientTransformation:
        return optax.scale_by_lion(self.beta1, self.beta2)

    def single_pass_rule(self) -> OnePassRule:
        return lion_rule(self.beta1, self.beta2)
