"""Process-wide CPU settings on against off: the speedrun's train step and the AdamW step.

``--compare fusion`` (default): XLA:CPU multi-output fusion (``XLA_FLAGS``, read when the backend
starts; ``marin_optim/xla.py``), with malloc's huge pages as the parent process has them.
``--compare hugepages``: glibc malloc's transparent huge pages (``GLIBC_TUNABLES``, read when the
process starts; ``marin_optim/host.py``), with multi-output fusion on in both.

Either can only be chosen per process, so each measurement runs in a fresh worker process with
the setting on or off, and the two alternate within every round (which one goes first
alternates too), so that machine noise hits both. Ratios are on / off (above 1: on is faster).

- ``train``: tokens/s of ``run_speedrun`` (default model and optimizer, ``--steps`` steps, as
  in ``benchmarks/speedrun_overhead.py``), plus the final training loss of each run (the pass
  must not change results);
- ``optimizer``: the default and the bare AdamW step on the ~50M-parameter tree of
  ``benchmarks/optimizer_step.py``, as its ratio to torch's fused AdamW and to the in-place
  memory pass measured in the same worker (step times of separate processes are not comparable:
  they swing by 1.5x with where the buffers land).

    python benchmarks/xla_cpu_fusion.py                      # 3 rounds of both
    python benchmarks/xla_cpu_fusion.py --only train --rounds 5
    python benchmarks/xla_cpu_fusion.py --compare hugepages --only train
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from marin_optim import host  # noqa: E402
from marin_optim.xla import with_multi_output_fusion  # noqa: E402


def _train_worker(steps: int) -> dict[str, float]:
    import resource
    import tempfile

    import speedrun_overhead as so

    from marin_optim.cli import parse_config
    from marin_optim.speedrun import SpeedrunConfig, run_speedrun

    cfg = parse_config(
        SpeedrunConfig,
        [
            "--train.num_train_steps", str(steps),
            "--train.eval_interval", "0",
            "--train.checkpoint_interval", "0",
            "--train.mesh.data", "1",
        ],
    )  # fmt: skip
    clock, losses = so.Clock(), []

    def log(message: str) -> None:
        if "final train loss" in message:
            losses.append(message.split("final train loss", 1)[1].split(";", 1)[0].strip())

    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with tempfile.TemporaryDirectory() as tmp:
        run_speedrun(cfg.replace(output_dir=os.path.join(tmp, "run")), hooks=[clock.mark], log=log)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    wall, window, cpu = clock.rates(cfg.train.tokens_per_step, so.SKIP, steps - 1)
    return {
        "tokens_per_s": wall,
        "best_window": window,
        "tokens_per_cpu_s": cpu,
        "final_loss": losses[-1],
        "page_faults_per_step": faults / steps,
    }


def _optimizer_worker(reps: int) -> dict[str, float]:
    import opt_bench

    with contextlib.redirect_stdout(io.StringIO()):
        out = opt_bench.main(
            ["--optimizers", "adamw", "--rounds", "2", "--reps", str(reps), "--no-bf16", "--out", "",
             "--cpu-fusion", "off"]  # off: XLA_FLAGS as the parent set them
        )  # fmt: skip
    rows = {(r["framework"], r["variant"]): r for r in out["rows"]}
    result = {}
    for variant in ("default", "bare"):
        row = rows[("marin_optim", variant)]
        result[f"{variant}_ms"] = row["ms"]
        result[f"{variant}_vs_torch"] = row["vs_torch"]
        result[f"{variant}_of_memory_pass"] = row["of_memory_pass"]
        result[f"{variant}_temp_mb"] = row.get("temp_mb")
    return result


def _run_worker(kind: str, on: bool, args: argparse.Namespace) -> dict[str, float]:
    env = dict(os.environ)
    flags = " ".join(t for t in env.get("XLA_FLAGS", "").split() if "xla_backend_extra_options" not in t)
    fusion = on if args.compare == "fusion" else True
    env["XLA_FLAGS"] = with_multi_output_fusion(flags) if fusion else flags
    if args.compare == "hugepages":
        env["GLIBC_TUNABLES"] = host.with_tunable(env.get("GLIBC_TUNABLES", ""), on=on)
    env["MARIN_OPTIM_CPU_MULTI_OUTPUT_FUSION"] = "0"  # nothing in the worker flips the setting
    env.setdefault("JAX_PLATFORMS", "cpu")
    cmd = [sys.executable, __file__, "--worker", kind, "--steps", str(args.steps), "--reps", str(args.reps)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        setting = f"{args.compare} {'on' if on else 'off'}"
        raise SystemExit(f"{kind} worker ({setting}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="train steps per speedrun worker")
    parser.add_argument("--reps", type=int, default=5, help="timed steps per optimizer row")
    parser.add_argument("--only", choices=("train", "optimizer"), default=None)
    parser.add_argument("--compare", choices=("fusion", "hugepages"), default="fusion")
    parser.add_argument("--worker", choices=("train", "optimizer"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "train":
        print(json.dumps(_train_worker(args.steps)))
        return 0
    if args.worker == "optimizer":
        print(json.dumps(_optimizer_worker(args.reps)))
        return 0

    kinds = [args.only] if args.only else ["train", "optimizer"]
    what = {"fusion": "XLA:CPU multi-output fusion", "hugepages": "malloc huge pages"}[args.compare]
    if args.compare == "hugepages" and host.thp_mode() != "madvise":
        print(f"note: transparent huge pages are {host.thp_mode()}: the tunable changes nothing here")
    print(f"{what}, on vs off; {args.rounds} rounds; load average {os.getloadavg()[0]:.1f}")
    results: dict[str, dict[bool, list[dict[str, float]]]] = {k: {True: [], False: []} for k in kinds}
    for r in range(args.rounds):
        for kind in kinds:
            for on in (True, False) if r % 2 == 0 else (False, True):
                results[kind][on].append(_run_worker(kind, on, args))
        line = []
        if "train" in results:
            on, off = results["train"][True][-1], results["train"][False][-1]
            line.append(
                f"train tokens/s on {on['tokens_per_s']:,.0f} off {off['tokens_per_s']:,.0f} "
                f"(loss {on['final_loss']} / {off['final_loss']}; page faults/step "
                f"{on['page_faults_per_step']:,.0f} / {off['page_faults_per_step']:,.0f})"
            )
        if "optimizer" in results:
            on, off = results["optimizer"][True][-1], results["optimizer"][False][-1]
            line.append(
                f"AdamW vs torch (in-process) default on {on['default_vs_torch']:.2f} "
                f"off {off['default_vs_torch']:.2f}, bare on {on['bare_vs_torch']:.2f} "
                f"off {off['bare_vs_torch']:.2f}"
            )
        print(f"round {r + 1}: " + " | ".join(line))

    def ratio(kind: str, key: str, higher_is_better: bool) -> float:
        pairs = zip(results[kind][True], results[kind][False], strict=True)
        per_round = [(a[key] / b[key]) if higher_is_better else (b[key] / a[key]) for a, b in pairs]
        return statistics.median(per_round)

    print(f"\nratio on / off, median of rounds (above 1: {what} on is faster)")
    if "train" in results:
        same = {x["final_loss"] for x in results["train"][True] + results["train"][False]}
        print(f"  speedrun train step, wall tokens/s     {ratio('train', 'tokens_per_s', True):.3f}")
        print(f"  speedrun train step, tokens per CPU-s  {ratio('train', 'tokens_per_cpu_s', True):.3f}")
        print(f"  final training losses: {sorted(same)} ({'identical' if len(same) == 1 else 'DIFFERENT'})")
        runs = results["train"]
        faults = {k: statistics.median(r["page_faults_per_step"] for r in runs[k]) for k in (True, False)}
        print(f"  page faults per train step (median): on {faults[True]:,.0f}, off {faults[False]:,.0f}")
    if "optimizer" in results:
        # Step times in separate processes swing by 1.5x (memory placement), so the optimizer is
        # compared through its in-process ratio to torch's fused AdamW under each setting.
        for variant in ("default", "bare"):
            on = statistics.median(x[f"{variant}_vs_torch"] for x in results["optimizer"][True])
            off = statistics.median(x[f"{variant}_vs_torch"] for x in results["optimizer"][False])
            mem_on = statistics.median(x[f"{variant}_of_memory_pass"] for x in results["optimizer"][True])
            mem_off = statistics.median(x[f"{variant}_of_memory_pass"] for x in results["optimizer"][False])
            print(
                f"  AdamW {variant:7s} vs torch fused AdamW: on {on:.2f}, off {off:.2f}; "
                f"of the memory pass: on {mem_on:.0%}, off {mem_off:.0%}"
            )
        on, off = results["optimizer"][True][0], results["optimizer"][False][0]
        print(
            f"  default step temporaries: on {on['default_temp_mb']:.1f} MB, "
            f"off {off['default_temp_mb']:.1f} MB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
