"""One optimizer update on 1, 8 and 32 simulated devices: the work and state each device holds.

For each optimizer and device count, the jitted update (gradients, state, parameters sharded as
the speedrun shards them: FSDP over ``data``) is compiled on a mesh of that many CPU devices and
XLA's analyses of the per-device program are read: GFLOP and MB accessed per device (cost
analysis), bytes moved by each kind of collective (from the compiled HLO), and optimizer-state
bytes per device (from the state's shardings). ``ideal`` is the one-device value divided by the
device count; ``x ideal`` how far from it a device is. Counts, not timings: the same on any host.

    python benchmarks/sharded_step.py                         # muon, normuon, scion, namo, adamw
    python benchmarks/sharded_step.py --optimizers muon --devices 1,8,32 --out results.json

The tree: the speedrun's Llama with d=512, ffn 1536, 4 scan-stacked layers (28 matrices of two
shapes), byte vocabulary. Each device count runs in its own process (XLA fixes the device count
at start).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

DEFAULT_OPTIMIZERS = "muon,normuon,scion,namo,adamw"
COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "reduce-scatter", "collective-permute")
DTYPE_BYTES = {
    "f32": 4,
    "bf16": 2,
    "f16": 2,
    "s32": 4,
    "u32": 4,
    "f64": 8,
    "s64": 8,
    "pred": 1,
    "s8": 1,
    "u8": 1,
}


def collective_bytes(hlo: str) -> dict[str, dict[str, float]]:
    """Per collective kind in ``hlo``: how many ops and the MB of their results (per device)."""
    out = {kind: {"count": 0, "mb": 0.0} for kind in COLLECTIVES}
    for line in hlo.splitlines():
        for kind in COLLECTIVES:
            if f" {kind}(" in line or f" {kind}-start(" in line:
                lhs = line.split("=", 1)[1] if "=" in line else line
                result = lhs.split(kind, 1)[0]
                size = 0
                for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", result):
                    n = 1
                    for d in filter(None, dims.split(",")):
                        n *= int(d)
                    size += n * DTYPE_BYTES.get(dtype, 4)
                out[kind]["count"] += 1
                out[kind]["mb"] += size / 1e6
                break
    return out


def measure(names: list[str], unspread: bool = False) -> list[dict]:
    """In this process (its device count): every optimizer's compiled update, analysed;
    ``unspread``: with the matrix work left where XLA puts it (every device repeats it)."""
    import haliax as hax
    import jax

    import marin_optim.transforms.distributed as distributed

    if unspread:
        distributed.mesh_devices = lambda: (1, ())

    from marin_optim import OptimizerConfig
    from marin_optim.speedrun.mesh import MeshConfig, make_mesh, sharding_tree
    from marin_optim.speedrun.model import ModelConfig, Transformer

    devices = jax.device_count()
    model = ModelConfig(hidden_dim=512, intermediate_dim=1536, num_heads=8, num_kv_heads=8, num_layers=4)
    mesh_cfg = MeshConfig(data=devices, model=1)
    mesh = make_mesh(mesh_cfg)
    mapping = mesh_cfg.parameter_mapping()
    params = jax.eval_shape(lambda k: Transformer.init(model, key=k), jax.random.PRNGKey(0))
    n_params = sum(x.size for x in jax.tree.leaves(params))
    rows = []
    for name in names:
        cfg = OptimizerConfig.from_dict({"type": name, "warmup": 0})
        tx = cfg.build(1000)
        with hax.partitioning.set_mesh(mesh):
            state = jax.eval_shape(tx.init, params)
            p_sh = sharding_tree(params, mapping, mesh)
            s_sh = sharding_tree(state, mapping, mesh)
            update = jax.jit(
                lambda g, s, p, tx=tx: tx.update(g, s, p),
                in_shardings=(p_sh, s_sh, p_sh),
                out_shardings=(p_sh, s_sh),
            )
            compiled = update.lower(params, state, params).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        state_bytes = sum(
            x.dtype.itemsize * _prod(sh.shard_shape(x.shape))
            for x, sh in zip(jax.tree.leaves(state), jax.tree.leaves(s_sh), strict=True)
        )
        total_state = sum(x.dtype.itemsize * x.size for x in jax.tree.leaves(state))
        rows.append(
            {
                "optimizer": name + (" (not spread)" if unspread else ""),
                "devices": devices,
                "params": n_params,
                "gflop": cost.get("flops", 0.0) / 1e9,
                "mb_accessed": cost.get("bytes accessed", 0.0) / 1e6,
                "state_mb_per_device": state_bytes / 1e6,
                "state_mb_total": total_state / 1e6,
                "collectives": collective_bytes(compiled.as_text()),
            }
        )
    return rows


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


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
    one = {r["optimizer"].split(" (")[0]: r for r in rows if r["devices"] == 1}
    lines = [
        "| optimizer | devices | GFLOP/device | ideal | x ideal | MB accessed/device | state MB/device "
        "(total/N) | all-gather MB (n) | all-reduce MB (n) | all-to-all MB (n) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = one.get(r["optimizer"].split(" (")[0])
        ideal = base["gflop"] / r["devices"] if base else float("nan")
        c = r["collectives"]
        lines.append(
            f"| `{r['optimizer']}` | {r['devices']} | {r['gflop']:.3f} | {ideal:.3f} | "
            f"{r['gflop'] / ideal if ideal else float('nan'):.2f} | {r['mb_accessed']:,.0f} | "
            f"{r['state_mb_per_device']:.1f} ({r['state_mb_total'] / r['devices']:.1f}) | "
            + " | ".join(
                f"{c[k]['mb']:.1f} ({c[k]['count']})" for k in ("all-gather", "all-reduce", "all-to-all")
            )
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--optimizers", default=DEFAULT_OPTIMIZERS, help="comma-separated registered names")
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
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
