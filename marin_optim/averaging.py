"""Model averaging: a moving average of the parameters to evaluate at, with Levanter's names.

``model_averaging: {type: ema, beta: 0.999}`` on any optimizer config keeps the average in the
optimizer state (so it is sharded like the state, checkpointed and resumed with it, and skipped
with a skipped step); :func:`marin_optim.eval_params` returns it, and the speedrun evaluates
there. The same configs implement Levanter's trainer-level interface (``create(model)`` ->
``update(model, step)``, ``model_params``), so through ``marin_optim.levanter`` they also serve
as Levanter's ``trainer.model_averaging: {type: marin_optim.ema_decay_sqrt}``.

With ``p_t`` the parameters after update ``t`` (0-based) and ``avg`` starting at the initial
parameters, each update moves the average by optax's ``incremental_update`` (as Levanter)::

    avg = alpha_t p_t + (1 - alpha_t) avg

``ema``: ``alpha_t = 1 - beta``: an exponential moving average (Polyak-Ruppert averaging with
forgetting). ``ema_decay_sqrt``: raw weights ``w_t = 1 - beta`` before ``switch_step``, then
``1 - sqrt(min(1, (t - switch_step) / decay_steps))``, and ``alpha_t = w_t / sum_{s<=t} w_s``,
Levanter's rule: equal weights before ``switch_step`` make the average the running mean of every
parameter so far (``beta`` sets their weight against the later ones', 1 at the switch), then the
weight of new parameters decays to 0 and the average freezes (the 1-sqrt cooldown of Hägele et
al., 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations",
https://arxiv.org/abs/2405.18392). Both are jit-safe in ``t``: Levanter's own ``ema_decay_sqrt``
branches on the step in Python and fails inside its jitted train step.

The average of a parameter in a lower precision than float32 (bfloat16) is kept in float32: in
bfloat16, ``0.999 avg`` rounds to ``avg`` and an update of ``0.001 p`` rounds away, so the
average would not move.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import draccus
import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from marin_optim.registry import NamedRegistry
from marin_optim.validation import check_int, check_range, check_types


class ModelAveragingConfig(NamedRegistry, draccus.ChoiceRegistry, abc.ABC):
    """Base of the averaging rules (``ema``, ``ema_decay_sqrt``): frozen dataclasses, by name."""

    REGISTRY_KIND: ClassVar[str] = "model averaging"

    def __post_init__(self) -> None:
        check_types(self)
        self.validate()

    def validate(self) -> None:
        check_range(self, "beta", 0.0, 1.0, hi_open=True)

    def _where(self, name: str) -> str:
        return f"model_averaging.{name}"

    @abc.abstractmethod
    def step(self, average: ParameterAverage, params: Any) -> ParameterAverage:
        """``average`` with the parameters of its next update taken in (jit-safe)."""

    def transform(self) -> optax.GradientTransformation:
        """The averaging as the last link of an optimizer's chain: it sees the final updates ``u``
        and the parameters ``p`` and averages ``p + u``; the updates pass through unchanged."""

        def init_fn(params: optax.Params) -> ParameterAverage:
            return ParameterAverage.start(params)

        def update_fn(
            updates: Any, state: ParameterAverage, params: Any = None
        ) -> tuple[Any, ParameterAverage]:
            if params is None:
                raise ValueError("model_averaging needs params: call update(updates, state, params)")
            return updates, self.step(state, optax.apply_updates(params, updates))

        return optax.GradientTransformation(init_fn, update_fn)

    def create(self, model: Any) -> LevanterAverage:
        """Levanter's interface (``trainer.model_averaging``): the average of ``model``'s arrays."""
        return LevanterAverage(config=self, average=ParameterAverage.start(model))


class ParameterAverage(NamedTuple):
    """The running average, the sum of the raw weights taken in and the number of updates."""

    params: Any
    total_weight: jax.Array
    count: jax.Array

    @staticmethod
    def start(params: Any) -> ParameterAverage:
        """``avg = params``, no weight taken in yet, no update counted."""
        return ParameterAverage(
            params=jax.tree.map(_accumulator, params),
            total_weight=jnp.zeros([], jnp.float32),
            count=jnp.zeros([], jnp.int32),
        )

    def eval_params(self, params: optax.Params) -> optax.Params:
        """The averaged parameters, to evaluate the model at (``params`` fixes the dtypes)."""
        return jax.tree.map(lambda a, p: a.astype(jnp.result_type(p)), self.params, params)


class LevanterAverage(eqx.Module):
    """Levanter's ``ModelAveraging`` interface over :class:`ParameterAverage` (duck-typed: the core
    does not import Levanter); ``update(model, step)`` takes Levanter's step as the update's index."""

    config: ModelAveragingConfig = eqx.field(static=True)
    average: ParameterAverage

    def update(self, model: Any, step: Any) -> LevanterAverage:
        at_step = self.average._replace(count=jnp.asarray(step, jnp.int32))
        return dataclasses.replace(self, average=self.config.step(at_step, model))

    @property
    def model_params(self) -> Any:
        return self.average.params


@ModelAveragingConfig.register_subclass("ema")
@dataclass(frozen=True)
class EmaConfig(ModelAveragingConfig):
    """Exponential moving average of the parameters: ``avg = beta avg + (1 - beta) p``."""

    beta: float = 0.999
    """Weight of the previous average at each step (the window is ~1 / (1 - beta) steps)."""

    def step(self, average: ParameterAverage, params: Any) -> ParameterAverage:
        return average._replace(
            params=_moved(average.params, params, 1.0 - self.beta), count=average.count + 1
        )


@ModelAveragingConfig.register_subclass("ema_decay_sqrt")
@dataclass(frozen=True)
class EmaDecaySqrtConfig(ModelAveragingConfig):
    """Levanter's: the running mean until ``switch_step``, then weights ``1 - sqrt(x)`` decaying to
    0 over ``decay_steps`` (module docstring)."""

    beta: float = 0.999
    """Before switch_step every update's raw weight is ``1 - beta`` (against 1 at the switch)."""
    switch_step: int = 100_000
    """Update at which the weights start to decay."""
    decay_steps: int = 100_000
    """Updates over which the weight of new parameters falls from 1 to 0 (then the average is fixed)."""

    def validate(self) -> None:
        super().validate()
        check_int(self, "switch_step", 0)
        check_int(self, "decay_steps", 1)

    def weight(self, step: jax.Array) -> jax.Array:
        """The raw weight ``w_t`` of the parameters after update ``step``."""
        t = jnp.asarray(step, jnp.float32)
        frac = jnp.clip((t - self.switch_step) / self.decay_steps, 0.0, 1.0)
        return jnp.where(t < self.switch_step, jnp.float32(1.0 - self.beta), 1.0 - jnp.sqrt(frac))

    def step(self, average: ParameterAverage, params: Any) -> ParameterAverage:
        w = self.weight(average.count)
        total = average.total_weight + w
        alpha = jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), 0.0)
        return ParameterAverage(_moved(average.params, params, alpha), total, average.count + 1)


def _accumulator(p: jax.Array) -> jax.Array:
    """A copy of ``p`` to average into: float32 where ``p`` is a narrower float (module docstring)."""
    if jnp.issubdtype(p.dtype, jnp.floating) and jnp.finfo(p.dtype).bits < 32:
        return p.astype(jnp.float32)
    return jnp.array(p, copy=True)


def _moved(average: Any, params: Any, alpha: Any) -> Any:
    """``alpha p + (1 - alpha) avg`` per leaf, in the average's dtype."""
    return jax.tree.map(
        lambda a, p: optax.incremental_update(p.astype(a.dtype), a, alpha).astype(a.dtype), average, params
    )
