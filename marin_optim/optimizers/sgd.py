"""SGD with optional heavy-ball or Nesterov momentum."""

from __future__ import annotations

from dataclasses import dataclass

import optax

from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError
from marin_optim.transforms.single_pass import OnePassRule, sgd_rule

GROUP = "SGD family"


@OptimizerConfig.register_subclass("sgd")
@dataclass(frozen=True)
class SGDConfig(OptimizerConfig):
    """SGD with momentum (heavy ball or Nesterov) and decoupled weight decay.

    Update (Polyak, 1964; Nesterov, 1983, in the form of Sutskever et al., 2013,
    http://proceedings.mlr.press/v28/sutskever13.html)::

        b = momentum b + g
        u = g + momentum b   (nesterov)   or   u = b
        p = p - lr (u + wd p)

    Matches ``torch.optim.SGD`` with ``dampening=0`` at ``weight_decay=0``. Weight decay is
    decoupled (SGDW, Loshchilov & Hutter, 2019), not torch's L2 term added to the gradient.
    """

    learning_rate: float = 1e-2
    """Peak learning rate."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""
    momentum: float = 0.9
    """Momentum coefficient; 0 disables momentum."""
    nesterov: bool = False
    """Use Nesterov momentum."""

    def validate(self) -> None:
        super().validate()
        if self.nesterov and self.momentum == 0:
            raise ConfigError("sgd.nesterov=True: needs momentum > 0")

    def direction(self) -> optax.GradientTransformation:
        if self.momentum == 0:
            return optax.identity()
        return optax.trace(decay=self.momentum, nesterov=self.nesterov)

    def single_pass_rule(self) -> OnePassRule | None:
        # Without momentum the clipped gradient has one reader: the chain is already one loop.
        return sgd_rule(self.momentum, self.nesterov) if self.momentum > 0 else None
