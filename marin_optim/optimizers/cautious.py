"""``cautious_wrapper``: the cautious mask (Liang et al., 2024) applied to any optimizer config.

Levanter's own ``cautious`` (C-AdamW, with its fields) is
:class:`marin_optim.optimizers.adaptive.CautiousConfig`.
"""

from __future__ import annotations

import contextvars
import dataclasses
from dataclasses import dataclass
from typing import Any

import optax

from marin_optim.config import OptimizerConfig
from marin_optim.optimizers._wrapper import NestedOptimizerConfig, WrapperConfig, derive_config
from marin_optim.optimizers.adam import AdamConfig
from marin_optim.transforms.cautious import cautious

GROUP = "Wrappers"

# Set while a cautious config builds its update rule, to learn whether the base used direction().
_DIRECTION_USED: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar(
    "_DIRECTION_USED", default=None
)


@OptimizerConfig.register_subclass("cautious_wrapper")
@dataclass(frozen=True)
class CautiousWrapperConfig(WrapperConfig):
    """Cautious wrapper: drops update coordinates whose sign disagrees with the gradient (any base).

    ``type: cautious_wrapper, base: {type: adamw, ...}``. Update rule (Liang et al., 2024, "Cautious
    Optimizers: Improving Training with One Line of Code", https://arxiv.org/abs/2411.16085),
    per tensor of ``n`` coordinates, with ``u`` the base optimizer's update direction::

        phi = 1[u * g > 0];   u = u * phi * n / (sum(phi) + 1)

    then the base's weight decay and learning rate as usual (the decay is not masked, as in the
    paper). For bases whose update rule is built from ``direction()`` (adam, lion, sgd, ...,
    every config using the shared template) the mask is applied to that direction. Bases that
    assemble their whole step themselves (``optax_*``, ``schedule_free_adamw``, ...) are masked
    on their final step instead, decay included. Schedules, decay, clip and guards come from
    ``base``. ``type: cautious`` is Levanter's C-AdamW, whose rescaling is ``1 / (mean(phi) +
    eps)``; with ``base: {type: adam}`` this wrapper is C-AdamW with the paper's rescaling.
    """

    WRAPPER_NAME = "cautious_wrapper"

    base: NestedOptimizerConfig = dataclasses.field(default_factory=AdamConfig)  # type: ignore[assignment]
    """The optimizer to make cautious (a config; ``{type: adamw, learning_rate: 3e-3}`` in YAML)."""

    def derived(self) -> OptimizerConfig:
        def direction(
            parent: Any, self_: OptimizerConfig, *args: Any, **kwargs: Any
        ) -> optax.GradientTransformation:
            # args: the base's own direction arguments (AdEMAMix's direction(hp)), passed on.
            used = _DIRECTION_USED.get()
            if used is not None:
                used.append(True)
            return cautious(parent(*args, **kwargs))

        def update_rule(parent: Any, self_: OptimizerConfig, hp: Any) -> optax.GradientTransformation:
            used: list[bool] = []
            token = _DIRECTION_USED.set(used)
            try:
                rule = parent(hp)
            finally:
                _DIRECTION_USED.reset(token)
            return rule if used else cautious(rule, is_step=True)

        return derive_config(
            self.wrapped_base(), "Cautious", {"direction": direction, "update_rule": update_rule}
        )
