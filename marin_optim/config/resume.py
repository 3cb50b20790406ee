"""Resuming an optimizer from a checkpoint: which config wins, and whether its state starts fresh.

Megatron's rules (``override_opt_param_scheduler`` / ``use_checkpoint_opt_param_scheduler``) with
OLMo-core's ``fixed_fields``; the step count always comes from the checkpoint (the trainer's job).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from marin_optim.errors import ConfigError
from marin_optim.validation import is_int, is_real

if TYPE_CHECKING:
    from marin_optim.config.base import OptimizerConfig

ResumeMode = Literal["strict", "override", "checkpoint"]


UNSET = "<unset>"
"""A field one side of :func:`config_differences` does not have."""


def config_differences(old: Any, new: Any, *, ignore: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:
    """``{"train.batch_size": (16, 32), ...}``: every field whose value differs, the one strict diff.

    ``old`` and ``new`` are configs (anything with ``to_dict()``: optimizer and speedrun configs)
    or their dictionaries; nested sections are compared field by field under dotted names
    (``lr_schedule.exponent``). ``ignore`` drops fields and whole sections (``"train.mesh"``).
    """
    a, b = _flat(old), _flat(new)
    ignore = tuple(ignore)
    out: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(a) | set(b)):
        if any(key == f or key.startswith(f + ".") for f in ignore):
            continue
        if not _same(a.get(key, UNSET), b.get(key, UNSET)):
            out[key] = (a.get(key, UNSET), b.get(key, UNSET))
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal, and an int is not the same as a float unless both are 0: a duration's int is steps
    and its float a fraction of the run (``warmup: 1`` is one step, ``warmup: 1.0`` all of them)."""
    if is_real(a) and is_real(b) and is_int(a) != is_int(b):
        return a == b == 0
    return a == b


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    data = config.to_dict() if hasattr(config, "to_dict") else config
    if not isinstance(data, Mapping):
        return {prefix.rstrip("."): data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flat(value, f"{prefix}{key}."))
    return out


def resolve_resume(
    saved: OptimizerConfig,
    current: OptimizerConfig,
    mode: ResumeMode = "strict",
    reset_optimizer_state: bool = False,
) -> tuple[OptimizerConfig, bool]:
    """Which optimizer config a resumed run uses, and whether its state must start fresh.

    Megatron's rules: ``override`` takes the current config's values; ``checkpoint`` takes the
    checkpoint's, except ``current.fixed_fields`` (OLMo-core), which are never taken from a
    checkpoint; ``strict`` (the default) requires them to be equal and otherwise fails naming
    every differing field. The step count always comes from the checkpoint (the trainer's job).
    ``reset_optimizer_state`` (the returned flag) starts the optimizer's state from scratch; the
    mode still decides its values. A different optimizer type fails unless it is set; the new
    type then takes the current config (no mode applies across types).

    >>> from marin_optim import AdamConfig
    >>> saved, now = AdamConfig(learning_rate=1e-3), AdamConfig(learning_rate=3e-3)
    >>> resolve_resume(saved, now)
    Traceback (most recent call last):
    ...
    marin_optim.errors.ConfigError: optimizer config differs from the checkpoint's in learning_rate ...
    >>> resolve_resume(saved, now, "checkpoint")[0].learning_rate
    0.001
    """
    if mode not in ("strict", "override", "checkpoint"):
        raise ConfigError(f"optimizer_resume={mode!r}: must be one of 'strict', 'override', 'checkpoint'")
    if type(saved) is not type(current):
        saved_name, current_name = saved.kind(), current.kind()
        if reset_optimizer_state:
            return current, True
        raise ConfigError(
            f"optimizer.type={current_name!r} but the checkpoint was trained with {saved_name!r}: "
            "pass reset_optimizer_state=true to start the new optimizer's state from scratch"
        )
    if mode == "override":
        return current, reset_optimizer_state
    if mode == "checkpoint":
        keep = {name: getattr(current, name) for name in current.fixed_fields}
        return dataclasses.replace(saved, **keep), reset_optimizer_state
    diffs = config_differences(saved, current)
    if diffs:
        listed = ", ".join(f"{k} (checkpoint {a!r}, config {b!r})" for k, (a, b) in sorted(diffs.items()))
        raise ConfigError(
            f"optimizer config differs from the checkpoint's in {listed}; pass optimizer_resume=override "
            "to use the config's values or optimizer_resume=checkpoint to use the checkpoint's"
        )
    return current, reset_optimizer_state
