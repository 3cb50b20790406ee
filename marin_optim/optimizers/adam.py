"""Adam with decoupled weight decay (Levanter's ``adam``), also registered as ``adamw``."""

from __future__ import annotations

from dataclasses import dataclass

import optax

from marin_optim.config import OptimizerConfig

GROUP = "Adam family"


@OptimizerConfig.register_subclass("adam")
@dataclass(frozen=True)
class AdamConfig(OptimizerConfig):
    """Adam with decoupled (AdamW) weight decay; Levanter's defaults.

    Update (Kingma & Ba, 2015, https://arxiv.org/abs/1412.6980; decay as in Loshchilov & Hutter,
    2019, https://arxiv.org/abs/1711.05101)::

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        u = m_hat / (sqrt(v_hat) + eps)            (nesterov: m_hat -> b1 m_hat + (1 - b1) g_hat)
        p = p - lr (u + wd p)

    with ``m_hat = m / (1 - b1^t)``, ``v_hat = v / (1 - b2^t)``. Matches ``torch.optim.AdamW``
    (and ``torch.optim.Adam`` at ``weight_decay=0``; its ``nesterov`` matches ``NAdam`` without
    momentum decay only approximately, so it is checked against the written formula).
    """

    beta1: float = 0.9
    """Decay rate of the first moment."""
    beta2: float = 0.95
    """Decay rate of the second moment."""
    epsilon: float = 1e-8
    """Added to sqrt(v_hat) in the denominator."""
    nesterov: bool = False
    """Use Nesterov momentum in the first moment (NAdam-style)."""

    def direction(self) -> optax.GradientTransformation:
        return optax.scale_by_adam(self.beta1, self.beta2, self.epsilon, nesterov=self.nesterov)


@OptimizerConfig.register_subclass("adamw")
@dataclass(frozen=True)
class AdamWConfig(AdamConfig):
    """AdamW: the same optimizer as ``adam`` (whose weight decay is already decoupled), by its usual name."""
