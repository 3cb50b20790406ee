"""OLMo-core's whole-run schedules: each defines the LR over the whole run by its own formula."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from marin_optim.errors import ConfigError, did_you_mean
from marin_optim.schedules.base import (
    ScheduleConfig,
    ScheduleFn,
    _anneal,
    _const,
    _f32,
    _host_value,
    _join,
    _ramp,
    _t,
)
from marin_optim.schedules.context import _WSD_STYLES, ScheduleContext, _as_list, _frac_steps
from marin_optim.schedules.parse import parse_schedule
from marin_optim.validation import (
    Duration,
    check_choice,
    check_duration,
    check_positive,
    check_range,
    is_real,
)

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
        end = lo if self.decay_min_lr is None else float(self.decay_min_lr) * ctx.lr_scale
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
        lr_min = self.lr_min * ctx.lr_scale
        if lr_min >= ctx.peak_lr:
            raise ConfigError(
                f"{self._where('lr_min')}={self.lr_min!r}: must be below the peak LR "
                f"{ctx.peak_lr / ctx.lr_scale!r}"
            )
        n = float(ctx.num_train_steps)
        log_lo, log_hi = math.log(lr_min), math.log(ctx.peak_lr)

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
        end = ctx.floor if self.decay_min_lr is None else float(self.decay_min_lr) * ctx.lr_scale

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
        end = ctx.floor if self.decay_min_lr is None else float(self.decay_min_lr) * ctx.lr_scale
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
        end = floor if od.end_lr is None else float(od.end_lr) * ctx.lr_scale
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
