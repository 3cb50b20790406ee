"""The same speedrun for several optimizers: one table and one plot with every loss curve.

``marin-optim compare adamw lion sgd:learning_rate=0.1`` runs the speedrun once per optimizer
(each in ``<output_dir>/<label>``; with ``--resume true`` unfinished runs continue and finished
ones are reused), then writes ``compare.md``, ``compare.json`` and ``compare.png`` into
``output_dir``.

"Steps to target" is the first step at which the smoothed training loss (bias-corrected EMA,
alpha 0.1) reaches the target; the default target is the highest of the runs' best smoothed
losses, i.e. the lowest loss that every run reached.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marin_optim.config import OptimizerConfig
from marin_optim.config.base import apply_dotted
from marin_optim.errors import ConfigError, did_you_mean, yaml_value
from marin_optim.speedrun import results as res
from marin_optim.speedrun.config import SpeedrunConfig
from marin_optim.speedrun.plots import Curve, plot_curves, smooth

DEFAULT_OUTPUT_DIR = "runs/compare"


@dataclass(frozen=True)
class CompareRow:
    label: str
    optimizer: str
    eval_loss: float
    eval_bpb: float
    steps_to_target: int | None
    training_time: float
    wall_time: float
    tokens_per_second: float | None
    run_dir: str
    stopped: str | None = None
    """Why the run stopped early (its non-finite guard), or None if it finished."""


@dataclass(frozen=True)
class CompareResult:
    rows: list[CompareRow]
    target_loss: float
    table: str
    output_dir: Path


def _top_level_items(text: str) -> list[str]:
    """``text`` split at the commas outside brackets: ``"a=1,s={type: wsd, decay: 0.2}"`` -> 2 items."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return items


def parse_optimizer_spec(spec: str, shared: dict[str, Any] | None = None) -> tuple[str, OptimizerConfig]:
    """``"lion"`` or ``"lion:learning_rate=3e-4,beta2=0.98"`` -> (label, config).

    A value is YAML and may hold commas inside brackets: ``"lion:lr_schedule={type: wsd, decay: 0.2}"``.
    ``shared`` (the command line's ``--optimizer.FIELD``) applies to every spec, under the spec's own
    fields; a dotted key sets a field of a nested config (``lr_schedule.decay_fraction``).
    """
    name, _, rest = spec.partition(":")
    if not name:
        raise ConfigError(f"compare: {spec!r}: expected NAME or NAME:field=value,...")
    fields = apply_dotted({}, shared or {})
    if rest:
        for item in _top_level_items(rest):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key:
                raise ConfigError(f"compare: {spec!r}: {item!r} is not field=value")
            fields = apply_dotted(fields, {key: yaml_value(f"compare: {spec!r}: {key}", value)})
    cls = OptimizerConfig.get_choice_class(name)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in fields:
        if key not in known:
            raise ConfigError(f"compare: {spec!r}: {name} has no field {key!r}{did_you_mean(key, known)}")
    config = OptimizerConfig.from_dict({"type": name, **fields})
    label = re.sub(r"[^A-Za-z0-9_.=-]+", "_", spec.replace(":", "-").replace(",", "-"))
    return label, config


def steps_to_target(curve: Curve, target: float) -> int | None:
    if not curve.train_loss:
        return None
    smoothed = smooth(curve.train_loss)
    for step, value in zip(curve.train_steps, smoothed, strict=True):
        if value <= target:
            return step
    return None


def run_compare(
    base: SpeedrunConfig,
    optimizers: Sequence[tuple[str, OptimizerConfig]],
    output_dir: str | Path = DEFAULT_OUTPUT_DIR,
    target_loss: float | None = None,
    log: Any = print,
) -> CompareResult:
    """Runs ``base`` once per ``(label, optimizer)`` and writes the table and the plot."""
    from marin_optim.speedrun.trainer import prepare, run_speedrun
    from marin_optim.transforms.guards import NonFiniteError

    if not optimizers:
        raise ConfigError("compare: name at least one optimizer, e.g. `marin-optim compare adamw lion`")
    labels = [label for label, _ in optimizers]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"compare: optimizer labels must differ, got {labels}")
    root = Path(output_dir)
    configs = [
        (label, base.replace(optimizer=opt, output_dir=str(root / label))) for label, opt in optimizers
    ]
    for _, cfg in configs:  # every run's bad input (an unfinished run in its way too) before any trains
        prepare(cfg)
    infos, curves, stopped = {}, {}, {}
    for label, cfg in configs:
        log(f"\n=== compare: {label} ===")
        try:
            result = run_speedrun(cfg)
        except NonFiniteError as e:  # one optimizer diverging does not end the comparison
            log(f"compare: {label} stopped: {e}")
            stopped[label] = (cfg.optimizer_name, str(e).split(";")[0])
            curves[label] = Curve.from_rows(res.read_metrics(Path(cfg.run_dir) / res.PARTIAL_METRICS))
            continue
        infos[label] = result.run_info
        curves[label] = Curve.from_rows(res.read_metrics(result.run_dir / res.METRICS))

    if target_loss is None:
        finished = [curves[label] for label in infos if curves[label].train_loss]
        target_loss = max((float(min(smooth(c.train_loss))) for c in finished), default=math.nan)
    rows = _rows(infos, stopped, curves, target_loss, root)
    table = format_table(rows, target_loss, base.train.num_train_steps)
    floor = next(iter(infos.values()), {}).get("loss_floor")
    plot_curves(
        root / "compare.png",
        curves,
        title=f"{', '.join(labels)} on {base.model.name} ({base.train.num_train_steps} steps)",
        loss_floor=floor,
    )
    res.write_atomic(root / "compare.md", table + "\n")
    res.write_atomic(
        root / "compare.json",
        res.dumps({"target_loss": target_loss, "rows": [dataclasses.asdict(r) for r in rows]}) + "\n",
    )
    log("\n" + table)
    log(f"\nwrote {root / 'compare.md'}, {root / 'compare.json'}, {root / 'compare.png'}")
    return CompareResult(rows=rows, target_loss=target_loss, table=table, output_dir=root)


def _rows(
    infos: dict[str, dict[str, Any]],
    stopped: dict[str, tuple[str, str]],
    curves: dict[str, Curve],
    target_loss: float,
    root: Path,
) -> list[CompareRow]:
    """One row per finished optimizer, then one per optimizer its guard stopped."""
    rows = [
        CompareRow(
            label=label,
            optimizer=info["optimizer"],
            eval_loss=info["eval_loss"],
            eval_bpb=info["eval_bpb"],
            steps_to_target=steps_to_target(curves[label], target_loss),
            training_time=info["training_time"],
            wall_time=info["wall_time"],
            tokens_per_second=info["tokens_per_second"],
            run_dir=str(root / label),
        )
        for label, info in infos.items()
    ]
    return rows + [
        CompareRow(
            label=label,
            optimizer=name,
            eval_loss=math.nan,
            eval_bpb=math.nan,
            steps_to_target=None,
            training_time=math.nan,
            wall_time=math.nan,
            tokens_per_second=None,
            run_dir=str(root / label),
            stopped=reason,
        )
        for label, (name, reason) in stopped.items()
    ]


def format_table(rows: Sequence[CompareRow], target: float, num_steps: int) -> str:
    """A Markdown table, best final eval loss first."""
    header = (
        f"| optimizer | final eval loss | eval bpb | steps to train loss {target:.3f} | "
        "train time (s) | wall time (s) | tokens/s |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (math.isnan(r.eval_loss), r.eval_loss)):
        if r.stopped is not None:
            lines.append(f"| {r.label} | stopped: {r.stopped} | - | - | - | - | - |")
            continue
        reached = f"{r.steps_to_target}" if r.steps_to_target is not None else f"not in {num_steps}"
        tps = f"{r.tokens_per_second:,.0f}" if r.tokens_per_second else "-"
        lines.append(
            f"| {r.label} | {r.eval_loss:.4f} | {r.eval_bpb:.3f} | {reached} | "
            f"{r.training_time:.1f} | {r.wall_time:.1f} | {tps} |"
        )
    return "\n".join(lines)
