"""``ScheduleConfig`` (the registry every schedule is in) and the jit-safe pieces schedules are built from."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import draccus
import jax
import jax.numpy as jnp
import optax

from marin_optim.errors import did_you_mean
from marin_optim.registry import NamedRegistry
from marin_optim.schedules.context import ScheduleContext

ScheduleFn = Callable[[Any], jax.Array]

# -- building blocks ---------------------------------------------------------------------------


def _t(step: Any) -> jax.Array:
    """The step as float32, clipped at 0 (pieces of a join are also evaluated before their start)."""
    return jnp.maximum(jnp.asarray(step, jnp.float32), 0.0)


def _const(value: float) -> ScheduleFn:
    def schedule(step: Any) -> jax.Array:
        return jnp.full(jnp.shape(step), value, jnp.float32)

    return schedule


def _ramp(start: float, end: float, length: int) -> ScheduleFn:
    """``start + (end - start) * min(t, length) / length``; holds ``end`` afterwards."""

    def schedule(step: Any) -> jax.Array:
        t = jnp.minimum(_t(step), float(length))
        return jnp.float32(start) + jnp.float32(end - start) * (t / float(length))

    return schedule


def _wsd_coeff(style: str, r: jax.Array) -> jax.Array:
    """Megatron's annealing coefficients: 1 at r = 0, 0 at r = 1."""
    if style == "linear":
        return 1.0 - r
    if style == "cosine":
        # = 0.5 * (cos(pi r) + 1), written so that float32 keeps its relative accuracy near r = 1
        return jnp.sin(0.5 * jnp.pi * (1.0 - r)) ** 2
    if style == "exponential":
        return 2.0 * jnp.power(0.5, r) - 1.0
    if style == "minus_sqrt":
        return 1.0 - jnp.sqrt(r)
    raise AssertionError(style)


def _anneal(style: str, start: float, end: float, length: int) -> ScheduleFn:
    """``end + coeff(min(t, length) / length) * (start - end)`` for a Megatron decay style."""

    def schedule(step: Any) -> jax.Array:
        r = jnp.minimum(_t(step), float(length)) / float(length)
        return jnp.float32(end) + _wsd_coeff(style, r) * jnp.float32(start - end)

    return schedule


def _join(pieces: Sequence[ScheduleFn], starts: Sequence[int]) -> ScheduleFn:
    """Like ``optax.join_schedules``: piece ``i`` runs from ``starts[i]`` and sees ``step - starts[i]``."""
    assert pieces and starts[0] == 0 and len(pieces) == len(starts)
    if len(pieces) == 1:
        return pieces[0]
    return optax.join_schedules(list(pieces), [int(s) for s in starts[1:]])


def _host_value(schedule: ScheduleFn, step: int) -> float:
    """A schedule's value at a fixed step, computed while building (even under a jit trace)."""
    with jax.ensure_compile_time_eval():
        return float(schedule(jnp.asarray(step, jnp.int32)))


def _f32(schedule: ScheduleFn) -> ScheduleFn:
    def lr(step: Any) -> jax.Array:
        return jnp.asarray(schedule(step), jnp.float32)

    return lr


# -- the registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleConfig(NamedRegistry, draccus.ChoiceRegistry, abc.ABC):
    """Base class of every learning-rate schedule; subclasses are frozen dataclasses, registered by name.

    In YAML a schedule is a name (``cosine``) or a mapping with ``type:``. Declare a field that
    holds one as ``ScheduleConfig | str`` and pass it through :func:`parse_schedule` in
    ``__post_init__``: with that annotation draccus accepts ``--x.lr_schedule cosine``,
    ``--x.lr_schedule.type wsd --x.lr_schedule.decay_style exponential`` and YAML in both forms.
    """

    @classmethod
    def default_choice_name(cls) -> str | None:
        return "cosine"

    REGISTRY_KIND: ClassVar[str] = "schedule"

    @classmethod
    def unknown_name_message(cls, name: Any) -> str:
        known = sorted(cls._choice_registry)
        return (
            f"lr_schedule={name!r}: not a registered schedule{did_you_mean(str(name), known)}; "
            f"choose from {', '.join(known)}"
        )

    @property
    def type_name(self) -> str:
        """The registered name of this schedule (``type:`` in YAML)."""
        for key, value in type(self)._choice_registry.items():
            if value is type(self):
                return key
        return type(self).__name__

    def _where(self, field: str) -> str:
        return f"lr_schedule.{field} (type {self.type_name})"

    @abc.abstractmethod
    def build(self, ctx: ScheduleContext) -> optax.Schedule:
        """The schedule for ``ctx``: step (int array, may be traced) -> learning rate (float32)."""

    def key_points(self, ctx: ScheduleContext) -> list[tuple[int, str]]:
        """Steps where this schedule changes phase, with a label (besides start, last step, end)."""
        n = ctx.num_train_steps
        return [(n // 2, "middle")]
