"""Schedules from YAML/CLI values, built for a run, and their key steps; the weight-decay schedule."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import draccus
import jax
import jax.numpy as jnp
import optax

from marin_optim.errors import ConfigError, config_error_in, did_you_mean
from marin_optim.schedules.base import ScheduleConfig, _f32, _t
from marin_optim.schedules.context import _WD_STYLES, ScheduleContext
from marin_optim.validation import (
    check_choice,
    check_num_train_steps,
    check_range,
    where_of,
)

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

    >>> parse_schedule({"type": "wsd", "decay_style": "cosine"})
    WSDSchedule(decay_style='cosine', decay_fraction=0.2)
    >>> parse_schedule("cosin")
    Traceback (most recent call last):
    ...
    marin_optim.errors.ConfigError: lr_schedule='cosin': not a registered schedule (did you mean 'cosine' ...
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
    """The learning-rate schedule: ``step -> float32 LR``, jit-safe, checked before anything is traced.

    >>> from marin_optim import ScheduleContext, build_lr_schedule
    >>> lr = build_lr_schedule("cosine", ScheduleContext(peak_lr=1e-3, num_train_steps=100, warmup=10))
    >>> [round(float(lr(step)), 6) for step in (0, 5, 10, 55, 100)]
    [0.0, 0.0005, 0.001, 0.00055, 0.0001]
    """
    return parse_schedule(schedule).build(ctx)


@dataclass(frozen=True)
class _WeightDecayFields:
    """The optimizer fields :func:`weight_decay_schedule` reads, under their names, for checking."""

    weight_decay: float
    weight_decay_end: float | None
    weight_decay_schedule: str


def check_weight_decay(fields: Any) -> None:
    """``fields``' ``weight_decay``, ``weight_decay_end`` and ``weight_decay_schedule`` (an optimizer
    config's, at construction, or :func:`weight_decay_schedule`'s arguments) in range and
    agreeing: a constant schedule has no other end, a moving one needs its end."""
    check_range(fields, "weight_decay", 0.0)
    check_range(fields, "weight_decay_end", 0.0, allow_none=True)
    check_choice(fields, "weight_decay_schedule", _WD_STYLES)
    start, end, style = fields.weight_decay, fields.weight_decay_end, fields.weight_decay_schedule
    if style == "constant" and end is not None and end != start:
        raise ConfigError(
            f"{where_of(fields, 'weight_decay_end')}={end!r}: weight_decay_schedule='constant' keeps "
            f"weight_decay={start!r}; choose weight_decay_schedule linear or cosine to move to "
            "weight_decay_end"
        )
    if style != "constant" and end is None:
        raise ConfigError(
            f"{where_of(fields, 'weight_decay_schedule')}={style!r}: needs weight_decay_end "
            "(the value to reach at the end of the run)"
        )


def weight_decay_schedule(
    start: float, end: float | None, style: str, num_train_steps: int
) -> optax.Schedule | float:
    """Weight decay from ``start`` to ``end`` over the run (Megatron's styles).

    With ``r = min(step, N) / N``: constant ``start``; linear ``start + (end - start) * r``;
    cosine ``start + (end - start) * 0.5 * (cos(pi * (1 - r)) + 1)``. Returns the float
    ``start`` when it is constant (``inject_hyperparams`` then holds it fixed).

    >>> wd = weight_decay_schedule(0.1, 0.0, "linear", 100)
    >>> [round(float(wd(step)), 3) for step in (0, 50, 100)]
    [0.1, 0.05, 0.0]
    """
    check_weight_decay(_WeightDecayFields(start, end, style))
    check_num_train_steps(num_train_steps)
    if style == "constant":
        return float(start)
    assert end is not None  # check_weight_decay
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

    >>> from marin_optim import ScheduleContext
    >>> key_steps("wsd", ScheduleContext(peak_lr=1e-3, num_train_steps=100, warmup=10, decay=0.2))
    [(0, 'start'), (10, 'end of warmup'), (80, 'end of stable, decay starts'), (90, 'mid-decay'),
     (99, 'last step'), (100, 'past the end')]
    """
    schedule = parse_schedule(schedule)
    n = ctx.num_train_steps
    labels: dict[int, list[str]] = {}
    for step, label in [(0, "start"), *schedule.key_points(ctx), (n - 1, "last step"), (n, "past the end")]:
        if 0 <= step <= n and label not in labels.setdefault(int(step), []):
            labels[int(step)].append(label)
    return [(step, ", ".join(labels[step])) for step in sorted(labels)]


def encode_schedule(schedule: ScheduleConfig | str | Mapping[str, Any]) -> dict[str, Any]:
    """The YAML-ready mapping of a schedule, with its ``type`` (``draccus.encode(s)`` alone omits it).

    >>> encode_schedule("wsd")
    {'type': 'wsd', 'decay_style': 'linear', 'decay_fraction': 0.2}
    """
    return draccus.encode(parse_schedule(schedule), ScheduleConfig)
