"""One optimizer update on 1, 8 and 32 simulated devices: the work and state each device holds.

For each optimizer and device count, the jitted update (gradients, state, parameters sharded as
the speedrun shards them: FSDP over ``data``) is compiled on a mesh of that many CPU devices and
XLA's analyses of the per-device program are read: GFLOP and MB accessed per device (cost
analysis), bytes moved by each kind of collective (from the compiled HLO), and optimizer-state
bytes per device (from the state's shardings). ``ideal`` is the one-device value divided by the
device count; ``x ideal`` how far from it a device is. Counts, not timings: the same on any host.
``--devices local`` measures on this machine's own devices instead (a GPU, a TPU host: all of
them, FSDP over all), and ``--wall K`` adds the wall time per update, mean and median of K run
there.

    python benchmarks/sharded_step.py     # the matrix optimizers and adamw, on 1, 8 and 32 devices
    python benchmarks/sharded_step.py --optimizers all --devices 1,8 --out results.json
    python benchmarks/sharded_step.py --devices local --wall 20    # on this machine's accelerators
    python benchmarks/sharded_step.py --optimizers dion,dion:qr_method=qr --devices local --wall 20

An optimizer is a registered name or, as ``marin-optim compare`` takes it, ``NAME:field=value``
with more ``field=value`` after commas (``dion:qr_method=qr,rcqr_oversample=2,soap``: two).

The tree: the speedrun's Llama with d=512, ffn 1536, 4 scan-stacked layers (28 matrices of two
shapes), byte vocabulary. Each device count runs in its own process (XLA fixes the device count
at start).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

DEFAULT_OPTIMIZERS = "muon,normuon,scion,namo,dion,soap,kron,adamw"


def measure(names: list[str], unspread: bool = False, wall: int = 0, unfused: bool = True) -> Iterator[dict]:
    """In this process (its devices): every optimizer's compiled update, analysed (and run ``wall``
    times, timed), one row at a time; ``unspread``: with the matrix work left where XLA puts it
    (every device repeats it); ``unfused=False``: without the second, unfused compile (no GFLOP
    count)."""
    import marin_optim.transforms.distributed as distributed

    if unspread:
        distributed.mesh_devices = lambda: (1, ())

    import jax

    from marin_optim import OptimizerConfig
    from marin_optim.speedrun.analysis import analyse_update
    from marin_optim.speedrun.compare import parse_optimizer_spec
    from marin_optim.speedrun.mesh import MeshConfig
    from marin_optim.speedrun.model import ModelConfig

    model = ModelConfig(hidden_dim=512, intermediate_dim=1536, num_heads=8, num_kv_heads=8, num_layers=4)
    if names == ["all"]:
        names = sorted(OptimizerConfig.registered())
    for name in names:
        start = time.perf_counter()
        cfg = parse_optimizer_spec(name)[1]
        mesh = MeshConfig(data=jax.device_count(), model=1)
        try:
            try:
                row = analyse_update(cfg, model, mesh, wall_steps=wall, flops=unfused)
            except Exception as e:  # the unfused compile is the one a backend may refuse
                row = analyse_update(cfg, model, mesh, wall_steps=wall, flops=False)
                row["unfused_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        except Exception as e:  # reported in the table; the other optimizers go on
            row = {
                "devices": jax.device_count(),
                "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}",
            }
        row["optimizer"] = name + (" (not spread)" if unspread else "")
        row["seconds"] = time.perf_counter() - start  # compiles included
        yield row


def optimizer_specs(text: str) -> list[str]:
    """``--optimizers`` split into specs: ``"dion,dion:qr_method=qr,rcqr_oversample=2,soap"`` ->
    ``["dion", "dion:qr_method=qr,rcqr_oversample=2", "soap"]`` (an item with ``=`` and no ``:``
    continues the spec before it)."""
    specs: list[str] = []
    for item in text.split(","):
        if "=" in item and ":" not in item and specs:
            specs[-1] += "," + item
        else:
            specs.append(item)
    return specs


def run(
    names: str, device_counts: list[str], unspread: bool, wall: int, unfused: bool, out: str = ""
) -> list[dict]:
    """Each device count in its own process; rows as they come (``out`` rewritten after each, so
    a run cut short keeps what it measured)."""
    rows: list[dict] = []
    for n, off in [(n, off) for n in device_counts for off in ([False, True] if unspread else [False])]:
        env = dict(os.environ)
        if n != "local":  # that many simulated CPU devices
            env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={int(n)}", JAX_PLATFORMS="cpu")
        errors = tempfile.TemporaryFile("w+")  # a pipe could fill and stop the child
        proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child",
                "--optimizers",
                names,
                "--wall",
                str(wall),
                *(["--unspread"] if off else []),
                *([] if unfused else ["--fused_only"]),
            ],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("ROW "):
                rows.append(json.loads(line[4:]))
                r = rows[-1]
                print(
                    f"{r['optimizer']} on {r['devices']}: {r['seconds']:.0f} s", file=sys.stderr, flush=True
                )
                if out:
                    write(out, rows)
        if proc.wait():
            errors.seek(0)
            sys.exit(f"sharded_step: {n} devices failed:\n{errors.read()[-3000:]}")
        errors.close()
    return rows


def write(path: str, rows: list[dict]) -> None:
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/sharded_step.py " + " ".join(sys.argv[1:]),
    }
    Path(path).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


def table(rows: list[dict]) -> str:
    one = {r["optimizer"].split(" (")[0]: r for r in rows if r["devices"] == 1 and "error" not in r}
    timed = any("wall_ms" in r for r in rows)
    lines = [
        "| optimizer | devices | GFLOP/device | ideal | x ideal | MB accessed/device unfused (fused) "
        "| state MB/device (total/N) | all-gather MB (n) | all-reduce MB (n) | all-to-all MB (n) |"
        + (" wall ms/step mean (median) |" if timed else ""),
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if timed else ""),
    ]
    for r in rows:
        devices = f"{r['devices']}" + (f" {r['platform']}" if r.get("platform", "cpu") != "cpu" else "")
        if "error" in r:
            lines.append(f"| `{r['optimizer']}` | {devices} | failed: {r['error']} |" + " |" * (7 + timed))
            continue
        base = one.get(r["optimizer"].split(" (")[0])
        c = r["collectives"]
        if r["gflop"] is None:  # no unfused compile: the fused program's bytes alone
            work = f"— | — | — | — ({r['mb_accessed']:,.0f}) | "
        else:
            ideal = base["gflop"] / r["devices"] if base and base["gflop"] else float("nan")
            work = (
                f"{r['gflop']:.3f} | {ideal:.3f} | {r['gflop'] / ideal:.2f} | "
                f"{r['mb_accessed_unfused']:,.0f} ({r['mb_accessed']:,.0f}) | "
            )
        lines.append(
            f"| `{r['optimizer']}` | {devices} | {work}"
            f"{r['state_bytes_per_device'] / 1e6:.2f} ({r['state_bytes'] / 1e6 / r['devices']:.2f}) | "
            + " | ".join(
                f"{c[k]['mb']:.1f} ({c[k]['count']})" for k in ("all-gather", "all-reduce", "all-to-all")
            )
            + " |"
            + (f" {r['wall_ms']:.2f} ({r['wall_ms_median']:.2f}) |" if "wall_ms" in r else " |" * timed)
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--optimizers",
        default=DEFAULT_OPTIMIZERS,
        help="comma-separated registered names (or NAME:field=value,... specs), or all",
    )
    ap.add_argument(
        "--devices",
        default="1,8,32",
        help="comma-separated simulated CPU device counts; 'local': this machine's own devices",
    )
    ap.add_argument(
        "--wall", type=int, default=0, help="also time this many updates (ms per step, mean and median)"
    )
    ap.add_argument("--out", default="", help="JSON output path")
    ap.add_argument(
        "--unspread", action="store_true", help="also measure with the matrix work not divided (as before)"
    )
    ap.add_argument(
        "--fused_only", action="store_true", help="skip the unfused compile (no GFLOP, no unfused MB)"
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        from marin_optim.sweep.trials import stop_with

        stop_with(os.getppid())  # a benchmark killed mid-run takes its child with it
        for row in measure(optimizer_specs(args.optimizers), args.unspread, args.wall, not args.fused_only):
            print("ROW " + json.dumps(row), flush=True)
        return
    if args.optimizers != "all":
        from marin_optim.errors import ConfigError
        from marin_optim.speedrun.compare import parse_optimizer_spec

        for spec in optimizer_specs(args.optimizers):
            try:
                parse_optimizer_spec(spec)
            except ConfigError as e:
                ap.error(f"--optimizers: {e}")
    counts = args.devices.split(",")
    for n in counts:
        if n != "local" and not (n.isdigit() and int(n) > 0):
            ap.error(f"--devices: {n!r} is neither a positive device count nor 'local'")
    rows = run(args.optimizers, counts, args.unspread, args.wall, not args.fused_only, args.out)
    print(table(rows))


if __name__ == "__main__":
    main()
