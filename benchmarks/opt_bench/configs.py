"""Which configurations of an optimizer are timed, and optax's spelling of the same algorithm."""

from __future__ import annotations

import dataclasses
from typing import Any

import optax

from marin_optim import OptimizerConfig

NUM_TRAIN_STEPS = 10_000
"""Run length the schedules are built for (the step being timed is early in warmup/cosine)."""
BARE = dict(max_grad_norm=None, skip_nonfinite=False, lr_schedule="constant", warmup=0)
"""No clip, no guard, constant LR: the same work as a bare optax/torch optimizer."""
BF16_MOMENTS = dict(mu_dtype="bfloat16", nu_dtype="bfloat16")
"""Moments stored in bfloat16 (for configs that have ``mu_dtype`` and ``nu_dtype``)."""


def schedule_of(cfg: OptimizerConfig) -> optax.Schedule:
    """``cfg``'s learning-rate schedule over :data:`NUM_TRAIN_STEPS`."""
    return cfg.lr_scheduler(NUM_TRAIN_STEPS)


def config_with(cls: type, **overrides: Any) -> OptimizerConfig:
    """``cls()`` with ``overrides`` applied to the fields it has."""
    return _override(cls(), overrides)


def _wrapped(cfg: OptimizerConfig) -> OptimizerConfig | None:
    """A wrapper's (``cautious_wrapper``, ``sam``) base, which holds the common fields; else None."""
    base = getattr(cfg, "base", None)
    return base if isinstance(base, OptimizerConfig) else None


def common_config(cfg: OptimizerConfig) -> OptimizerConfig:
    """The config whose common fields (clip, schedule, guards) ``cfg`` builds with."""
    base = _wrapped(cfg)
    return cfg if base is None else common_config(base)


def _override(cfg: OptimizerConfig, overrides: dict[str, Any]) -> OptimizerConfig:
    """``cfg`` (or, for a wrapper, its base) with the fields of ``overrides`` it has replaced."""
    base = _wrapped(cfg)
    if base is not None:
        return dataclasses.replace(cfg, base=_override(base, overrides))
    names = {f.name for f in dataclasses.fields(cfg)}
    return dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if k in names})


def variants(
    name: str, cls: type, default_cfg: OptimizerConfig, bare_cfg: OptimizerConfig, bf16: bool
) -> list[tuple[str, OptimizerConfig]]:
    """The labelled marin_optim configurations of optimizer ``name`` that are timed.

    Always ``default`` and ``bare``; Adam/AdamW also without the skip guard; with ``bf16``,
    configs with moment dtypes also with bfloat16 moments.
    """
    out: list[tuple[str, OptimizerConfig]] = [("default", default_cfg), ("bare", bare_cfg)]
    if name in ("adam", "adamw"):
        out.insert(1, ("clip+sched, no guard", config_with(cls, skip_nonfinite=False)))
    if bf16 and {"mu_dtype", "nu_dtype"} <= {f.name for f in dataclasses.fields(cls)}:
        out.append(("default, bf16 moments", config_with(cls, **BF16_MOMENTS)))
        out.append(("bare, bf16 moments", config_with(cls, **BF16_MOMENTS, **BARE)))
    return out


def optax_alias(name: str, cfg: OptimizerConfig, lr: Any) -> optax.GradientTransformation | None:
    """optax's own spelling of the same algorithm and settings, or ``None``."""
    mask = cfg.build_weight_decay_mask()
    wd = cfg.weight_decay
    if name in ("adam", "adamw"):
        return optax.adamw(
            lr, cfg.beta1, cfg.beta2, cfg.epsilon, weight_decay=wd, mask=mask, nesterov=cfg.nesterov
        )
    if name == "adamax" and hasattr(optax, "adamaxw"):
        return optax.adamaxw(lr, cfg.beta1, cfg.beta2, cfg.epsilon, weight_decay=wd, mask=mask)
    if name == "lion":
        return optax.lion(lr, cfg.beta1, cfg.beta2, weight_decay=wd, mask=mask)
    if name == "sgd" and wd == 0:
        return optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
    # Anything else that only names a direction: the bare optax chain without our wrapping.
    if type(cfg).update_rule is OptimizerConfig.update_rule:
        return _bare_chain(cfg, lr, mask)
    return None


def _bare_chain(cfg: OptimizerConfig, lr: Any, mask: Any) -> optax.GradientTransformation | None:
    """``chain(direction, decay, scale_by_learning_rate)`` of ``cfg``, or None without a direction."""
    try:
        direction = cfg.direction()
    except NotImplementedError:
        return None
    parts = [direction]
    if cfg.uses_weight_decay:
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask))
    parts.append(optax.scale_by_learning_rate(lr))
    return optax.chain(*parts)
