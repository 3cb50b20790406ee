"""Validation of single values, shared by the optimizer configs and the schedules.

Each check takes ``where`` (the field as the user wrote it, e.g. ``adam.beta2``) and the value,
and raises :class:`~marin_optim.errors.ConfigError` naming both and what is allowed
(``adam.beta2=1.5: must be in [0, 1)``). ``marin_optim.config`` wraps them as
``check_range(cfg, name, ...)`` and friends; this module imports nothing of the package but
``errors``, so both ``config`` and ``schedules`` can use it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from marin_optim.errors import ConfigError, did_you_mean

_DURATION = "expected an int (steps or tokens) or a float in [0, 1] (a fraction)"


def is_int(x: Any) -> bool:
    """A Python or numpy integer, not a bool."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def is_real(x: Any) -> bool:
    """A Python or numpy integer or float, not a bool (possibly inf or NaN)."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def is_finite_real(x: Any) -> bool:
    """:func:`is_real` and finite."""
    return is_real(x) and math.isfinite(x)


def check_real(
    where: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    allow_none: bool = False,
) -> None:
    """Raises ``ConfigError`` unless ``value`` is a finite number with ``lo <= value <= hi``
    (strict where ``*_open``; no bound where ``None``)."""
    if value is None and allow_none:
        return
    if not is_finite_real(value):
        raise ConfigError(f"{where}={value!r}: expected a finite number")
    lo_ok = lo is None or (value > lo if lo_open else value >= lo)
    hi_ok = hi is None or (value < hi if hi_open else value <= hi)
    if not (lo_ok and hi_ok):
        left = "(-inf" if lo is None else f"{'(' if lo_open else '['}{lo:g}"
        right = "inf)" if hi is None else f"{hi:g}{')' if hi_open else ']'}"
        raise ConfigError(f"{where}={value!r}: must be in {left}, {right}")


def check_int(where: str, value: Any, lo: int = 1, *, allow_none: bool = False) -> None:
    """Raises ``ConfigError`` unless ``value`` is an integer ``>= lo`` (a bool is not one)."""
    if value is None and allow_none:
        return
    if not is_int(value) or value < lo:
        raise ConfigError(f"{where}={value!r}: must be an int >= {lo}")


def check_duration(where: str, value: Any, *, allow_none: bool = False, positive: bool = False) -> None:
    """Raises ``ConfigError`` unless ``value`` is an ``int >= 0`` (a count of steps or tokens) or
    a ``float`` in ``[0, 1]`` (a fraction); ``positive`` also rejects 0."""
    if value is None and allow_none:
        return
    if not is_real(value):
        raise ConfigError(f"{where}={value!r}: {_DURATION}")
    if is_int(value):
        if value < 0 or (positive and value == 0):
            raise ConfigError(f"{where}={value!r}: a count must be {'>= 1' if positive else '>= 0'}")
        return
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        hint = f" (e.g. {where.rsplit('.', 1)[-1]}={round(value)})" if math.isfinite(value) else ""
        raise ConfigError(
            f"{where}={value!r}: a float is a fraction and must be in [0, 1]; "
            f"write an int for a number of steps{hint}"
        )
    if positive and value == 0.0:
        raise ConfigError(f"{where}={value!r}: must be > 0")


def check_choice(where: str, value: Any, choices: Iterable[Any]) -> None:
    """Raises ``ConfigError`` unless ``value`` is one of ``choices`` (suggesting the closest name)."""
    choices = list(choices)
    if value not in choices:
        hint = did_you_mean(str(value), [str(c) for c in choices]) if isinstance(value, str) else ""
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{where}={value!r}: must be one of {allowed}{hint}")


def check_num_train_steps(num_train_steps: Any) -> int:
    """Returns ``num_train_steps`` if it is an int >= 1, else raises ``ConfigError``."""
    check_int("num_train_steps", num_train_steps)
    return num_train_steps
