"""The one check API: every config field is validated by these, at construction, before compiling.

Each check reads ``owner.name`` (or ``owner.name[item]`` for one element of a list field) and
raises :class:`~marin_optim.errors.ConfigError` naming the field as the user wrote it, the value
and what is allowed (``adam.beta2=1.5: must be in [0, 1)``). The field's name comes from the
owner's ``_where(name)`` when it has one (optimizer configs: ``adam.beta2``; schedules:
``lr_schedule.exponent (type cosine)``), else it is the bare name.

>>> from dataclasses import dataclass
>>> @dataclass
... class Opt:
...     beta2: float = 1.5
>>> check_range(Opt(), "beta2", 0.0, 1.0, hi_open=True)
Traceback (most recent call last):
...
marin_optim.errors.ConfigError: beta2=1.5: must be in [0, 1)
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np

from marin_optim.errors import ConfigError, did_you_mean

Duration = int | float
"""An ``int`` is a count of steps (or tokens, with ``schedule_units: tokens``); a ``float`` in
``[0, 1]`` is a fraction of the run (or of the cycle)."""

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


def where_of(owner: Any, name: str, item: int | None = None) -> str:
    """The field as the user wrote it: ``owner._where(name)`` if the owner says, else ``name``."""
    where = getattr(owner, "_where", None)
    text = where(name) if callable(where) else name
    return text if item is None else f"{text}[{item}]"


def _value(owner: Any, name: str, item: int | None) -> Any:
    value = getattr(owner, name)
    return value if item is None else value[item]


def check_range(
    owner: Any,
    name: str,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    allow_none: bool = False,
    item: int | None = None,
) -> None:
    """``owner.name`` is a finite number with ``lo <= value <= hi`` (strict where ``*_open``; no
    bound where ``None``)."""
    value = _value(owner, name, item)
    if value is None and allow_none:
        return
    where = where_of(owner, name, item)
    if not is_finite_real(value):
        raise ConfigError(f"{where}={value!r}: expected a finite number")
    lo_ok = lo is None or (value > lo if lo_open else value >= lo)
    hi_ok = hi is None or (value < hi if hi_open else value <= hi)
    if not (lo_ok and hi_ok):
        left = "(-inf" if lo is None else f"{'(' if lo_open else '['}{lo:g}"
        right = "inf)" if hi is None else f"{hi:g}{')' if hi_open else ']'}"
        raise ConfigError(f"{where}={value!r}: must be in {left}, {right}")


def check_positive(owner: Any, name: str, *, allow_none: bool = False, item: int | None = None) -> None:
    """``owner.name > 0``."""
    check_range(owner, name, 0.0, None, lo_open=True, allow_none=allow_none, item=item)


def check_int(
    owner: Any, name: str, lo: int = 1, *, allow_none: bool = False, item: int | None = None
) -> None:
    """``owner.name`` is an integer ``>= lo`` (a bool is not one)."""
    value = _value(owner, name, item)
    if value is None and allow_none:
        return
    if not is_int(value) or value < lo:
        raise ConfigError(f"{where_of(owner, name, item)}={value!r}: must be an int >= {lo}")


def check_duration(
    owner: Any, name: str, *, allow_none: bool = False, positive: bool = False, item: int | None = None
) -> None:
    """``owner.name`` is an ``int >= 0`` (a count of steps or tokens) or a ``float`` in ``[0, 1]``
    (a fraction); ``positive`` also rejects 0."""
    value = _value(owner, name, item)
    if value is None and allow_none:
        return
    where = where_of(owner, name, item)
    if not is_real(value):
        raise ConfigError(f"{where}={value!r}: {_DURATION}")
    if is_int(value):
        if value < 0 or (positive and value == 0):
            raise ConfigError(f"{where}={value!r}: a count must be {'>= 1' if positive else '>= 0'}")
        return
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        hint = f" (e.g. {name}={round(value)})" if math.isfinite(value) else ""
        raise ConfigError(
            f"{where}={value!r}: a float is a fraction and must be in [0, 1]; "
            f"write an int for a number of steps{hint}"
        )
    if positive and value == 0.0:
        raise ConfigError(f"{where}={value!r}: must be > 0")


def check_choice(owner: Any, name: str, choices: Iterable[Any]) -> None:
    """``owner.name`` is one of ``choices`` (suggesting the closest name)."""
    value = getattr(owner, name)
    choices = list(choices)
    if value not in choices:
        hint = did_you_mean(str(value), [str(c) for c in choices]) if isinstance(value, str) else ""
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{where_of(owner, name)}={value!r}: must be one of {allowed}{hint}")


def check_num_train_steps(num_train_steps: Any) -> int:
    """Returns ``num_train_steps`` if it is an int >= 1, else raises ``ConfigError``."""
    if not is_int(num_train_steps) or num_train_steps < 1:
        raise ConfigError(f"num_train_steps={num_train_steps!r}: must be an int >= 1")
    return num_train_steps


# -- types from annotations -------------------------------------------------------------------


def check_types(owner: Any) -> None:
    """Every dataclass field of ``owner`` holds a value of its annotated type (and floats are finite).

    draccus already types YAML and command-line input; this catches Python callers
    (``AdamConfig(beta2="0.9")``). Annotations that cannot be resolved (a user's module) are skipped.
    """
    try:
        hints = typing.get_type_hints(type(owner))
    except Exception:  # unresolvable annotations in a user's module: nothing to check against
        return
    for f in dataclasses.fields(owner):
        if f.name not in hints:
            continue
        value = getattr(owner, f.name)
        if not matches(value, hints[f.name]):
            raise ConfigError(f"{where_of(owner, f.name)}={value!r}: expected {type_name(hints[f.name])}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where_of(owner, f.name)}={value!r}: must be finite")


def matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` is an instance of the annotation ``tp`` (unions, Literal, lists, dicts)."""
    origin = typing.get_origin(tp)
    if tp is Any or isinstance(tp, typing.TypeVar):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in typing.get_args(tp))
    if origin is Literal:
        return value in typing.get_args(tp)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(args) == len(value) and all(matches(v, a) for v, a in zip(value, args, strict=True))
        return not args or all(matches(v, args[0]) for v in value)
    if origin in (dict, Mapping) or tp is dict:
        return isinstance(value, Mapping)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def type_name(tp: Any) -> str:
    """An annotation as a user reads it: ``float | None``, ``one of 'steps', 'tokens'``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))
