"""Which hyperparameters a sweep tries, at which values, and the ``--grid`` option that changes them.

Defaults follow the coordinate descent of Marin's optimizer study (Wen et al., 2025, "Fantastic
Pretraining Optimizers and Where to Find Them", arXiv:2509.02046): the learning rate first, then
every other hyperparameter that matters for the optimizer, each on a short grid around its
default. A field is swept when the optimizer has it (:data:`SWEPT_FIELDS`, in this order):

* ``learning_rate``, ``adam_lr`` (the second learning rate of Muon-like optimizers),
  ``preconditioner_lr`` (Kron's step in fitting its preconditioner): the default times 1/4, 1/2,
  1, 2, 4;
* ``warmup`` (a fraction of the run): 0, 0.01, 0.05, 0.1, 0.2 (and the value's neighbours on
  its ladder when it starts elsewhere);
* ``weight_decay``: 0, half, the default, twice (0, 0.01, 0.1 when the default is 0);
* ``beta1``, ``momentum``, ``beta2``: the default and its neighbours on a ladder of common values.

A default grid *grows* while the best value sits at one of its ends (:func:`beyond`): learning
rates and weight decay by another factor of 2 (at most :data:`MAX_EXTENSIONS` times at each end
in a search), warmup and the betas by the next value of their ladder (:data:`LADDERS`), so a
default far from the optimum is still found; a grown grid stays grown, so a later round tries the
values around the best again (of a doubling grid, those within 4x of it), and grows on.

A grid given with ``--grid`` is used as written and never grows; ``--fields`` limits (and
orders) the fields swept.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError, did_you_mean
from marin_optim.validation import is_int

SWEPT_FIELDS: tuple[str, ...] = (
    "learning_rate",
    "adam_lr",
    "warmup",
    "weight_decay",
    "beta1",
    "momentum",
    "beta2",
    "preconditioner_lr",
)
"""Swept by default when the optimizer has the field, in this order."""

GROWING = frozenset({"learning_rate", "adam_lr", "preconditioner_lr"})
"""Multiplicative default grids (around the default, plotted on a log scale), growing by 2x."""

OCTAVES = 2
"""A doubling grid's reach on each side of its centre: the default grid is 1/4 to 4 times the
default (``2**OCTAVES``), and a later round tries a grown grid's values this close to the best."""

MAX_EXTENSIONS = 6
"""How many times a doubling grid may grow at each end: a factor of 64 beyond its 1/4 to 4, so
1/256 to 256 times the default. Every optimizer starts from the same default learning rate
(6e-4), while the matrix optimizers' own rates are typically 30-100x that (0.02 in Jordan's
Muon, 2024), so the reach spans those two orders of magnitude with room on either side."""

WARMUPS = (0.0, 0.01, 0.05, 0.1, 0.2)
"""The default warmup grid (fractions of the run); it grows along ``LADDERS["warmup"]``."""
_MOMENTA = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
LADDERS: dict[str, tuple[float, ...]] = {
    "warmup": (*WARMUPS, 0.3, 0.5, 0.7),
    "beta1": _MOMENTA,
    "momentum": _MOMENTA,
    "beta2": (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999),
}
"""The values a ladder field's grid grows through, in order (a default off the ladder joins it)."""


def significant(x: float, digits: int = 3) -> float:
    """``x`` rounded to ``digits`` significant digits (grid values read well and hash stably)."""
    return float(f"{x:.{digits}g}")


def _neighbours(value: float, ladder: Sequence[float]) -> tuple[float, ...]:
    points = sorted({*ladder, float(value)})
    i = points.index(float(value))
    return tuple(points[max(0, i - 1) : i + 2])


def default_grid(cfg: OptimizerConfig, field: str) -> tuple[Any, ...]:
    """The values tried for ``field`` when no ``--grid`` names it (module docstring)."""
    value = getattr(cfg, field)
    if field in GROWING:  # centred on the value itself, however many digits it has
        return tuple(value if k == 0 else significant(value * 2.0**k) for k in range(-OCTAVES, OCTAVES + 1))
    if field == "warmup":  # its neighbours too, when it starts off the default grid (--start)
        return tuple(sorted({*WARMUPS, *_neighbours(value, LADDERS["warmup"])}))
    if field == "weight_decay":
        return (0.0, significant(value / 2), value, significant(value * 2)) if value else (0.0, 0.01, 0.1)
    return _neighbours(value, LADDERS[field])


def beyond(field: str, values: Sequence[Any], end: str) -> float | None:
    """The value a default grid of ``field`` grows by past its ``end`` (``"high"`` or ``"low"``),
    or None where it does not: learning rates and weight decay double (or halve; weight decay's
    grid already reaches 0), warmup and the betas take the next value of their ladder."""
    edge = max(values) if end == "high" else min(values)
    if field in GROWING or (field == "weight_decay" and end == "high" and edge > 0):
        return significant(edge * 2.0 if end == "high" else edge / 2.0)
    if field in LADDERS:
        rungs = [v for v in LADDERS[field] if (v > edge if end == "high" else v < edge)]
        return (min(rungs) if end == "high" else max(rungs)) if rungs else None
    return None


def near(field: str, values: Sequence[Any], here: Any) -> list[Any]:
    """Of a grown grid's ``values``, those a round tries around the current best ``here``: for a
    doubling grid, those within ``2**OCTAVES`` of it (a 1% margin covers the 3-significant-digit
    rounding of both), not every value it grew through; for any other grid, all of them."""
    if field not in GROWING:
        return list(values)
    reach = 2.0**OCTAVES * 1.01
    return [v for v in values if here / reach <= v <= here * reach]


def swept_fields(cfg: OptimizerConfig) -> list[str]:
    """:data:`SWEPT_FIELDS` that ``cfg`` has and that hold a number (``adam_lr: null`` is skipped)."""
    names = {f.name for f in dataclasses.fields(cfg)}
    return [f for f in SWEPT_FIELDS if f in names and isinstance(getattr(cfg, f), (int, float))]


def _scalar(text: str) -> Any:
    """A grid value: an int or float as Python reads it (``1e-3`` too, which YAML 1.1 reads as a
    string), else YAML's reading (``true``, ``null``, a name)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def _as_written(cfg: OptimizerConfig, field: str, value: Any) -> Any:
    """A given ``0`` for a field whose default is a float is ``0.0``: the same run (0 steps of
    warmup is 0% of the run), so one spelling names one trial rather than two."""
    return 0.0 if is_int(value) and value == 0 and isinstance(getattr(cfg, field), float) else value


def parse_grid_option(text: str) -> tuple[str | None, str, tuple[Any, ...]]:
    """``"[OPTIMIZER.]FIELD=v1,v2,..."`` -> ``(optimizer or None, field, values)``."""
    key, eq, values = text.partition("=")
    if not eq or not key or not values:
        raise ConfigError(
            f"--grid {text!r}: expected FIELD=v1,v2,... or OPTIMIZER.FIELD=v1,... "
            "(e.g. --grid learning_rate=1e-3,3e-3,1e-2)"
        )
    optimizer, _, field = key.rpartition(".")
    parsed = tuple(_scalar(v.strip()) for v in values.split(",") if v.strip())
    if not parsed:
        raise ConfigError(f"--grid {text!r}: no values")
    return optimizer or None, field, parsed


def resolve_grids(
    optimizers: Mapping[str, OptimizerConfig],
    given: Sequence[tuple[str | None, str, tuple[Any, ...]]],
    fields: Sequence[str] | None = None,
) -> dict[str, dict[str, tuple[Any, ...]]]:
    """Every optimizer's grids: ``{label: {field: values}}``, fields in sweep order.

    ``given`` (from ``--grid``) replaces a default grid or adds a field; a grid for one optimizer
    (``adamw.beta2=...``) wins over one for all. ``fields`` (from ``--fields``), when given, is
    the list of fields swept, in that order, by each optimizer that has them, instead of
    :data:`SWEPT_FIELDS`. Every value is checked by building the config with it, so a value out
    of its field's range is refused here, before any trial runs."""

    def known(targets: Sequence[OptimizerConfig]) -> set[str]:
        return set().union(*({f.name for f in dataclasses.fields(c)} for c in targets))

    for optimizer, field, _ in given:
        if optimizer is not None and optimizer not in optimizers:
            raise ConfigError(
                f"--grid {optimizer}.{field}: {optimizer!r} is not one of the swept optimizers "
                f"({', '.join(optimizers)}){did_you_mean(optimizer, optimizers)}"
            )
        targets = [optimizers[optimizer]] if optimizer is not None else list(optimizers.values())
        if field not in known(targets):
            where = optimizer or "any of the swept optimizers"
            raise ConfigError(f"--grid {field}: not a field of {where}{did_you_mean(field, known(targets))}")
    everything = known(list(optimizers.values()))
    for field in fields or ():
        if field not in everything:
            raise ConfigError(
                f"--fields {field}: not a field of any of the swept optimizers"
                f"{did_you_mean(field, everything)}"
            )
    for optimizer, field, _ in given:
        if fields is not None and field not in fields:
            name = f"{optimizer}.{field}" if optimizer else field
            raise ConfigError(f"--grid {name}: {field} is not among --fields ({', '.join(fields)})")
    out: dict[str, dict[str, tuple[Any, ...]]] = {}
    for label, cfg in optimizers.items():
        names = {f.name for f in dataclasses.fields(cfg)}
        mine = {field: values for scope in (None, label) for o, field, values in given if o == scope}
        order = [f for f in fields if f in names] if fields is not None else swept_fields(cfg)
        grids: dict[str, tuple[Any, ...]] = {}
        for field in order:
            if field in mine:
                grids[field] = mine[field]
            elif field == "warmup" and is_int(cfg.warmup) and cfg.warmup != 0:
                raise ConfigError(
                    f"--fields warmup: {label}'s warmup is {cfg.warmup} steps (an int), and its default "
                    f"grid is in fractions of the run ({', '.join(map(str, WARMUPS))}); start from a "
                    f"fraction (--optimizer.warmup 0.05) or give the values with --grid {label}.warmup=..."
                )
            elif field in SWEPT_FIELDS and isinstance(getattr(cfg, field), (int, float)):
                grids[field] = default_grid(cfg, field)
            else:
                raise ConfigError(
                    f"--fields {field}: {label} has no default grid for it; give its values with "
                    f"--grid {label}.{field}=v1,v2,..."
                )
        if fields is None:
            grids.update({f: v for f, v in mine.items() if f in names})
        for field, values in grids.items():
            grids[field] = values = tuple(_as_written(cfg, field, v) for v in values)
            for value in values:
                check_value(cfg, field, value, label)
        out[label] = grids
    return out


def check_value(cfg: OptimizerConfig, field: str, value: Any, label: str) -> OptimizerConfig:
    """``cfg`` with ``field = value``, or a ConfigError naming the grid, the value and the rule."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"--grid {label}.{field}={value!r}: must be a finite number")
    try:
        return OptimizerConfig.from_dict({**cfg.to_dict(), field: value})
    except ConfigError as e:
        raise ConfigError(f"--grid {label}.{field}={value!r}: {e}") from None
