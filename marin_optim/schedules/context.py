"""The ``ScheduleContext``: what a schedule needs besides its own fields, validated; durations in steps."""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from marin_optim.errors import ConfigError
from marin_optim.validation import (
    Duration,
    check_choice,
    check_duration,
    check_int,
    check_num_train_steps,
    check_range,
    is_int,
)

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
    lr_scale: float = 1.0
    """The factor on a schedule's own absolute learning rates (``decay_min_lr``, ``lr_min``,
    ``end_lr``): ``peak_lr`` over the config's learning rate when a second branch (Muon's
    AdamW, Scion's signum) shares the schedule's shape at its own peak; ``min_lr`` and
    ``warmup_init_lr`` above are given scaled already."""

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
