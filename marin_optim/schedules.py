"""Learning-rate and weight-decay schedules: every shape, one registry.

A schedule is a registered frozen dataclass (``ScheduleConfig``), chosen in YAML or on the
command line by name (``lr_schedule: cosine``) or as a mapping
(``lr_schedule: {type: wsd, decay_style: exponential}``). ``build(ctx)`` turns it into an
``optax.Schedule``: a jit-safe function of the (traced) step. Everything a schedule needs
besides its own fields (peak LR, run length, warmup, min LR, cycles, units) is in a
``ScheduleContext``, which ``OptimizerConfig.lr_scheduler`` builds from its common fields.

Two families:

- **Cycle shapes** (Levanter's assembly): ``constant, linear, cosine, inv_sqrt, inv, power,
  polynomial, wsd``. The run is split into cycles (``cycles`` / ``cycle_length``); each cycle is
  a linear warmup (from ``warmup_init_lr`` in the first cycle, from the previous cycle's final
  LR in later ones, over ``warmup`` resp. ``rewarmup``), a flat stable phase at the peak, and a
  decay of the shape over ``decay`` steps (default: the rest of the cycle). The pieces are
  joined like ``optax.join_schedules``: each sees the step relative to its own start.
- **Whole-run schedules** (OLMo-core's): ``half_cosine, cosine_linear_decay, exponential,
  power_lr, wsds, sequential``. Each defines the LR over the whole run by its own formula.

Conventions shared by every schedule here:

- Steps are 0-based (optax evaluates the schedule at count 0 for the first update). Phases are
  half-open ``[start, end)``: a warmup of ``w`` steps gives ``warmup_init_lr`` at step 0 and the
  peak at step ``w`` (so ``warmup: 1`` is one step); a decay of ``D`` steps starting at ``s``
  reaches its end value at ``s + D``. The floor of a decay that fills the run is therefore
  reached at step ``num_train_steps``, one past the last update (Levanter's and optax's
  convention). Past the end the last phase continues: a decay holds its end value, while the
  open-ended laws (``inv_sqrt``, ``power``, ``power_lr`` without a tail) keep decaying.
- Durations: an ``int`` is a count of steps (of tokens with ``units="tokens"``, converted to
  ``ceil(tokens / tokens_per_step)`` steps); a ``float`` in ``[0, 1]`` is a fraction, rounded
  down to whole steps (of the cycle for ``warmup``/``rewarmup``/``decay`` in cycle shapes, of the
  run otherwise). A float above 1 is an error, never a step count.
- Clamping: a warmup longer than its cycle is shortened to the cycle (the ramp reaches the
  peak exactly at the cycle's end); a decay longer than what the warmup leaves is shortened to
  that remainder (the stable phase vanishes and the decay starts at the peak where the warmup
  ends). A zero-length phase is left out, so clamping never makes the LR jump.
- The floor ("min LR") is ``min_lr`` when set, else ``peak_lr * min_lr_ratio``.
- Every bad input raises ``ConfigError`` naming the field, the value and what is allowed, at
  construction or in ``build``; nothing is raised from inside a traced computation.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import draccus
import jax
import jax.numpy as jnp
import numpy as np
import optax

from marin_optim.errors import ConfigError, config_error_in, did_you_mean
from marin_optim.registry import NamedRegistry
from marin_optim.validation import (
    Duration,
    check_choice,
    check_duration,
    check_int,
    check_num_train_steps,
    check_positive,
    check_range,
    is_int,
    is_real,
)

logger = logging.getLogger(__name__)

ScheduleFn = Callable[[Any], jax.Array]

_UNITS = ("steps", "tokens")
_WSD_STYLES = ("linear", "cosine", "exponential", "minus_sqrt")
_WD_STYLES = ("constant", "linear", "cosine")
# Names under which the user sets these context fields on OptimizerConfig.
_USER_NAMES = {"peak_lr": "learning_rate", "units": "schedule_units"}


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _frac_steps(fraction: float, of: int) -> int:
    # Round down like Levanter, forgiving the float error in e.g. 0.29 * 100 = 28.999999999999996.
    return math.floor(fraction * of + 1e-9)


# -- the context -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleContext:
    """Everything an LR schedule needs besides its own fields; OptimizerConfig.lr_scheduler builds it.

    Validated at construction (a ``ConfigError`` names the ``OptimizerConfig`` field), including
    whether the cycles fit the run. Lists are stored as tuples so the context is hashable.
    """

    peak_lr: float
    """Peak learning rate (``learning_rate``, or an override such as Muon's ``adam_lr``)."""
    num_train_steps: int
    """Length of the run in optimizer steps."""
    min_lr_ratio: float = 0.1
    """Floor as a fraction of ``peak_lr``."""
    min_lr: float | None = None
    """Absolute floor; when set it wins over ``min_lr_ratio``."""
    warmup: Duration = 0.0
    """int: steps (tokens with units="tokens"); float in [0, 1]: fraction of the first cycle."""
    warmup_init_lr: float = 0.0
    """LR at step 0 of the first warmup (Megatron ``lr_warmup_init``, OLMo-core ``warmup_min_lr``)."""
    decay: Duration | None = None
    """Decay length per cycle (int count or fraction of the cycle); None: the schedule's default."""
    rewarmup: Duration = 0.0
    """Warmup of every cycle after the first, from the previous cycle's final LR."""
    cycles: int | tuple[int, ...] | None = None
    """Number of equal cycles, or the cycle end points (steps or tokens)."""
    cycle_length: Duration | tuple[int, ...] | None = None
    """Length of every cycle (int count or fraction of the run), or a list of cycle lengths."""
    units: str = "steps"
    """Unit of integer durations: "steps" or "tokens"."""
    tokens_per_step: int | None = None
    """Tokens per optimizer step; needed with units="tokens" (and by the ``power`` shape)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "cycles", _as_tuple(self.cycles))
        object.__setattr__(self, "cycle_length", _as_tuple(self.cycle_length))
        self._validate()
        object.__setattr__(self, "_bounds", self._compute_bounds())

    # Field names as the user wrote them (on OptimizerConfig).
    @staticmethod
    def _where(field: str) -> str:
        return _USER_NAMES.get(field, field)

    def _validate(self) -> None:
        check_num_train_steps(self.num_train_steps)
        check_range(self, "peak_lr", 0.0)
        check_range(self, "min_lr_ratio", 0.0, 1.0)
        check_range(self, "min_lr", 0.0, allow_none=True)
        if self.min_lr is not None and self.min_lr > self.peak_lr:
            raise ConfigError(f"min_lr={self.min_lr!r}: must be <= the peak learning rate {self.peak_lr!r}")
        check_range(self, "warmup_init_lr", 0.0)
        check_duration(self, "warmup")
        check_duration(self, "decay", allow_none=True)
        check_duration(self, "rewarmup")
        check_choice(self, "units", _UNITS)
        check_int(self, "tokens_per_step", allow_none=True)
        if self.units == "tokens" and self.tokens_per_step is None:
            raise ConfigError(
                f"{self._where('units')}='tokens': needs tokens_per_step to convert token counts into steps"
            )
        if self.cycles is not None and self.cycle_length is not None:
            raise ConfigError(
                f"cycles={self.cycles!r} and cycle_length={self.cycle_length!r}: set at most one of them"
            )

    # -- conversions ---------------------------------------------------------------------------

    @property
    def floor(self) -> float:
        """The min LR: ``min_lr`` when set, else ``peak_lr * min_lr_ratio``."""
        return (
            float(self.min_lr) if self.min_lr is not None else float(self.peak_lr) * float(self.min_lr_ratio)
        )

    def count_steps(self, count: int) -> int:
        """An integer count in this context's units, in steps (tokens round up to whole steps)."""
        count = int(count)
        if self.units == "tokens":
            assert self.tokens_per_step is not None
            return -(-count // int(self.tokens_per_step))
        return count

    def duration_steps(self, value: Duration, of: int) -> int:
        """Steps in a duration: a fraction of ``of`` steps, or an int count (steps or tokens)."""
        if is_int(value):
            return self.count_steps(int(value))
        return _frac_steps(float(value), of)

    def cycle_bounds(self) -> tuple[int, ...]:
        """``(0, end_1, ..., num_train_steps)``: where each cycle starts and the last one ends."""
        return self._bounds  # type: ignore[attr-defined]

    def _compute_bounds(self) -> tuple[int, ...]:
        n = int(self.num_train_steps)
        cycles, length = self.cycles, self.cycle_length
        if cycles is not None:
            if is_int(cycles):
                if cycles < 1 or cycles > n:
                    raise ConfigError(
                        f"cycles={cycles!r}: must be an int in [1, num_train_steps={n}] "
                        "(every cycle needs at least one step)"
                    )
                # Levanter's equal split.
                ends = [int(n / cycles * (i + 1)) for i in range(int(cycles) - 1)]
            elif isinstance(cycles, tuple):
                if not cycles or not all(is_int(c) for c in cycles):
                    raise ConfigError(f"cycles={list(cycles)!r}: a list of cycle end points must hold ints")
                ends = [self.count_steps(c) for c in cycles]
                if ends[0] < 1 or any(b <= a for a, b in itertools.pairwise(ends)):
                    raise ConfigError(
                        f"cycles={list(cycles)!r}: cycle end points must be >= 1 and increasing"
                    )
                if ends[-1] > n:
                    raise ConfigError(
                        f"cycles={list(cycles)!r}: the last cycle ends at step {ends[-1]}, "
                        f"past num_train_steps={n}"
                    )
            else:
                raise ConfigError(f"cycles={cycles!r}: expected an int or a list of cycle end points")
        elif length is not None:
            if isinstance(length, tuple):
                if not length or not all(is_int(c) and c >= 1 for c in length):
                    raise ConfigError(
                        f"cycle_length={list(length)!r}: a list of cycle lengths must hold ints >= 1"
                    )
                ends = np.cumsum([self.count_steps(c) for c in length]).tolist()
                if ends[-1] > n:
                    raise ConfigError(
                        f"cycle_length={list(length)!r}: the cycles add up to {ends[-1]} steps, "
                        f"more than num_train_steps={n}"
                    )
            else:
                check_duration(self, "cycle_length", positive=True)
                step = self.duration_steps(length, n)
                if step < 1 or step > n:
                    raise ConfigError(
                        f"cycle_length={length!r}: is {step} steps; must be in [1, num_train_steps={n}]"
                    )
                # Levanter: whole cycles of `step`; the last one also takes the remainder.
                ends = [i * step for i in range(1, n // step)]
        else:
            ends = []
        bounds = [0, *ends]
        if bounds[-1] != n:
            bounds.append(n)
        return tuple(int(b) for b in bounds)

    def in_steps(self, **changes: Any) -> ScheduleContext:
        """A copy with ``changes`` applied whose integer durations are already in steps."""
        return dataclasses.replace(self, units="steps", **changes)


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


# -- cycle shapes (Levanter) -------------------------------------------------------------------


@dataclass(frozen=True)
class _CyclePlan:
    start: int
    warmup: int
    stable: int
    decay: int
    end: int


@dataclass(frozen=True)
class CycleSchedule(ScheduleConfig):
    """Warmup, stable and decay phases in each cycle (Levanter's assembly); subclasses give the decay.

    A new cycle shape is a registered subclass that defines :meth:`decay_piece` (and, if its
    decay should not fill the rest of the cycle by default, :meth:`default_decay`).
    """

    def decay_piece(self, ctx: ScheduleContext, decay_steps: int, warmup_steps: int) -> ScheduleFn:
        """The decay from the peak over ``decay_steps``; sees the step relative to its start."""
        raise NotImplementedError

    def default_decay(self, cycle_steps: int, warmup_steps: int) -> int:
        """Decay length when ``ctx.decay`` is None: the rest of the cycle."""
        return cycle_steps - warmup_steps

    def check_context(self, ctx: ScheduleContext) -> None:
        """Raises ``ConfigError`` when this shape cannot run with ``ctx``."""

    def plan(self, ctx: ScheduleContext) -> list[_CyclePlan]:
        """Phase lengths in steps for every cycle, clamped to fit (see the module docstring)."""
        bounds = ctx.cycle_bounds()
        plans = []
        for k, (start, end) in enumerate(itertools.pairwise(bounds)):
            length = end - start
            warm = min(ctx.duration_steps(ctx.warmup if k == 0 else ctx.rewarmup, length), length)
            if ctx.decay is None:
                decay = self.default_decay(length, warm)
            else:
                decay = ctx.duration_steps(ctx.decay, length)
            decay = max(0, min(decay, length - warm))
            plans.append(_CyclePlan(start, warm, length - warm - decay, decay, end))
        return plans

    def build(self, ctx: ScheduleContext) -> optax.Schedule:
        self.check_context(ctx)
        peak = float(ctx.peak_lr)
        pieces: list[ScheduleFn] = []
        starts: list[int] = []
        previous_end = float(ctx.warmup_init_lr)
        for p in self.plan(ctx):
            if p.warmup:
                pieces.append(_ramp(previous_end, peak, p.warmup))
                starts.append(p.start)
            if p.stable:
                pieces.append(_const(peak))
                starts.append(p.start + p.warmup)
            if p.decay:
                piece = self.decay_piece(ctx, p.decay, p.warmup)
                pieces.append(piece)
                starts.append(p.start + p.warmup + p.stable)
                previous_end = _host_value(piece, p.decay)
            else:
                previous_end = peak
        return _f32(_join(pieces, starts))

    def key_points(self, ctx: ScheduleContext) -> list[tuple[int, str]]:
        plans = self.plan(ctx)
        points = []
        for k, p in enumerate(plans):
            tag = f" (cycle {k + 1})" if len(plans) > 1 else ""
            if k > 0:
                points.append((p.start, f"cycle {k + 1} starts"))
            if p.warmup:
                points.append((p.start + p.warmup, f"end of warmup{tag}"))
            if p.decay:
                decay_start = p.start + p.warmup + p.stable
                if p.stable:
                    points.append((decay_start, f"end of stable, decay starts{tag}"))
                points.append((decay_start + p.decay // 2, f"mid-decay{tag}"))
            if len(plans) > 1:
                points.append((p.end - 1, f"last step of cycle {k + 1}"))
        return points


@ScheduleConfig.register_subclass("constant")
@dataclass(frozen=True)
class ConstantSchedule(CycleSchedule):
    """Constant at the peak after the warmup.

    ``lr(t) = peak`` (the min LR is never reached; with cycles, a rewarmup starts at the peak).
    """

    def default_decay(self, cycle_steps: int, warmup_steps: int) -> int:
        return 0  # nothing decays: the stable phase fills the cycle

    def decay_piece(self, ctx: ScheduleContext, decay_steps: int, warmup_steps: int) -> ScheduleFn:
        return _const(float(ctx.peak_lr))


@ScheduleConfig.register_subclass("linear")
@dataclass(frozen=True)
class LinearSchedule(CycleSchedule):
    """Linear decay from the peak to the min LR.

    ``lr(t) = min + (peak - min) * (1 - r)``, ``r = min(t, T) / T`` over the ``T`` decay steps.
    """

    def decay_piece(self, ctx: ScheduleContext, decay_steps: int, warmup_steps: int) -> ScheduleFn:
        return _anneal("linear", float(ctx.peak_lr), ctx.floor, decay_steps)


@ScheduleConfig.register_subclass("cosine")
@dataclass(frozen=True)
class CosineSchedule(CycleSchedule):
    """Cosine decay from the peak to the min LR, optionally raised to a power (optax's exponent).

    ``lr(t) = min + (peak - min) * (0.5 * (1 + cos(pi * r))) ** exponent``, ``r = min(t, T) / T``.
    """

    exponent: float = 1.0
    """Power applied to the cosine factor (1 = the plain cosine)."""

    def __post_init__(self) -> None:
        check_range(self, "exponent", 0.0, lo_open=True)

    def decay_piece(self, ctx: ScheduleContext, decay_steps: int, warmup_steps: int) -> ScheduleFn:
        peak, lo, exponent = float(ctx.peak_lr), ctx.floor, float(self.exponent)

        def schedule(step: Any) -> jax.Array:
            r = jnp.minimum(_t(step), float(decay_steps)) / float(decay_steps)
            return jnp.float32(lo) + jnp.float32(peak - lo) * jnp.sin(0.5 * jnp.pi * (1.0 - r)) ** (
                2.0 * exponent
            )

        return schedule


@ScheduleConfig.register_subclass("polynomial")
@dataclass(frozen=True)
class PolynomialSchedule(CycleSchedule):
    """Polynomial decay from the peak to the min LR (optax's polynomial_schedule).

    ``lr(t) = min + (peak - min) * (1 - r) ** power``, ``r = min(t, T) / T``.
    """

    power: float = 2.0
    """Exponent of the decay (1 = linear)."""

    def __post_init__(self) -> None:
        check_range(self, "power", 0.0, lo_open=True)

    def decay_piece(self, ctx: ScheduleContext, decay_steps: int, warmup_steps: int) -> ScheduleFn:
        peak, lo, power = float(ctx.peak_lr), ctx.floor, float(self.power)

        def schedule(step: Any) -> jax.Array:
            r = jnp.minimum(_t(step), float(decay_steps)) / float(decay_steps)
            return jnp.float32(lo) + jnp.float32(peak - lo) * (1.0 - r) ** power

        return schedule


@ScheduleConfig.register_subclass("inv_sqrt")
@dataclass(frozen=True)
class InvSqrtSchedule(CycleSchedule):
    """Inverse-square-root decay with timescale tau, floored at the min LR (Levanter's formula).

    ``lr(t) = max(peak * min(1, 1 / sqrt(max(t + w, 1) / tau)), min)`` with ``w`` the cycle's
    warmup steps; it does not depend on the decay length and keeps decaying past it.
    """

    tau: float = 10000.0
    """Timescale: the LR stays at the peak until ``t + w`` reaches ``tau``."""

    def __post_init__(self) -> None:
        check_range(self, "tau", 0.0, lo_open=True)

    def decay_piece(self, ctx: ScheduleContext, decay_steps: int, warmup_steps: int) -> ScheduleFn:
        peak, lo, tau, w = float(ctx.peak_lr), ctx.floor, float(self.tau), float(warmup_steps)

        def schedule(step: Any) -> jax.Array:
            t = _t(step)
            factor = jnp.minimum(1.0, 1.0 / jnp.sqrt(jnp.maximum(t + w, 1.0) / tau))
            return jnp.maximum(jnp.float32(peak) * factor, jnp.float32(lo))

        return schedule


@ScheduleConfig.register_subclass("inv")
@dataclass(frozen=True)
class InvSchedule(CycleSchedule):
    """Inverse (1/t) decay that reaches the min LR at the end of the decay (Levanter's formula).

    ``lr(t) = max(peak * min(1, 1 / ((peak / min - 1) * max(t, 1) / T + 1)), min)``; needs a
    min LR > 0.
    """

    def check_context(self, ctx: ScheduleContext) -> None:
        if ctx.floor <= 0:
            raise ConfigError(
                f"min_lr_ratio={ctx.min_lr_ratio!r}, min_lr={ctx.min_lr!r}: lr_schedule 'inv' needs a "
                "min LR > 0 (it decays as 1/t towards it)"
            )

    def decay_piece(self, ctx: ScheduleContext, decay_steps: int, warmup_steps: int) -> ScheduleFn:
        peak, lo, T = float(ctx.peak_lr), ctx.floor, float(decay_steps)
        slope = peak / lo - 1.0

        def schedule(step: Any) -> jax.Array:
            t = _t(step)
            factor = jnp.minimum(1.0, 1.0 / (slope * jnp.maximum(t, 1.0) / T + 1.0))
            return jnp.maximum(jnp.float32(peak) * factor, jnp.float32(lo))

        return schedule


@ScheduleConfig.register_subclass("power")
@dataclass(frozen=True)
class PowerSchedule(CycleSchedule):
    """Power scheduler: batch-size and token-count aware power-law decay (Shen et al., 2024).

    ``lr(t) = min(peak, batch_size * a * (t * tokens_per_step) ** b)`` with ``t`` the step in
    the decay phase (``lr = peak`` at ``t = 0``); no floor. arXiv:2408.13359, meant for muP.
    """

    a: float = 4.6
    """Amplitude (> 0)."""
    b: float = -0.51
    """Power-law exponent (< 0)."""
    batch_size: int | None = None
    """Sequences per step (required)."""
    seq_length: int | None = None
    """Tokens per sequence; None: tokens_per_step / batch_size from the optimizer config."""

    def __post_init__(self) -> None:
        check_range(self, "a", 0.0, lo_open=True)
        check_range(self, "b", None, 0.0, hi_open=True)
        for name in ("batch_size", "seq_length"):
            check_int(self, name, allow_none=True)

    def _tokens_per_step(self, ctx: ScheduleContext) -> int:
        if self.batch_size is None:
            raise ConfigError(f"{self._where('batch_size')}=None: the power schedule needs the batch size")
        if self.seq_length is not None:
            return int(self.batch_size) * int(self.seq_length)
        if ctx.tokens_per_step is None:
            raise ConfigError(
                f"{self._where('seq_length')}=None: set seq_length or the optimizer's tokens_per_step"
            )
        return int(ctx.tokens_per_step)

    def check_context(self, ctx: ScheduleContext) -> None:
        self._tokens_per_step(ctx)

    def decay_piece(self, ctx: ScheduleContext, decay_steps: int, warmup_steps: int) -> ScheduleFn:
        peak, a, b = float(ctx.peak_lr), float(self.a), float(self.b)
        bs, tps = float(self.batch_size), float(self._tokens_per_step(ctx))  # type: ignore[arg-type]

        def schedule(step: Any) -> jax.Array:
            tokens = jnp.maximum(_t(step), 1.0) * tps
            law = jnp.minimum(jnp.float32(peak), bs * a * tokens**b)
            return jnp.where(_t(step) > 0, law, jnp.float32(peak))

        return schedule


@ScheduleConfig.register_subclass("wsd")
@dataclass(frozen=True)
class WSDSchedule(CycleSchedule):
    """Warmup-stable-decay with Megatron's decay styles (linear, cosine, exponential, minus_sqrt).

    In the last ``T`` steps of each cycle (``decay``, default ``decay_fraction`` of the cycle),
    with ``r = min(t, T) / T``: ``lr = min + coeff(r) * (peak - min)``, where coeff is
    linear ``1 - r``, cosine ``0.5 * (cos(pi * r) + 1)``, exponential ``2 * 0.5**r - 1`` or
    minus_sqrt ``1 - sqrt(r)``.
    """

    decay_style: str = "linear"
    """How the LR anneals: linear, cosine, exponential or minus_sqrt."""
    decay_fraction: float = 0.2
    """Decay length as a fraction of each cycle when the optimizer's ``decay`` is None."""

    def __post_init__(self) -> None:
        check_choice(self, "decay_style", _WSD_STYLES)
        check_range(self, "decay_fraction", 0.0, 1.0)

    def default_decay(self, cycle_steps: int, warmup_steps: int) -> int:
        return _frac_steps(float(self.decay_fraction), cycle_steps)

    def decay_piece(self, ctx: ScheduleContext, decay_steps: int, warmup_steps: int) -> ScheduleFn:
        return _anneal(self.decay_style, float(ctx.peak_lr), ctx.floor, decay_steps)


# -- whole-run schedules (OLMo-core) -----------------------------------------------------------


def _no_cycles(schedule: ScheduleConfig, ctx: ScheduleContext) -> None:
    if ctx.cycles is not None or ctx.cycle_length is not None:
        field = "cycles" if ctx.cycles is not None else "cycle_length"
        value = ctx.cycles if ctx.cycles is not None else ctx.cycle_length
        raise ConfigError(
            f"{field}={value!r}: lr_schedule '{schedule.type_name}' defines the whole run; cycles need "
            "a cycle shape (constant, linear, cosine, inv_sqrt, inv, power, polynomial, wsd) or wsds"
        )


def _warmup_steps(ctx: ScheduleContext) -> int:
    n = ctx.num_train_steps
    return min(ctx.duration_steps(ctx.warmup, n), n)


def _decay_steps(ctx: ScheduleContext, default_fraction: float, room: int) -> int:
    n = ctx.num_train_steps
    d = _frac_steps(default_fraction, n) if ctx.decay is None else ctx.duration_steps(ctx.decay, n)
    return max(0, min(d, room))


def _pick(step: Any, boundaries: Sequence[int], branches: Sequence[ScheduleFn]) -> jax.Array:
    """``branches[i](step)`` where ``boundaries[i-1] <= step < boundaries[i]`` (absolute steps)."""
    step = jnp.asarray(step)
    out = branches[0](step)
    for b, f in zip(boundaries, branches[1:], strict=True):
        out = jnp.where(step < b, out, f(step))
    return out


@ScheduleConfig.register_subclass("half_cosine")
@dataclass(frozen=True)
class HalfCosineSchedule(ScheduleConfig):
    """Second half of a cosine, after a warmup to its midpoint (OLMo-core HalfCosWithWarmup).

    Warmup from ``warmup_init_lr`` to ``mid = (peak + min) / 2`` over ``w`` steps, then
    ``min + (peak - min) * (1 + cos(pi * (c - w + N - w) / (2 * (N - w)))) / 2``; ``min`` from
    ``N``. The peak is that of the full cosine. Ignores ``decay``.
    """

    def build(self, ctx: ScheduleContext) -> optax.Schedule:
        _no_cycles(self, ctx)
        n, w = ctx.num_train_steps, _warmup_steps(ctx)
        peak, lo, init = float(ctx.peak_lr), ctx.floor, float(ctx.warmup_init_lr)
        mid = lo + (peak - lo) / 2
        span = float(max(n - w, 1))

        def second_half(step: Any) -> jax.Array:
            c = jnp.minimum(_t(step), float(n)) - float(w)
            return jnp.float32(lo) + jnp.float32(peak - lo) * jnp.sin(jnp.pi * (span - c) / (4 * span)) ** 2

        branches = [_ramp(init, mid, w), second_half, _const(lo)] if w else [second_half, _const(lo)]
        bounds = [w, n] if w else [n]
        return _f32(lambda step: _pick(step, bounds, branches))

    def key_points(self, ctx: ScheduleContext) -> list[tuple[int, str]]:
        n, w = ctx.num_train_steps, _warmup_steps(ctx)
        return [(w, "end of warmup"), (w + (n - w) // 2, "mid-decay")]


@ScheduleConfig.register_subclass("cosine_linear_decay")
@dataclass(frozen=True)
class CosineLinearDecaySchedule(ScheduleConfig):
    """Cosine to the min LR, cut short by a linear decay over the last steps (OLMo-core).

    Warmup over ``w``; cosine ``cos(c) = min + (peak - min) * (1 + cos(pi * (c - w) / (N - w))) / 2``
    until ``N - d``; then linear from ``cos(N - d)`` to ``decay_min_lr`` at ``N``
    (``d = decay``, default ``decay_fraction`` of the run).
    """

    decay_fraction: float = 0.1
    """Length of the linear tail as a fraction of the run when the optimizer's ``decay`` is None."""
    decay_min_lr: float | None = None
    """Where the linear tail ends; None: the min LR."""

    def __post_init__(self) -> None:
        check_range(self, "decay_fraction", 0.0, 1.0)
        check_range(self, "decay_min_lr", 0.0, allow_none=True)

    def _plan(self, ctx: ScheduleContext) -> tuple[int, int, int]:
        n, w = ctx.num_train_steps, _warmup_steps(ctx)
        return n, w, _decay_steps(ctx, float(self.decay_fraction), n - w)

    def build(self, ctx: ScheduleContext) -> optax.Schedule:
        _no_cycles(self, ctx)
        n, w, d = self._plan(ctx)
        peak, lo, init = float(ctx.peak_lr), ctx.floor, float(ctx.warmup_init_lr)
        end = lo if self.decay_min_lr is None else float(self.decay_min_lr)
        span = float(max(n - w, 1))

        def cosine(step: Any) -> jax.Array:
            c = jnp.minimum(_t(step), float(n)) - float(w)
            return jnp.float32(lo) + jnp.float32(peak - lo) * jnp.sin(0.5 * jnp.pi * (span - c) / span) ** 2

        branches: list[ScheduleFn] = [cosine]
        bounds: list[int] = []
        if w:
            branches.insert(0, _ramp(init, peak, w))
            bounds.append(w)
        if d:
            tail_start = _host_value(cosine, n - d)
            tail = _ramp(tail_start, end, d)
            branches.append(lambda step: tail(jnp.asarray(step) - (n - d)))
            bounds.append(n - d)
        return _f32(lambda step: _pick(step, bounds, branches))

    def key_points(self, ctx: ScheduleContext) -> list[tuple[int, str]]:
        n, w, d = self._plan(ctx)
        points = [(w, "end of warmup"), (w + (n - d - w) // 2, "mid-cosine")]
        if d:
            points += [(n - d, "linear decay starts"), (n - d + d // 2, "mid-decay")]
        return points


@ScheduleConfig.register_subclass("exponential")
@dataclass(frozen=True)
class ExponentialSchedule(ScheduleConfig):
    """Exponential rise from lr_min to the peak over the run: an LR range test (OLMo-core).

    ``lr(c) = lr_min * (peak / lr_min) ** (min(c, N) / N)``. Ignores warmup, decay and the min LR.
    """

    lr_min: float = 1e-9
    """LR at step 0 (> 0, below the peak)."""

    def __post_init__(self) -> None:
        check_range(self, "lr_min", 0.0, lo_open=True)

    def build(self, ctx: ScheduleContext) -> optax.Schedule:
        _no_cycles(self, ctx)
        if self.lr_min >= ctx.peak_lr:
            raise ConfigError(
                f"{self._where('lr_min')}={self.lr_min!r}: must be below the peak LR {ctx.peak_lr!r}"
            )
        n = float(ctx.num_train_steps)
        log_lo, log_hi = math.log(self.lr_min), math.log(ctx.peak_lr)

        def schedule(step: Any) -> jax.Array:
            r = jnp.minimum(_t(step), n) / n
            return jnp.exp(jnp.float32(log_lo) + r * jnp.float32(log_hi - log_lo))

        return _f32(schedule)


@ScheduleConfig.register_subclass("power_lr")
@dataclass(frozen=True)
class PowerLRSchedule(ScheduleConfig):
    """Power-law decay after the warmup, with an optional linear tail (OLMo-core PowerLR).

    Warmup over ``w >= 1`` steps; then ``lr(c) = peak * (c / w) ** b``; in the last ``d`` steps
    (``decay``, default ``decay_fraction`` of the run; 0 turns the tail off) linear from
    ``peak * ((N - d) / w) ** b`` to ``decay_min_lr`` at ``N``. No floor in the power phase.
    """

    b: float = -0.51
    """Power-law exponent (< 0)."""
    decay_fraction: float = 0.1
    """Length of the linear tail as a fraction of the run when the optimizer's ``decay`` is None."""
    decay_min_lr: float | None = None
    """Where the linear tail ends; None: the min LR."""

    def __post_init__(self) -> None:
        check_range(self, "b", None, 0.0, hi_open=True)
        check_range(self, "decay_fraction", 0.0, 1.0)
        check_range(self, "decay_min_lr", 0.0, allow_none=True)

    def _plan(self, ctx: ScheduleContext) -> tuple[int, int, int]:
        n, w = ctx.num_train_steps, _warmup_steps(ctx)
        if w < 1:
            raise ConfigError(
                f"warmup={ctx.warmup!r}: lr_schedule 'power_lr' needs a warmup of at least one step "
                "(the power law is measured in units of the warmup)"
            )
        return n, w, _decay_steps(ctx, float(self.decay_fraction), n - w)

    def build(self, ctx: ScheduleContext) -> optax.Schedule:
        _no_cycles(self, ctx)
        n, w, d = self._plan(ctx)
        peak, init, b = float(ctx.peak_lr), float(ctx.warmup_init_lr), float(self.b)
        end = ctx.floor if self.decay_min_lr is None else float(self.decay_min_lr)

        def power(step: Any) -> jax.Array:
            return jnp.float32(peak) * (jnp.maximum(_t(step), float(w)) / float(w)) ** b

        branches: list[ScheduleFn] = [_ramp(init, peak, w), power]
        bounds = [w]  # at step w the ramp and the power law both give the peak
        if d:
            tail = _ramp(peak * ((n - d) / w) ** b, end, d)
            branches.append(lambda step: tail(jnp.asarray(step) - (n - d)))
            bounds.append(n - d)
        return _f32(lambda step: _pick(step, bounds, branches))

    def key_points(self, ctx: ScheduleContext) -> list[tuple[int, str]]:
        n, w, d = self._plan(ctx)
        points = [(w, "end of warmup"), (w + (n - d - w) // 2, "mid power law")]
        if d:
            points += [(n - d, "linear tail starts"), (n - d + d // 2, "mid-decay")]
        return points


@ScheduleConfig.register_subclass("wsds")
@dataclass(frozen=True)
class WSDSSchedule(ScheduleConfig):
    """Warmup-stable-decay-simplified: periods each flat at peak * multiplier, then a decay (OLMo-core).

    Periods are ``period_lengths`` (or the optimizer's cycles; default one period = the run).
    Period ``i``: flat at ``peak * m_i``, then over its last ``D_i`` steps (``decay``, default
    ``decay_fraction`` of the period) ``decay_min_lr + coeff(r) * (peak * m_i - decay_min_lr)``
    with a Megatron ``decay_style`` coefficient (default linear ``1 - r``). The warmup is only
    in the first period; the LR jumps back up at each period start (no rewarmup) and holds
    ``decay_min_lr`` after the last period. arXiv:2410.05192.
    """

    period_lengths: list[Duration] | None = None
    """Length of each period (int count or fraction of the run); None: the optimizer's cycles."""
    period_lr_multipliers: list[float] | None = None
    """Peak multiplier of each period (> 0); None: all 1."""
    decay_fraction: float = 0.1
    """Decay length as a fraction of each period when the optimizer's ``decay`` is None."""
    decay_style: str = "linear"
    """How each period anneals: linear, cosine, exponential or minus_sqrt."""
    decay_min_lr: float | None = None
    """Where each decay ends; None: the min LR."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "period_lengths", _as_list(self.period_lengths))
        object.__setattr__(self, "period_lr_multipliers", _as_list(self.period_lr_multipliers))
        if self.period_lengths is not None:
            if not isinstance(self.period_lengths, list) or not self.period_lengths:
                raise ConfigError(
                    f"{self._where('period_lengths')}={self.period_lengths!r}: expected a non-empty list"
                )
            for i in range(len(self.period_lengths)):
                check_duration(self, "period_lengths", positive=True, item=i)
        if self.period_lr_multipliers is not None:
            if not isinstance(self.period_lr_multipliers, list) or not self.period_lr_multipliers:
                raise ConfigError(
                    f"{self._where('period_lr_multipliers')}={self.period_lr_multipliers!r}: "
                    "expected a non-empty list"
                )
            for i in range(len(self.period_lr_multipliers)):
                check_positive(self, "period_lr_multipliers", item=i)
            if self.period_lengths is not None and len(self.period_lr_multipliers) != len(
                self.period_lengths
            ):
                raise ConfigError(
                    f"{self._where('period_lr_multipliers')}={list(self.period_lr_multipliers)!r}: needs one "
                    f"multiplier per period ({len(self.period_lengths)} periods)"
                )
        check_range(self, "decay_fraction", 0.0, 1.0)
        check_choice(self, "decay_style", _WSD_STYLES)
        check_range(self, "decay_min_lr", 0.0, allow_none=True)

    def _periods(self, ctx: ScheduleContext) -> list[tuple[int, int, int, int, float]]:
        """(start, warmup, stable, decay, multiplier) of every period."""
        n = ctx.num_train_steps
        if is_real(ctx.rewarmup) and ctx.rewarmup != 0:
            raise ConfigError(
                f"rewarmup={ctx.rewarmup!r}: lr_schedule 'wsds' has no rewarmup (only the first period warms "
                "up); use a cycle shape such as wsd with cycles for rewarmups"
            )
        if self.period_lengths is not None:
            if ctx.cycles is not None or ctx.cycle_length is not None:
                raise ConfigError(
                    f"{self._where('period_lengths')}: set either period_lengths or the optimizer's "
                    f"cycles/cycle_length, not both (cycles={ctx.cycles!r}, "
                    f"cycle_length={ctx.cycle_length!r})"
                )
            ends = np.cumsum([ctx.duration_steps(v, n) for v in self.period_lengths]).tolist()
            if ends[-1] > n:
                raise ConfigError(
                    f"{self._where('period_lengths')}={list(self.period_lengths)!r}: the periods add up to "
                    f"{ends[-1]} steps, more than num_train_steps={n}"
                )
            if any(b <= a for a, b in itertools.pairwise([0, *ends])):
                raise ConfigError(
                    f"{self._where('period_lengths')}={list(self.period_lengths)!r}: "
                    "every period needs >= 1 step"
                )
            bounds = [0, *ends]
        else:
            bounds = list(ctx.cycle_bounds())
        count = len(bounds) - 1
        mults = self.period_lr_multipliers or (1.0,) * count
        if len(mults) != count:
            raise ConfigError(
                f"{self._where('period_lr_multipliers')}={list(mults)!r}: needs one multiplier per period "
                f"({count} periods)"
            )
        periods = []
        for i, (start, end) in enumerate(itertools.pairwise(bounds)):
            length = end - start
            warm = min(ctx.duration_steps(ctx.warmup, length), length) if i == 0 else 0
            if ctx.decay is None:
                decay = _frac_steps(float(self.decay_fraction), length)
            else:
                decay = ctx.duration_steps(ctx.decay, length)
            decay = max(0, min(decay, length - warm))
            periods.append((start, warm, length - warm - decay, decay, float(mults[i])))
        return periods

    def build(self, ctx: ScheduleContext) -> optax.Schedule:
        peak, init = float(ctx.peak_lr), float(ctx.warmup_init_lr)
        end = ctx.floor if self.decay_min_lr is None else float(self.decay_min_lr)
        pieces: list[ScheduleFn] = []
        starts: list[int] = []
        last = 0
        for start, warm, stable, decay, mult in self._periods(ctx):
            top = peak * mult
            if warm:
                pieces.append(_ramp(init, top, warm))
                starts.append(start)
            if stable:
                pieces.append(_const(top))
                starts.append(start + warm)
            if decay:
                pieces.append(_anneal(self.decay_style, top, end, decay))
                starts.append(start + warm + stable)
            last = start + warm + stable + decay
        pieces.append(_const(end))
        starts.append(last)
        return _f32(_join(pieces, starts))

    def key_points(self, ctx: ScheduleContext) -> list[tuple[int, str]]:
        points = []
        periods = self._periods(ctx)
        for i, (start, warm, stable, decay, _) in enumerate(periods):
            tag = f" (period {i + 1})" if len(periods) > 1 else ""
            if i:
                points.append((start, f"period {i + 1} starts"))
            if warm:
                points.append((start + warm, "end of warmup"))
            if decay:
                points += [
                    (start + warm + stable, f"decay starts{tag}"),
                    (start + warm + stable + decay // 2, f"mid-decay{tag}"),
                ]
        return points


@dataclass(frozen=True)
class OverrideDecay:
    """A late decay that replaces the rest of a sequential schedule from ``start`` on (OLMo-core).

    From ``start`` the LR goes from the main schedule's value there to ``end_lr`` over
    ``duration`` steps (linear: ``s + (e - s) * c / d``; cosine:
    ``e + (s - e) * (1 + cos(pi * c / d)) / 2``) and holds ``end_lr`` afterwards.
    """

    start: Duration = 0.9
    """Where the override begins: an int step (or token) count, or a fraction of the run."""
    duration: Duration = 0.1
    """How long it lasts: an int count or a fraction of the run (clamped to the run's end)."""
    shape: str = "linear"
    """linear or cosine."""
    end_lr: float | None = None
    """Where it ends; None: the min LR."""

    def __post_init__(self) -> None:
        check_duration(self, "start")
        check_duration(self, "duration", positive=True)
        check_choice(self, "shape", ("linear", "cosine"))
        check_range(self, "end_lr", 0.0, allow_none=True)

    @staticmethod
    def _where(name: str) -> str:
        return f"lr_schedule.override_decay.{name}"


@ScheduleConfig.register_subclass("sequential")
@dataclass(frozen=True)
class SequentialSchedule(ScheduleConfig):
    """Schedules run one after another, each starting from the previous one's final LR (OLMo-core).

    Stage ``k`` runs for ``lengths[k]`` steps (the last one for the rest of the run) as its own
    schedule whose peak is the previous stage's final LR (the first stage's is the peak LR and
    it alone has the warmup). Each stage's min LR is ``min_lr_ratio`` times its own peak
    (OLMo-core's ``alpha_f``), or the absolute ``min_lr`` capped at that peak. An optional
    ``override_decay`` replaces everything from its start: see :class:`OverrideDecay`.
    The default is constant for 80% of the run, then a linear decay.
    """

    schedules: list[ScheduleConfig | str] = dataclasses.field(default_factory=lambda: ["constant", "linear"])
    """The stages, as schedule names or mappings with ``type:``."""
    lengths: list[Duration] = dataclasses.field(default_factory=lambda: [0.8])
    """Length of every stage but the last (int count or fraction of the run)."""
    override_decay: OverrideDecay | None = None
    """An optional late decay from an absolute start."""

    def __post_init__(self) -> None:
        if isinstance(self.schedules, (str, ScheduleConfig, Mapping)) or not isinstance(
            self.schedules, (list, tuple)
        ):
            raise ConfigError(f"{self._where('schedules')}={self.schedules!r}: expected a list of schedules")
        stages = [
            parse_schedule(s, field=f"lr_schedule.schedules[{i}]") for i, s in enumerate(self.schedules)
        ]
        if not stages:
            raise ConfigError(f"{self._where('schedules')}=[]: needs at least one schedule")
        object.__setattr__(self, "schedules", stages)
        lengths = _as_list(self.lengths)
        if not isinstance(lengths, list):
            raise ConfigError(f"{self._where('lengths')}={lengths!r}: expected a list of stage lengths")
        object.__setattr__(self, "lengths", lengths)
        for i in range(len(lengths)):
            check_duration(self, "lengths", positive=True, item=i)
        if len(lengths) != len(stages) - 1:
            raise ConfigError(
                f"{self._where('lengths')}={list(lengths)!r}: needs one length per stage but the last "
                f"({len(stages) - 1} for {len(stages)} schedules; the last runs to the end)"
            )
        if isinstance(self.override_decay, Mapping):
            allowed = [f.name for f in dataclasses.fields(OverrideDecay)]
            for key in self.override_decay:
                if key not in allowed:
                    raise ConfigError(
                        f"lr_schedule.override_decay.{key}: not a field{did_you_mean(str(key), allowed)}; "
                        f"its fields: {', '.join(allowed)}"
                    )
            object.__setattr__(self, "override_decay", OverrideDecay(**self.override_decay))
        elif self.override_decay is not None and not isinstance(self.override_decay, OverrideDecay):
            raise ConfigError(
                f"{self._where('override_decay')}={self.override_decay!r}: expected a mapping with "
                "start, duration, shape, end_lr"
            )

    def _stage_bounds(self, ctx: ScheduleContext) -> list[int]:
        n = ctx.num_train_steps
        ends = np.cumsum([ctx.duration_steps(v, n) for v in self.lengths]).tolist() if self.lengths else []
        bounds = [0, *ends]
        if any(b <= a for a, b in itertools.pairwise(bounds)) or (ends and ends[-1] >= n):
            raise ConfigError(
                f"{self._where('lengths')}={list(self.lengths)!r}: in steps {ends} for num_train_steps={n}; "
                "every stage needs >= 1 step and the last stage must start before the end"
            )
        return [*bounds, n]

    def _override(self, ctx: ScheduleContext) -> tuple[int, int] | None:
        if self.override_decay is None:
            return None
        n = ctx.num_train_steps
        start = ctx.duration_steps(self.override_decay.start, n)
        if start >= n:
            raise ConfigError(
                f"lr_schedule.override_decay.start={self.override_decay.start!r}: is step {start}, "
                f"at or past the end of the run (num_train_steps={n})"
            )
        duration = min(ctx.duration_steps(self.override_decay.duration, n), n - start)
        return start, max(duration, 1)

    def build(self, ctx: ScheduleContext) -> optax.Schedule:
        _no_cycles(self, ctx)
        if ctx.decay is not None:
            raise ConfigError(
                f"decay={ctx.decay!r}: lr_schedule 'sequential' takes its decays from its stages; "
                "leave decay unset and give the stages' lengths"
            )
        n = ctx.num_train_steps
        bounds = self._stage_bounds(ctx)
        floor = ctx.floor
        warmup = ctx.duration_steps(ctx.warmup, n)
        peak = float(ctx.peak_lr)
        pieces: list[ScheduleFn] = []
        for k, stage in enumerate(self.schedules):
            length = bounds[k + 1] - bounds[k]
            sub = ctx.in_steps(
                peak_lr=peak,
                num_train_steps=length,
                min_lr=None if ctx.min_lr is None else min(float(ctx.min_lr), peak),
                warmup=warmup if k == 0 else 0,
                warmup_init_lr=float(ctx.warmup_init_lr) if k == 0 else 0.0,
                rewarmup=0,
            )
            assert isinstance(stage, ScheduleConfig)
            piece = stage.build(sub)
            pieces.append(piece)
            peak = _host_value(piece, length)
        main = _join(pieces, bounds[:-1])
        override = self._override(ctx)
        if override is None:
            return _f32(main)
        start, duration = override
        od = self.override_decay
        assert od is not None
        begin = _host_value(main, start)
        end = floor if od.end_lr is None else float(od.end_lr)
        tail = _anneal("linear" if od.shape == "linear" else "cosine", begin, end, duration)
        return _f32(_join([main, tail], [0, start]))

    def key_points(self, ctx: ScheduleContext) -> list[tuple[int, str]]:
        bounds = self._stage_bounds(ctx)
        points = []
        w = min(ctx.duration_steps(ctx.warmup, ctx.num_train_steps), bounds[1])
        if w:
            points.append((w, "end of warmup"))
        for k in range(1, len(bounds) - 1):
            points.append((bounds[k], f"stage {k + 1} ({self.schedules[k].type_name}) starts"))  # type: ignore[union-attr]
        if len(bounds) > 2:
            points.append(((bounds[-2] + bounds[-1]) // 2, "middle of the last stage"))
        override = self._override(ctx)
        if override is not None:
            start, duration = override
            points += [(start, "override decay starts"), (start + duration // 2, "mid override decay")]
        return points


# -- public functions --------------------------------------------------------------------------


def _read_mapping(text: str) -> Mapping[str, Any] | None:
    """A mapping written as a Python literal (what draccus passes on) or as YAML (the CLI), else None."""
    import ast

    import yaml

    for read in (ast.literal_eval, yaml.safe_load):
        try:
            loaded = read(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, yaml.YAMLError):
            continue
        if isinstance(loaded, Mapping):
            return loaded
    return None


def parse_schedule(
    value: str | Mapping[str, Any] | ScheduleConfig, *, field: str = "lr_schedule", _where: str | None = None
) -> ScheduleConfig:
    """A ``ScheduleConfig`` from a name (``"cosine"``), a mapping (``{"type": "wsd", ...}``) or itself.

    A mapping without ``type`` is the default schedule (cosine) with those fields. Text that
    holds a mapping (``"{type: wsd, decay_style: cosine}"``, as the CLI or draccus may pass it)
    is read as YAML. Unknown names and fields raise ``ConfigError`` with the closest matches.
    """
    if isinstance(value, ScheduleConfig):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            loaded = _read_mapping(text)
            if loaded is not None:
                return parse_schedule(loaded, field=field)
        return parse_schedule({"type": text}, field=field, _where=field)
    if isinstance(value, Mapping):
        raw = dict(value)
        name = raw.pop("type", ScheduleConfig.default_choice_name())
        if not isinstance(name, str) or name not in ScheduleConfig.registered():
            known = sorted(ScheduleConfig.registered())
            raise ConfigError(
                f"{_where or field + '.type'}={name!r}: not a registered schedule"
                f"{did_you_mean(str(name), known)}; choose from {', '.join(known)}"
            )
        cls = ScheduleConfig.get_choice_class(name)
        allowed = [f.name for f in dataclasses.fields(cls) if f.init]
        for key in raw:
            if key not in allowed:
                listing = ", ".join(allowed) if allowed else "none"
                raise ConfigError(
                    f"{field}.{key}: schedule '{name}' has no field {key!r}"
                    f"{did_you_mean(str(key), allowed)}; "
                    f"its fields: {listing}"
                )
        try:
            return draccus.decode(cls, raw)
        except Exception as e:
            found = config_error_in(e)
            if found is not None:
                raise found from None
            message = " ".join(str(e).split())
            raise ConfigError(f"{field}={dict(value)!r}: {message}") from e
    raise ConfigError(
        f"{field}={value!r}: expected a schedule name (e.g. 'cosine') or a mapping with 'type' "
        f"(one of {', '.join(sorted(ScheduleConfig.registered()))})"
    )


def build_lr_schedule(
    schedule: ScheduleConfig | str | Mapping[str, Any], ctx: ScheduleContext
) -> optax.Schedule:
    """The learning-rate schedule: ``step -> float32 LR``, jit-safe, checked before anything is traced."""
    return parse_schedule(schedule).build(ctx)


@dataclass(frozen=True)
class _WeightDecayFields:
    """The optimizer fields :func:`weight_decay_schedule` reads, under their names, for checking."""

    weight_decay: float
    weight_decay_end: float | None
    weight_decay_schedule: str


def weight_decay_schedule(
    start: float, end: float | None, style: str, num_train_steps: int
) -> optax.Schedule | float:
    """Weight decay from ``start`` to ``end`` over the run (Megatron's styles).

    With ``r = min(step, N) / N``: constant ``start``; linear ``start + (end - start) * r``;
    cosine ``start + (end - start) * 0.5 * (cos(pi * (1 - r)) + 1)``. Returns the float
    ``start`` when it is constant (``inject_hyperparams`` then holds it fixed).
    """
    fields = _WeightDecayFields(start, end, style)
    check_range(fields, "weight_decay", 0.0)
    check_range(fields, "weight_decay_end", 0.0, allow_none=True)
    check_choice(fields, "weight_decay_schedule", _WD_STYLES)
    check_num_train_steps(num_train_steps)
    if style == "constant":
        if end is not None and end != start:
            raise ConfigError(
                f"weight_decay_end={end!r}: weight_decay_schedule='constant' keeps weight_decay={start!r}; "
                "choose weight_decay_schedule linear or cosine to move to weight_decay_end"
            )
        return float(start)
    if end is None:
        raise ConfigError(
            f"weight_decay_schedule={style!r}: needs weight_decay_end (the value at the end of the run)"
        )
    start_f, delta, n = float(start), float(end) - float(start), float(num_train_steps)

    def schedule(step: Any) -> jax.Array:
        r = jnp.minimum(_t(step), n) / n
        if style == "linear":
            coeff = r
        else:
            coeff = jnp.sin(0.5 * jnp.pi * r) ** 2  # = 0.5 * (cos(pi (1 - r)) + 1)
        return jnp.float32(start_f) + jnp.float32(delta) * coeff

    return _f32(schedule)


def key_steps(
    schedule: ScheduleConfig | str | Mapping[str, Any], ctx: ScheduleContext
) -> list[tuple[int, str]]:
    """Steps worth tabulating, sorted, each with what happens there.

    Step 0, the schedule's phase changes (end of warmup, end of stable, mid-decay, cycle
    starts...), the last step (``N - 1``) and one past the end (``N``).
    """
    schedule = parse_schedule(schedule)
    n = ctx.num_train_steps
    labels: dict[int, list[str]] = {}
    for step, label in [(0, "start"), *schedule.key_points(ctx), (n - 1, "last step"), (n, "past the end")]:
        if 0 <= step <= n and label not in labels.setdefault(int(step), []):
            labels[int(step)].append(label)
    return [(step, ", ".join(labels[step])) for step in sorted(labels)]


def encode_schedule(schedule: ScheduleConfig | str | Mapping[str, Any]) -> dict[str, Any]:
    """The YAML-ready mapping of a schedule, with its ``type`` (``draccus.encode(s)`` alone omits it)."""
    return draccus.encode(parse_schedule(schedule), ScheduleConfig)


__all__ = [
    "ConstantSchedule",
    "CosineLinearDecaySchedule",
    "CosineSchedule",
    "CycleSchedule",
    "Duration",
    "ExponentialSchedule",
    "HalfCosineSchedule",
    "InvSchedule",
    "InvSqrtSchedule",
    "LinearSchedule",
    "OverrideDecay",
    "PolynomialSchedule",
    "PowerLRSchedule",
    "PowerSchedule",
    "ScheduleConfig",
    "ScheduleContext",
    "SequentialSchedule",
    "WSDSSchedule",
    "WSDSchedule",
    "build_lr_schedule",
    "encode_schedule",
    "key_steps",
    "parse_schedule",
    "weight_decay_schedule",
]
