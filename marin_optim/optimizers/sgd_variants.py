"""Rprop and averaged SGD, in the form of ``torch.optim.Rprop`` and ``torch.optim.ASGD``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optax

from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError
from marin_optim.transforms.asgd import asgd_step, average_iterates
from marin_optim.transforms.rprop import scale_by_rprop
from marin_optim.validation import check_positive, check_range

GROUP = "SGD family"


@OptimizerConfig.register_subclass("rprop")
@dataclass(frozen=True)
class RpropConfig(OptimizerConfig):
    """Rprop: per-coordinate step sizes grown or shrunk by the sign agreement of successive gradients.

    Update (Riedmiller & Braun, 1993, "A direct adaptive method for faster backpropagation
    learning: the RPROP algorithm", https://doi.org/10.1109/ICNN.1993.298623; the torch form)::

        s = g * g_prev;   step = clip(step * (eta_plus if s > 0, eta_minus if s < 0, 1), min, max)
        g = 0 where s < 0 (and remembered as 0);   p = p - (lr_t / lr) sign(g) step - lr_t wd p

    ``learning_rate`` is the *initial step size* (as in torch), so the schedule multiplies
    every step by ``lr_t / learning_rate``: a constant schedule gives ``torch.optim.Rprop``.
    The direction is our ``scale_by_rprop``: ``optax.scale_by_rprop`` returns the previous
    step's update (optax pull request #1725), and so does ``optax_rprop``.
    """

    learning_rate: float = 1e-2
    """The initial per-coordinate step size (torch's default)."""
    weight_decay: float = 0.0
    """Decoupled weight decay (multiplied by lr_t)."""
    eta_minus: float = 0.5
    """Step-size factor after a sign change (in (0, 1))."""
    eta_plus: float = 1.2
    """Step-size factor while the sign holds (> 1)."""
    min_step_size: float = 1e-6
    """Smallest step size."""
    max_step_size: float = 50.0
    """Largest step size."""

    def validate(self) -> None:
        super().validate()
        check_range(self, "eta_minus", 0.0, 1.0, lo_open=True, hi_open=True)
        check_range(self, "eta_plus", 1.0, None, lo_open=True)
        check_positive(self, "min_step_size")
        if self.max_step_size < self.min_step_size:
            raise ConfigError(
                f"rprop.max_step_size={self.max_step_size!r}: must be >= min_step_size={self.min_step_size!r}"
            )

    def update_rule(self, hp: Mapping[str, Any]) -> optax.GradientTransformation:
        lr = hp["learning_rate"]
        parts = [
            scale_by_rprop(
                self.learning_rate, self.eta_minus, self.eta_plus, self.min_step_size, self.max_step_size
            ),
            optax.scale(-lr / self.learning_rate),
        ]
        if self.uses_weight_decay:
            parts.append(optax.add_decayed_weights(-lr * hp["weight_decay"], self.build_weight_decay_mask()))
        return optax.chain(*parts)


@OptimizerConfig.register_subclass("asgd")
@dataclass(frozen=True)
class ASGDConfig(OptimizerConfig):
    """ASGD: SGD with a decaying step, a shrink term, and an average of the iterates for evaluation.

    Update (Polyak & Juditsky, 1992, https://doi.org/10.1137/0330046; the torch form)::

        eta_t = lr_t / (1 + lambd lr_t (t - 1))^alpha
        p = p (1 - lambd eta_t) - eta_t g - lr_t wd p
        ax = p if t <= t0 + 1 else ax + (p - ax) / (t - 1 - t0)

    Matches ``torch.optim.ASGD``. The averaged parameters ``ax`` are what ASGD evaluates at:
    ``marin_optim.optimizers.schedule_free.eval_params(opt_state, params)`` returns them.
    """

    learning_rate: float = 1e-2
    """Peak learning rate (torch's default)."""
    weight_decay: float = 0.0
    """Decoupled weight decay (torch's is an L2 term)."""
    lambd: float = 1e-4
    """Decay term: shrinks p by lambd * eta_t and slows eta_t."""
    alpha: float = 0.75
    """Power of the step-size decay."""
    t0: float = 1e6
    """Step after which the iterates are averaged."""

    def validate(self) -> None:
        super().validate()
        check_range(self, "lambd", 0.0)
        check_range(self, "alpha", 0.0)
        check_range(self, "t0", 0.0)

    def update_rule(self, hp: Mapping[str, Any]) -> optax.GradientTransformation:
        lr = hp["learning_rate"]
        parts = [asgd_step(lr, self.lambd, self.alpha)]
        if self.uses_weight_decay:
            parts.append(optax.add_decayed_weights(-lr * hp["weight_decay"], self.build_weight_decay_mask()))
        parts.append(average_iterates(self.t0))
        return optax.chain(*parts)
