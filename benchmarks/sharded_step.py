"""One optimizer update on 1, 8 and 32 simulated devices: the work and state each device holds.

For each optimizer and device count, the jitted update (gradients, state, parameters sharded as
the speedrun shards them: FSDP over ``data``) is compiled on a mesh of that many CPU devices and
XLA's analyses of the per-device program are read: GFLOP and MB accessed per device (cost
analysis), bytes moved by each kind of collective (from the compiled HLO), and optimizer-state
bytes per device (from the state's shardings). ``ideal`` is the one-device value divided by the
device count; ``x ideal`` how far from it a device is. Counts, not timings: the same on any host.

    python benchmarks/sharded_step.py     # the matrix optimizers and adamw, on 1, 8 and 32 devices
    python benchmarks/sharded_step.py --optimizers all --devices 1,8 --out results.json

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
import time
from pathlib import Path

DEFAULT_OPTIMIZERS = "muon,normuon,scion,namo,dion,soap,kron,adamw"


def measure(names: list[str], unspread: bool = False) -> list[dict]:
    """In this process (its device count): every optimizer's compiled update, analysed;
    ``unspread``: with the matrix work left where XLA puts it (every device repeats it)."""
    import marin_optim.transforms.distributed as distributed

    if unspread:
        distributed.mesh_devices = lambda: (1, ())

    import jax

    from marin_optim import OptimizerConfig
    from marin_optim.speedrun.analysis import analyse_update
    from marin_optim.speedrun.mesh import MeshConfig
    from marin_optim.speedrun.model import ModelConfig

    model = ModelConfig(hidden_dim=512, intermediate_dim=1536, num_heads=8, num_kv_heads=8, num_layers=4)
    rows = []
    if names == ["all"]:
        names = sorted(OptimizerConfig.registered())
    for name in names:
        cfg = OptimizerConfig.from_dict({"type": name})
        try:
            row = analyse_update(cfg, model, MeshConfig(data=jax.device_count(), model=1))
        except Exception as e:  # reported in the table; the other optimizers go on
            row = {
                "devices": jax.device_count(),
                "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}",
            }
        row["optimizer"] = name + (" (not spread)" if unspread else "")
        rows.append(row)
    return rows


def run(names: str, device_counts: list[int], unspread: bool) -> list[dict]:
    rows = []
    for n, off in [(n, off) for n in device_counts for off in ([False, True] if unspread else [False])]:
        env = {
            **os.environ,
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
            "JAX_PLATFORMS": "cpu",
        }
        proc = subprocess.run(
            [sys.executable, __file__, "--child", "--optimizers", names, *(["--unspread"] if off else [])],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if proc.returncode:
            sys.exit(f"sharded_step: {n} devices failed:\n{proc.stderr[-3000:]}")
        rows.extend(json.loads(proc.stdout.split("RESULT", 1)[1]))
    return rows


def table(rows: list[dict]) -> str:
    one = {r["optimizer"].split(" (")[0]: r for r in rows if r["devices"] == 1 and "error" not in r}
    lines = [
        "| optimizer | devices | GFLOP/device | ideal | x ideal | MB accessed/device unfused (fused) "
        "| state MB/device (total/N) | all-gather MB (n) | all-reduce MB (n) | all-to-all MB (n) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| `{r['optimizer']}` | {r['devices']} | failed: {r['error']} |" + " |" * 7)
            continue
        base = one.get(r["optimizer"].split(" (")[0])
        ideal = base["gflop"] / r["devices"] if base else float("nan")
        c = r["collectives"]
        lines.append(
            f"| `{r['optimizer']}` | {r['devices']} | {r['gflop']:.3f} | {ideal:.3f} | "
            f"{r['gflop'] / ideal if ideal else float('nan'):.2f} | "
            f"{r['mb_accessed_unfused']:,.0f} ({r['mb_accessed']:,.0f}) | "
            f"{r['state_bytes_per_device'] / 1e6:.2f} ({r['state_bytes'] / 1e6 / r['devices']:.2f}) | "
            + " | ".join(
                f"{c[k]['mb']:.1f} ({c[k]['count']})" for k in ("all-gather", "all-reduce", "all-to-all")
            )
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--optimizers", default=DEFAULT_OPTIMIZERS, help="comma-separated registered names, or all"
    )
    ap.add_argument("--devices", default="1,8,32", help="comma-separated simulated device counts")
    ap.add_argument("--out", default="", help="JSON output path")
    ap.add_argument(
        "--unspread", action="store_true", help="also measure with the matrix work not divided (as before)"
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT" + json.dumps(measure(args.optimizers.split(","), args.unspread)))
        return
    rows = run(args.optimizers, [int(n) for n in args.devices.split(",")], args.unspread)
    print(table(rows))
    if args.out:
        meta = {
            "date": time.strftime("%Y-%m-%d"),
            "command": "python benchmarks/sharded_step.py " + " ".join(sys.argv[1:]),
        }
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
