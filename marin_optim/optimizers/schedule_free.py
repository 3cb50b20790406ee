"""Schedule-free AdamW, and :func:`eval_params`: the parameters to evaluate a model at.

Schedule-free methods (and ASGD) train at one point and should be evaluated at another: the
average of the iterates. ``eval_params(opt_state, params)`` returns that point for any
optimizer state (the parameters themselves when the optimizer has no such average), so an
evaluation loop can always call it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax
import optax.contrib

from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError
from marin_optim.schedules import ScheduleConfig, parse_schedule
from marin_optim.transforms._tree import keep_state_dtypes
from marin_optim.validation import check_range

GROUP = "Schedule-free"


@OptimizerConfig.register_subclass("schedule_free_adamw")
@dataclass(frozen=True)
class ScheduleFreeAdamWConfig(OptimizerConfig):
    """Schedule-free AdamW: no decay schedule needed; evaluate at eval_params(opt_state, params).

    Update (Defazio et al., 2024, "The Road Less Scheduled", https://arxiv.org/abs/2405.15682,
    Algorithm 1), with ``y`` the training parameters, ``z`` the base iterate, ``x`` the average::

        z = z - lr_t (g / (sqrt(v_hat) + epsilon) + wd y)        (g and the decay taken at y)
        c = lr_max^k / sum_i lr_max_i^k   (k = weight_lr_power);   x = (1 - c) x + c z
        y = beta1 x + (1 - beta1) z

    ``optax.contrib.schedule_free`` around an RMS-scaled step, as ``optax.contrib.
    schedule_free_adamw`` but with our decay mask. The default schedule is ``constant`` with the
    usual warmup (the method replaces the decay). Evaluate the model at
    :func:`eval_params`, not at the training parameters.
    """

    learning_rate: float = 2.5e-3
    """Peak learning rate (optax's default)."""
    weight_decay: float = 0.0
    """Decoupled weight decay, evaluated at the interpolated point y."""
    lr_schedule: ScheduleConfig = dataclasses.field(default_factory=lambda: parse_schedule("constant"))
    """Schedule shape: constant after warmup is what schedule-free is designed for."""
    beta1: float = 0.9
    """Interpolation between the average x and the base iterate z."""
    beta2: float = 0.999
    """Decay rate of the second moment."""
    epsilon: float = 1e-8
    """Added to sqrt(v_hat)."""
    weight_lr_power: float = 2.0
    """Average weights proportional to max_lr^weight_lr_power (downweights warmup)."""
    state_dtype: str | None = None
    """dtype of the stored z sequence (default: the parameters' dtype)."""

    def validate(self) -> None:
        super().validate()
        check_range(self, "beta1", 0.0, 1.0, lo_open=True, hi_open=True)
        check_range(self, "weight_lr_power", 0.0)
        if self.state_dtype is not None:
            try:
                jnp.dtype(self.state_dtype)
            except TypeError:
                raise ConfigError(
                    f"schedule_free_adamw.state_dtype={self.state_dtype!r}: not a dtype name"
                ) from None

    def update_rule(self, hp: Mapping[str, Any]) -> optax.GradientTransformation:
        lr = hp["learning_rate"]
        parts = [
            optax.scale_by_rms(decay=self.beta2, eps=self.epsilon, eps_in_sqrt=False, bias_correction=True)
        ]
        if self.uses_weight_decay:
            parts.append(optax.add_decayed_weights(hp["weight_decay"], self.build_weight_decay_mask()))
        parts.append(optax.scale_by_learning_rate(lr))
        return keep_state_dtypes(
            optax.contrib.schedule_free(
                optax.chain(*parts),
                learning_rate=lr,
                b1=self.beta1,
                weight_lr_power=self.weight_lr_power,
                state_dtype=None if self.state_dtype is None else jnp.dtype(self.state_dtype),
            )
        )


def _eval_states(node: Any, found: list[Any]) -> None:
    if isinstance(node, optax.contrib.ScheduleFreeState) or callable(getattr(node, "eval_params", None)):
        found.append(node)
        return
    if isinstance(node, dict):
        for value in node.values():
            _eval_states(value, found)
    elif isinstance(node, (tuple, list)):
        for child in node:
            _eval_states(child, found)
    elif hasattr(node, "inner_state"):
        _eval_states(node.inner_state, found)


def eval_params(opt_state: Any, params: optax.Params) -> optax.Params:
    """The parameters to evaluate the model at, for any optimizer state.

    - schedule-free (``schedule_free_adamw``, ``optax_schedule_free_*``): ``x = (y - (1 - b1) z) / b1``
      (``optax.contrib.schedule_free_eval_params``);
    - ``asgd``: the average of the iterates;
    - anything else: ``params`` unchanged.

    Works through every wrapper state (injected hyperparameters, guards, chains, wrappers).
    Jit-safe; call it on the training parameters right before an evaluation. A state holding
    several such averages (one per parameter group) is not supported and raises.
    """
    found: list[Any] = []
    _eval_states(opt_state, found)
    if not found:
        return params
    if len(found) > 1:
        raise NotImplementedError(
            f"eval_params: the optimizer state holds {len(found)} averaged iterates (one per parameter "
            "group?); evaluating through several is not supported"
        )
    state = found[0]
    if isinstance(state, optax.contrib.ScheduleFreeState):
        if jax.tree.structure(state.z) != jax.tree.structure(params):
            raise NotImplementedError(
                "eval_params: the schedule-free state covers only part of the parameters"
            )
        out = optax.contrib.schedule_free_eval_params(state, params)
        return jax.tree.map(lambda x, p: x.astype(jnp.result_type(p)), out, params)
    return state.eval_params(params)
