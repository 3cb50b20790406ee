"""``marin-optim sweep``: every optimizer tuned the same way, then compared with tuned AdamW.

Optimizer speedups shrink once every optimizer, AdamW first, is tuned as carefully as the new
one (Wen et al., 2025, "Fantastic Pretraining Optimizers and Where to Find Them",
arXiv:2509.02046). A sweep runs, for each named optimizer, a coordinate descent over its
hyperparameters on the speedrun (:mod:`.search`, with grids from :mod:`.grids`), re-runs the best
config with several seeds, runs tuned AdamW at 1x, 2x and 4x the steps, and reports each
optimizer's final eval loss and its speedup over tuned AdamW (:mod:`.report`). Trials run here,
in local worker processes, or on Ray (:mod:`.trials`); an interrupted sweep continues from its
directory's ``trials.jsonl``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from marin_optim.errors import ConfigError
from marin_optim.speedrun import results as res
from marin_optim.speedrun.config import SpeedrunConfig
from marin_optim.sweep.grids import parse_grid_option, resolve_grids
from marin_optim.sweep.report import steps_to_reach, write_report
from marin_optim.sweep.search import DEFAULT_OUTPUT_DIR, Outcome, SweepSpec, optimizer_specs, run_search
from marin_optim.sweep.trials import LocalRunner, RayRunner, Runner, Trial, TrialStore


def make_spec(
    optimizers: Sequence[str],
    *,
    grids: Sequence[str] = (),
    fields: Sequence[str] | None = None,
    shared: dict[str, Any] | None = None,
    seeds: int = 3,
    threshold: float = 0.005,
    max_rounds: int = 3,
    lengths: Sequence[int] = (1, 2, 4),
    baseline: str | None = "adamw",
    start: str | Path | Sequence[str | Path] = (),
) -> SweepSpec:
    """A :class:`SweepSpec` from names, ``--grid`` texts, ``--fields`` and ``--start``; everything
    checked, nothing run.

    The baseline is added to the optimizers when it is not among them (the speedup needs it).
    With ``start`` (directories such as other sweeps' ``best/``), an optimizer with a ``NAME.yaml``
    in one of them starts its search from that config (the first found) instead of its defaults,
    and its default grids centre on it (:func:`~marin_optim.sweep.search.optimizer_specs`)."""
    names = list(dict.fromkeys(optimizers))
    if baseline is not None and baseline not in names:
        names.append(baseline)
    starts = [start] if isinstance(start, (str, Path)) else list(start)
    for directory in starts:
        if not Path(directory).is_dir():
            raise ConfigError(
                f"--start {directory}: not a directory (one holding NAME.yaml speedrun configs)"
            )
    configs, origins = optimizer_specs(names, shared or {}, starts)
    given = [parse_grid_option(g) for g in grids]
    resolved = resolve_grids(configs, given, fields)
    explicit = {(label, field) for label in configs for scope, field, _ in given if scope in (None, label)}
    return SweepSpec(
        optimizers=configs,
        grids=resolved,
        given=frozenset(explicit),
        seeds=seeds,
        threshold=threshold,
        max_rounds=max_rounds,
        lengths=tuple(lengths),
        baseline=baseline,
        origins=origins,
    )


def run_sweep(
    base: SpeedrunConfig,
    spec: SweepSpec,
    output_dir: str | Path = DEFAULT_OUTPUT_DIR,
    *,
    workers: int = 1,
    ray: str | None = None,
    ray_cpus: float = 1,
    ray_gpus: float = 0,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs (or continues) the sweep ``spec`` on the speedrun ``base`` in ``output_dir`` and
    writes its report; returns the per-optimizer summary (``sweep.json``'s ``results``). Trials run
    in ``workers`` local processes, or with ``ray`` (an address, ``auto`` or ``local``) as Ray
    tasks of ``ray_cpus`` CPUs and ``ray_gpus`` GPUs each."""
    root = Path(output_dir)
    res.make_dir(root, "output_dir", keep=False)  # before a runner starts (Ray): nothing is left
    runner: Runner = RayRunner(ray, ray_cpus, ray_gpus) if ray else LocalRunner(workers)
    summary: dict[str, Any] = {}

    def report(store: TrialStore, outcomes: dict[str, Outcome]) -> None:
        runner.close()  # its workers are done: the report has the CPUs
        summary.update(write_report(root, base, spec, store, outcomes, log))
        log(f"sweep: wrote {root / 'sweep.md'}, {root / 'sweep.json'}, {root / 'best'}/*.yaml and plots")

    try:
        run_search(base, spec, root, runner, log=log, force=force, report=report)
    finally:
        runner.close()
    return summary


__all__ = [
    "DEFAULT_OUTPUT_DIR",
    "LocalRunner",
    "Outcome",
    "RayRunner",
    "SweepSpec",
    "Trial",
    "TrialStore",
    "make_spec",
    "run_sweep",
    "steps_to_reach",
]
