"""Shared helpers of the tests that run Levanter's real ``train_lm`` (:mod:`marin_optim.levanter.offline`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from marin_optim.levanter import offline

ADAM = {
    "learning_rate": 3e-3,
    "weight_decay": 0.1,
    "warmup": 0.1,
    "min_lr_ratio": 0.1,
    "beta1": 0.9,
    "beta2": 0.95,
    "epsilon": 1e-8,
    "max_grad_norm": 1.0,
}
"""AdamW settings that mean the same thing in Levanter's ``adam`` and our ``marin_optim.adam``."""

MUON = {
    "learning_rate": 0.02,
    "adam_lr": 3e-3,
    "weight_decay": 0.0,
    "warmup": 0.1,
    "min_lr_ratio": 0.1,
    "momentum": 0.95,
    "nesterov": True,
    "backend_steps": 5,
    "beta1": 0.9,
    "beta2": 0.95,
    "epsilon": 1e-8,
    "muon_epsilon": 1e-8,
}
"""Muon settings; every other field at its default, which is Levanter's (the clip 1.0 on the AdamW
branch, float32 quintic Newton-Schulz)."""

LEVANTER_MUON = {"type": "muon", **MUON}
OUR_MUON = {"type": "marin_optim.muon", **MUON}


class Run(NamedTuple):
    metrics: dict[int, dict[str, float]]
    """``{step: {metric: value}}`` as the tracker logged them."""
    stderr: str


def train(
    tmp: Path,
    optimizer: dict[str, Any],
    *,
    ours: bool = True,
    launcher: list[str] | None = None,
    extra_args: list[str] | None = None,
    steps: int = 20,
    env: dict[str, str] | None = None,
    cache: Path | None = None,
    trainer: dict[str, Any] | None = None,
    expect_rc: int = 0,
    **config: Any,
) -> Run:
    """Runs ``train_lm`` in ``tmp``: through our launcher (with ``launcher``'s options) when ``ours``,
    else as plain Levanter; ``trainer`` updates the config's trainer section, ``extra_args`` are
    Levanter's command-line overrides."""
    cfg = offline.train_lm_config(
        tmp, optimizer=optimizer, num_train_steps=steps, compilation_cache_dir=cache, **config
    )
    cfg["trainer"].update(trainer or {})
    proc = offline.run_train_lm(cfg, extra_args or (), launcher=(launcher or []) if ours else None, env=env)
    assert proc.returncode == expect_rc, proc.stderr[-4000:]
    return Run(offline.read_metrics(tmp), proc.stderr)


def series(metrics: dict[int, dict[str, float]], name: str) -> np.ndarray:
    """``name`` at every logged step, in step order (steps without it are skipped)."""
    return np.array([row[name] for _, row in sorted(metrics.items()) if name in row], dtype=np.float64)
