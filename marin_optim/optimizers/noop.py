"""``noop``: an optimizer that changes no parameter but keeps every statistic."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optax

from marin_optim.config import OptimizerConfig
from marin_optim.optimizers._wrapper import NestedOptimizerConfig, WrapperConfig, derive_config
from marin_optim.transforms.noop import discard_updates

GROUP = "Wrappers"


@OptimizerConfig.register_subclass("noop")
@dataclass(frozen=True)
class NoOpConfig(WrapperConfig):
    """No-op: zero updates, while the clip, guards, schedules (and an optional base) keep their statistics.

    Update rule: ``u = 0`` (LLM Foundry's ``NoOp``). Everything around the update still runs,
    so ``hyperparams(state)`` reports the gradient norm, the learning rate, the skip-step
    guard's loss and grad-norm windows and z-scores, exactly as in training: use it with
    ``skip_bad_steps`` to measure the statistics of a model without changing it. With
    ``base: {type: adamw, ...}`` the base optimizer also runs and its state (moments, counts)
    advances, but its updates are discarded; then, as for every wrapper, the schedules, clip
    and guards are the base's and this config's own common fields must stay at their defaults.
    """

    WRAPPER_NAME = "noop"

    weight_decay: float = 0.0
    """Unused (nothing is updated); kept at 0 so that no decay statistics are implied."""
    base: NestedOptimizerConfig | None = None  # type: ignore[assignment]
    """Optional optimizer to run for its statistics; its updates are discarded."""

    def update_rule(self, hp: Mapping[str, Any]) -> optax.GradientTransformation:
        if self.base is not None:
            return self.derived().update_rule(hp)
        return discard_updates()

    def derived(self) -> OptimizerConfig:
        def update_rule(parent: Any, self_: OptimizerConfig, hp: Any) -> optax.GradientTransformation:
            return discard_updates(parent(hp))

        return derive_config(self.wrapped_base(), "NoOp", {"update_rule": update_rule})
