"""Levanter's cycle assembly (warmup, stable, decay per cycle) and the shapes that decay within it."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax

from marin_optim.errors import ConfigError
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
from marin_optim.schedules.context import _WSD_STYLES, ScheduleContext, _frac_steps
from marin_optim.validation import (
    check_choice,
    check_int,
    check_range,
)

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
