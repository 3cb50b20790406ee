"""Layer-wise adaptive rate scaling: LAMB and LARS (trust ratio ``||p|| / ||u||`` per tensor)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optax

from marin_optim.config import OptimizerConfig
from marin_optim.validation import check_range

GROUP = "Layer-wise (trust ratio)"


def _trust_ratio(cfg: OptimizerConfig, trust_coefficient: float, eps: float) -> optax.GradientTransformation:
    """optax's trust ratio, on the leaves the decay mask selects (norms and biases are exempt)."""
    tx = optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps)
    mask = cfg.build_weight_decay_mask()
    return optax.masked(tx, mask) if mask is not None else tx


@OptimizerConfig.register_subclass("lamb")
@dataclass(frozen=True)
class LAMBConfig(OptimizerConfig):
    """LAMB: Adam with decoupled decay, then each tensor's step rescaled by ||p|| / ||step||.

    Update (You et al., 2020, "Large Batch Optimization for Deep Learning: Training BERT in 76
    minutes", https://arxiv.org/abs/1904.00962, Algorithm 2)::

        r = m_hat / (sqrt(v_hat + epsilon_root) + epsilon) + wd p
        p = p - lr (||p|| / ||r||) r          (ratio 1 where either norm is 0)

    As ``optax.lamb``, except that the trust ratio, like the decay, skips the leaves the decay
    mask exempts (norms, biases, embeddings by default), as the reference implementations do.
    """

    beta1: float = 0.9
    """Decay rate of the first moment."""
    beta2: float = 0.999
    """Decay rate of the second moment."""
    epsilon: float = 1e-6
    """Added to sqrt(v_hat)."""
    epsilon_root: float = 0.0
    """Added to v_hat inside the root."""

    def validate(self) -> None:
        super().validate()
        check_range(self, "epsilon_root", 0.0)

    def direction(self) -> optax.GradientTransformation:
        return optax.scale_by_adam(self.beta1, self.beta2, self.epsilon, self.epsilon_root)

    def update_rule(self, hp: Mapping[str, Any]) -> optax.GradientTransformation:
        parts = [self.direction()]
        if self.uses_weight_decay:
            parts.append(optax.add_decayed_weights(hp["weight_decay"], self.build_weight_decay_mask()))
        parts.append(_trust_ratio(self, 1.0, 0.0))
        parts.append(optax.scale_by_learning_rate(hp["learning_rate"]))
        return optax.chain(*parts)


@OptimizerConfig.register_subclass("lars")
@dataclass(frozen=True)
class LARSConfig(OptimizerConfig):
    """LARS: SGD with momentum whose per-tensor step is scaled by trust_coefficient ||p|| / ||g + wd p||.

    Update (You, Gitman & Ginsburg, 2017, "Large Batch Training of Convolutional Networks",
    https://arxiv.org/abs/1708.03888, Algorithm 1)::

        r = trust_coefficient ||p|| / (||g + wd p|| + epsilon) (g + wd p)
                                  (ratio 1, not trust_coefficient, where either norm is 0)
        b = momentum b + r   (nesterov: u = r + momentum b, else u = b);   p = p - lr u

    ``optax.lars``'s pieces, with the momentum before the learning rate (torch's SGD
    convention) where optax applies it after; the trust ratio skips the leaves the decay mask
    exempts.
    """

    learning_rate: float = 1e-1
    """Peak learning rate (the trust coefficient makes the effective step small)."""
    weight_decay: float = 0.0
    """Weight decay, added to the gradient *before* the trust ratio (the paper's form)."""
    momentum: float = 0.9
    """Momentum coefficient; 0 disables it."""
    nesterov: bool = False
    """Nesterov momentum."""
    trust_coefficient: float = 1e-3
    """eta of the paper: scale of the trust ratio."""
    epsilon: float = 0.0
    """Added to the denominator of the trust ratio."""

    def validate(self) -> None:
        super().validate()
        check_range(self, "trust_coefficient", 0.0, lo_open=True)

    def update_rule(self, hp: Mapping[str, Any]) -> optax.GradientTransformation:
        parts = []
        if self.uses_weight_decay:
            parts.append(optax.add_decayed_weights(hp["weight_decay"], self.build_weight_decay_mask()))
        parts.append(_trust_ratio(self, self.trust_coefficient, self.epsilon))
        if self.momentum > 0:
            parts.append(optax.trace(decay=self.momentum, nesterov=self.nesterov))
        parts.append(optax.scale_by_learning_rate(hp["learning_rate"]))
        return optax.chain(*parts)
