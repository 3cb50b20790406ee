"""Which rows are timed: the memory pass, then for each optimizer its references and our rows.

Per optimizer, in this order: optax's alias (``optax bare``, ``optax clip+sched``), torch's
counterpart where there is one (``torch bare``, ``torch clip+sched``), then our variants
(:func:`configs.variants`), each compared with the references of the same kind.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import optax

from marin_optim import OptimizerConfig

from .configs import BARE, NUM_TRAIN_STEPS, common_config, config_with, optax_alias, schedule_of, variants
from .rows import Row, jax_row_setup, memory_pass_setup
from .torch_ref import TORCH_NAMES, TorchContext


def build_rows(
    names: list[str], params: Any, grads: Any, torch_ctx: TorchContext | None, bf16: bool
) -> list[Row]:
    """The memory pass, then the rows of each optimizer in ``names`` (torch ones with ``torch_ctx``,
    bfloat16-moment ones with ``bf16``)."""
    registered = OptimizerConfig.registered()
    mem = Row("(memory)", "in-place x*a+b, 3 trees", "memory", setup=lambda: None)
    mem.setup = memory_pass_setup(params, mem)
    rows = [mem]
    for name in names:
        rows.extend(_optimizer_rows(name, registered[name], params, grads, torch_ctx, bf16))
    return rows


def _optimizer_rows(
    name: str, cls: type, params: Any, grads: Any, torch_ctx: TorchContext | None, bf16: bool
) -> list[Row]:
    """The rows of optimizer ``name``, or one skipped row if it cannot be built with defaults."""
    try:
        default_cfg = cls()
        bare_cfg = config_with(cls, **BARE)
        default_cfg.build(NUM_TRAIN_STEPS)
    except Exception as e:  # needs arguments we cannot invent
        return [_skipped(name, f"cannot build with defaults: {type(e).__name__}: {e}")]
    labelled = variants(name, cls, default_cfg, bare_cfg, bf16)
    optax_rows = _optax_rows(name, default_cfg, bare_cfg, params, grads)
    torch_rows: dict[str, Row] = {}
    if torch_ctx is not None and name in TORCH_NAMES:
        torch_rows = _torch_rows(name, default_cfg, torch_ctx)
    ours: list[Row] = []
    for label, cfg in labelled:
        clip = common_config(cfg).clip_norm is not None
        row = _jax_row(
            name, label, "marin_optim", lambda cfg=cfg: cfg.build(NUM_TRAIN_STEPS), params, grads, True, clip
        )
        ref = "bare" if label.startswith("bare") else "clip+sched"
        if "bf16" not in label:
            row.compare_optax = optax_rows[ref].key if ref in optax_rows else None
            row.compare_torch = torch_rows[ref].key if ref in torch_rows else None
        ours.append(row)
    return [*optax_rows.values(), *torch_rows.values(), *ours]


def _optax_rows(
    name: str, default_cfg: OptimizerConfig, bare_cfg: OptimizerConfig, params: Any, grads: Any
) -> dict[str, Row]:
    """optax's alias of ``name`` by label: ``bare`` (the bare settings, constant LR) and
    ``clip+sched`` (the default settings and schedule after ``clip_by_global_norm``)."""
    rows: dict[str, Row] = {}
    for label, ref_cfg, clip in (("bare", bare_cfg, False), ("clip+sched", default_cfg, True)):
        try:
            alias = optax_alias(name, ref_cfg, schedule_of(ref_cfg) if clip else ref_cfg.learning_rate)
        except Exception as e:
            alias = None
            print(f"  note: no optax alias for {name}: {e}", file=sys.stderr)
        if alias is None:
            continue
        tx = optax.chain(optax.clip_by_global_norm(ref_cfg.clip_norm), alias) if clip else alias
        rows[label] = _jax_row(name, f"optax {label}", "optax", lambda tx=tx: tx, params, grads, False, clip)
    return rows


def _torch_rows(name: str, cfg: OptimizerConfig, torch_ctx: TorchContext) -> dict[str, Row]:
    """torch's counterpart of ``name`` by label: ``bare``, and ``clip+sched`` (clipped, scheduled)."""
    rows: dict[str, Row] = {}
    for label, clip_sched in (("bare", False), ("clip+sched", True)):
        row = Row(name, f"torch {label}", "torch", setup=lambda: None)
        try:
            row.setup = torch_ctx.row_setup(name, cfg, clip_sched, row)
        except Exception as e:
            row.skipped = f"torch: {type(e).__name__}: {e}"
        rows[label] = row
    return rows


def _jax_row(
    optimizer: str,
    variant: str,
    framework: str,
    make_tx: Callable[[], optax.GradientTransformation],
    params: Any,
    grads: Any,
    extra_args: bool,
    clip: bool,
) -> Row:
    """A row timing the donated JAX step of ``make_tx()`` (see :func:`rows.jax_row_setup`)."""
    row = Row(optimizer, variant, framework, setup=lambda: None)
    row.setup = jax_row_setup(make_tx, params, grads, extra_args, clip, row)
    return row


def _skipped(name: str, reason: str) -> Row:
    """A placeholder row for optimizer ``name`` that is not timed, for ``reason``."""
    row = Row(name, "-", "marin_optim", setup=lambda: None)
    row.skipped = reason
    return row
