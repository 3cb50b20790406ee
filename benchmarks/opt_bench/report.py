"""The report: rows summarized (bandwidth, ratios), the headline, the table and the JSON result."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import optax

from marin_optim import host

from .rows import Row
from .torch_ref import torch_version
from .trees import ModelShape

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
"""``benchmarks/results``: where the JSON goes by default (and other benchmarks' results are)."""
NOMINAL_BANDWIDTH_GBPS = {"H200": 4800.0, "H100 PCIe": 2000.0, "H100": 3350.0, "A100": 2039.0, "L4": 300.0}
"""Datasheet HBM bandwidth by device-kind substring (GPU rows are also shown against it)."""


@dataclass(frozen=True)
class RunInfo:
    """What was run, on what: the header line and the ``meta`` of the JSON result."""

    command: str
    device: Any  # the JAX device
    cores: int
    cpu_fusion: bool
    shape: ModelShape
    layout: str
    n_params: int
    n_leaves: int
    rounds: int
    reps: int

    @property
    def platform(self) -> str:
        return self.device.platform


def describe(info: RunInfo) -> str:
    """The line printed before the run: device, tree, rounds (and the CPU settings on CPU)."""
    shape = info.shape
    cpu = (
        f"; XLA:CPU multi-output fusion {'on' if info.cpu_fusion else 'off'}; "
        f"malloc huge pages {'on' if host.malloc_hugepages() else 'off'}"
        if info.platform == "cpu"
        else ""
    )
    return (
        f"device: {info.device.device_kind} ({info.platform}), {info.cores} cores visible; "
        f"tree: {info.n_params / 1e6:.1f}M params, {info.n_leaves} leaves "
        f"(d={shape.hidden}, ffn={shape.intermediate}, layers={shape.layers}, vocab={shape.vocab}"
        f", layout {info.layout}); rounds={info.rounds} reps={info.reps}" + cpu
    )


def report(rows: list[Row], info: RunInfo, out: str | None) -> dict[str, Any]:
    """Prints the table and the headline, writes the JSON result to ``out`` (None: a new file in
    :data:`RESULTS_DIR`; ``''``: nowhere) and returns it."""
    nominal = nominal_bandwidth(info.device) if info.platform != "cpu" else None
    summary = summarize(rows, info.n_params, nominal)
    heads = headline(summary)
    print(format_table(summary))
    print(
        f"\nin-place memory pass: {summary['memory_pass_gbps']:.1f} GB/s"
        if summary["memory_pass_gbps"]
        else ""
    )
    if nominal:
        print(f"nominal {info.device.device_kind} bandwidth: {nominal:.0f} GB/s")
    print(
        "headline (AdamW):",
        json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in heads.items()}),
    )
    ns = newton_schulz_result()
    if ns:
        print(f"Newton-Schulz (from {ns['file']}): see JSON")
    result = {"meta": _meta(info, nominal), "headline": heads, "newton_schulz": ns, **summary}
    if out != "":
        _write(result, Path(out) if out else _default_out(info.platform))
    return result


# -- summary -----------------------------------------------------------------------------------


def summarize(rows: list[Row], n_params: int, nominal_gbps: float | None) -> dict[str, Any]:
    """Every row as a dict, and the memory pass's (``rows[0]``) bandwidth in GB/s."""
    by_key = {r.key: r for r in rows}
    mem = rows[0]
    mem_gbps = mem.bytes_per_param * n_params / mem.best / 1e9 if mem.best else None
    out_rows = [_row_summary(row, by_key, n_params, mem_gbps, nominal_gbps) for row in rows]
    return {"memory_pass_gbps": mem_gbps, "rows": out_rows}


def _row_summary(
    row: Row, by_key: dict[str, Row], n_params: int, mem_gbps: float | None, nominal_gbps: float | None
) -> dict[str, Any]:
    """One row: its traffic, state and compiled memory; if timed, its time, bandwidth and ratios."""
    d: dict[str, Any] = {
        "optimizer": row.optimizer,
        "variant": row.variant,
        "framework": row.framework,
        "skipped": row.skipped,
        "note": row.note,
    }
    if row.state_bytes_per_param is not None:
        d.update(
            bytes_per_param=row.bytes_per_param,
            state_bytes_per_param=row.state_bytes_per_param,
            **row.memory,
        )
    if row.best is not None:
        gbps = row.bytes_per_param * n_params / row.best / 1e9
        d.update(
            ms=row.best * 1e3,
            spread=row.spread,
            gbps=gbps,
            of_memory_pass=gbps / mem_gbps if mem_gbps else None,
            of_nominal=gbps / nominal_gbps if nominal_gbps else None,
        )
        for what, ref_key in (("optax", row.compare_optax), ("torch", row.compare_torch)):
            ref = by_key.get(ref_key) if ref_key else None
            if ref is not None and ref.best is not None:
                d[f"vs_{what}"] = ref.best / row.best  # > 1: we are faster
                d[f"vs_{what}_row"] = ref.variant
    return d


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers the performance targets are about (AdamW)."""
    rows = {(r["optimizer"], r["variant"], r["framework"]): r for r in summary["rows"]}
    name = "adamw" if ("adamw", "default", "marin_optim") in rows else "adam"

    def get(variant: str, key: str) -> Any:
        return rows.get((name, variant, "marin_optim"), {}).get(key)

    return {
        "optimizer": name,
        "vs_torch_clip_sched": get("default", "vs_torch"),
        "vs_torch_clip_sched_no_guard": get("clip+sched, no guard", "vs_torch"),
        "vs_torch_bare": get("bare", "vs_torch"),
        "of_memory_pass_bare": get("bare", "of_memory_pass"),
        "of_memory_pass_default": get("default", "of_memory_pass"),
        "optax_overhead_bare": _overhead(get("bare", "vs_optax")),
        "vs_optax_clip_sched": get("default", "vs_optax"),
    }


def _overhead(ratio: float | None) -> float | None:
    """Our extra time over the reference's, from the reference's time over ours."""
    return None if ratio is None else 1.0 / ratio - 1.0


# -- the table ---------------------------------------------------------------------------------

COLUMNS = (
    ("optimizer", "{}", 10),
    ("variant", "{}", 22),
    ("framework", "{}", 11),
    ("ms", "{:.2f}", 9),
    ("spread", "{:+.0%}", 7),
    ("bytes_per_param", "{:.1f}", 6),
    ("gbps", "{:.1f}", 7),
    ("of_memory_pass", "{:.0%}", 6),
    ("vs_optax", "{:.2f}x", 8),
    ("vs_torch", "{:.2f}x", 8),
    ("state_bytes_per_param", "{:.1f}", 6),
    ("peak_mb", "{:.0f}", 8),
    ("temp_mb", "{:.1f}", 7),
    ("big_copies", "{}", 6),
)
"""The table's columns: summary key, format, width (the first three left-aligned)."""
HEADS = {
    "bytes_per_param": "B/par",
    "gbps": "GB/s",
    "of_memory_pass": "%mem",
    "state_bytes_per_param": "stB/p",
    "peak_mb": "peak MB",
    "temp_mb": "tempMB",
    "big_copies": "copies",
}
"""Column headings that are not the summary key."""


def format_table(summary: dict[str, Any]) -> str:
    """The rows of ``summary`` as a fixed-width table, one line each (skipped rows say why)."""
    lines = [
        "  ".join(
            f"{HEADS.get(c, c):>{w}}" if i > 2 else f"{HEADS.get(c, c):<{w}}"
            for i, (c, _, w) in enumerate(COLUMNS)
        )
    ]
    lines.extend(_format_row(r) for r in summary["rows"])
    return "\n".join(lines)


def _format_row(r: dict[str, Any]) -> str:
    """One summary row as a table line."""
    if r.get("skipped"):
        return f"{r['optimizer']:<10}  {r['variant']:<22}  {r['framework']:<11}  skipped: {r['skipped']}"
    cells = []
    for i, (c, fmt, w) in enumerate(COLUMNS):
        v = r.get(c)
        s = "-" if v is None else fmt.format(v)
        cells.append(f"{s:<{w}}" if i <= 2 else f"{s:>{w}}")
    return "  ".join(cells)


# -- the JSON result ---------------------------------------------------------------------------


def nominal_bandwidth(device: Any) -> float | None:
    """The datasheet bandwidth of ``device`` (GB/s), if its kind is in the table."""
    kind = getattr(device, "device_kind", "")
    for key, gbps in NOMINAL_BANDWIDTH_GBPS.items():
        if key.lower() in kind.lower():
            return gbps
    return None


def newton_schulz_result() -> dict[str, Any] | None:
    """The latest JSON written by benchmarks/newton_schulz.py, if any (another benchmark's)."""
    files = sorted(RESULTS_DIR.glob("newton_schulz*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    try:
        return {"file": str(files[-1]), "data": json.loads(files[-1].read_text())}
    except Exception:
        return None


def _meta(info: RunInfo, nominal: float | None) -> dict[str, Any]:
    """The JSON result's ``meta``: when, what, on which machine and software."""
    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": info.command,
        "device": info.device.device_kind,
        "platform": info.platform,
        "cores": info.cores,
        "xla_cpu_multi_output_fusion": info.platform == "cpu" and info.cpu_fusion,
        "malloc_hugepages": host.malloc_hugepages(),
        "host": platform.node(),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "torch": torch_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "n_params": info.n_params,
        "n_leaves": info.n_leaves,
        "shape": dataclasses.asdict(info.shape),
        "layout": info.layout,
        "rounds": info.rounds,
        "reps": info.reps,
        "nominal_bandwidth_gbps": nominal,
    }


def _default_out(platform_name: str) -> Path:
    """``benchmarks/results/optimizer_step-<platform>-<local time>.json``."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return RESULTS_DIR / f"optimizer_step-{platform_name}-{stamp}.json"


def _write(result: dict[str, Any], out: Path) -> None:
    """Writes ``result`` as JSON to ``out`` (creating its folder) and says where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out}")
