"""Levanter's ``adam`` against ours (``marin_optim.adam``), side by side in one run.

1. **One update**: one jitted, donated ``update`` + ``apply_updates`` of each on the same
   parameters of a Levanter Llama (~63M parameters by default: hidden 512, 8 layers, vocabulary
   32,000, untied head; haliax arrays, as Levanter's trainer holds them), with the same settings
   (clip 1.0, warmup then cosine, weight decay 0.1 with Levanter's default mask, beta2 0.95). The
   two steps alternate in a fresh random order every repetition, over several rounds; each
   side's time is its best step, and the ratio Levanter / ours is printed (above 1: ours is
   faster). XLA's memory analysis of both compiled steps is printed too (temporary bytes: a
   parameter-sized temporary is the clip's ``select``). Then 5 updates of each from the same
   parameters and gradients: the relative difference of the parameter changes.
2. **Training**: the same short ``train_lm`` run (Levanter's own trainer, a small Llama on the
   Python standard library's bytes, :mod:`marin_optim.levanter.offline`) with each optimizer,
   alternating, ``--train-rounds`` times; tokens per second (median over steps 5 on) and the
   ratio ours / Levanter's.

Both run as Levanter runs: XLA's default flags (no multi-output fusion, no huge pages).

Usage::

    python benchmarks/levanter_step.py                       # ~63M-parameter update + 2 training rounds
    python benchmarks/levanter_step.py --quick               # a small tree, one training round
    python benchmarks/levanter_step.py --train-rounds 0 --rounds 5

Needs the ``levanter`` extra. Results also go to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import equinox as eqx
import haliax as hax
import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from opt_bench import compiled_memory, fresh_copy

from marin_optim.transforms import global_norm

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NUM_TRAIN_STEPS = 1000
SETTINGS = {
    "learning_rate": 1e-3,
    "weight_decay": 0.1,
    "warmup": 0.1,
    "min_lr_ratio": 0.1,
    "beta1": 0.9,
    "beta2": 0.95,
    "epsilon": 1e-8,
    "max_grad_norm": 1.0,
}


def optimizers() -> dict[str, optax.GradientTransformation]:
    """Levanter's ``adam`` and ours, with :data:`SETTINGS`."""
    import levanter.optim as lo

    import marin_optim.levanter  # noqa: F401  (our names in Levanter's registry)
    from marin_optim import OptimizerConfig

    return {
        "levanter": lo.AdamConfig(**SETTINGS).build(NUM_TRAIN_STEPS),
        "marin_optim": OptimizerConfig.from_dict({"type": "adam", **SETTINGS}).build(NUM_TRAIN_STEPS),
    }


def llama_params(hidden: int, layers: int, vocab: int, key: jax.Array) -> Any:
    """The trainable arrays of a Levanter Llama (a haliax module tree)."""
    from levanter.models.llama import LlamaConfig

    config = LlamaConfig(
        max_seq_len=1024,
        hidden_dim=hidden,
        intermediate_dim=int(3.5 * hidden),
        num_layers=layers,
        num_heads=max(1, hidden // 64),
        num_kv_heads=max(1, hidden // 64),
        tie_word_embeddings=False,
    )
    model = config.build(hax.Axis("vocab", vocab), key=key)
    return eqx.filter(model, eqx.is_inexact_array)


def count(tree: Any) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


def compile_step(tx: optax.GradientTransformation, params: Any, grads: Any) -> tuple[Any, Any, dict]:
    def step(p: Any, s: Any, g: Any) -> tuple[Any, Any]:
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    state = tx.init(params)
    exe = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
    return exe, state, compiled_memory(exe, params)


def time_updates(
    txs: dict[str, optax.GradientTransformation], params: Any, grads: Any, rounds: int, reps: int
) -> dict[str, Any]:
    """Best (and median) donated step of each, interleaved in random order."""
    compiled = {name: compile_step(tx, params, grads) for name, tx in txs.items()}
    times: dict[str, list[float]] = {name: [] for name in txs}
    for _ in range(rounds):
        holders = {}
        for name, (exe, state, _) in compiled.items():
            p, s = fresh_copy(params), fresh_copy(state)
            for _ in range(2):  # warm up
                p, s = exe(p, s, grads)
            jax.block_until_ready((p, s))
            holders[name] = [p, s]
        for _ in range(reps):
            order = list(compiled)
            random.shuffle(order)
            for name in order:
                exe, holder = compiled[name][0], holders[name]
                start = time.perf_counter()
                holder[0], holder[1] = exe(holder[0], holder[1], grads)
                jax.block_until_ready(holder)
                times[name].append(time.perf_counter() - start)
        holders.clear()
    out = {
        name: {
            "best_ms": 1e3 * min(t),
            "median_ms": 1e3 * statistics.median(t),
            **{k: round(v, 1) if isinstance(v, float) else v for k, v in compiled[name][2].items()},
        }
        for name, t in times.items()
    }
    out["ratio_levanter_over_ours"] = out["levanter"]["best_ms"] / out["marin_optim"]["best_ms"]
    out["ratio_levanter_over_ours_median"] = out["levanter"]["median_ms"] / out["marin_optim"]["median_ms"]
    return out


def gradient(params: Any, key: jax.Array) -> Any:
    """A random gradient shaped like ``params`` (scale 1e-3 per entry)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef, [1e-3 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    )


def agreement(
    txs: dict[str, optax.GradientTransformation], params: Any, steps: int, key: jax.Array
) -> dict[str, float]:
    """After ``steps`` updates from the same start with the same gradients: the relative difference
    of the parameters, and of the parameter changes (the latter is dominated by the last bit of
    parameters that are much larger than five steps' change)."""
    finals = {}
    for name, tx in txs.items():
        p, s = params, tx.init(params)
        update = jax.jit(tx.update)
        for k in range(steps):
            u, s = update(gradient(params, jax.random.fold_in(key, k)), s, p)
            p = optax.apply_updates(p, u)
        finals[name] = p
    ours, theirs = finals["marin_optim"], finals["levanter"]
    diff = jax.tree.map(lambda a, b: a - b, ours, theirs)
    change = jax.tree.map(lambda a, b: a - b, theirs, params)
    return {
        "parameters": float(global_norm(diff) / global_norm(theirs)),
        "changes": float(global_norm(diff) / global_norm(change)),
    }


def train_throughput(rounds: int, steps: int, quick: bool) -> dict[str, Any]:
    """tokens/s of the same ``train_lm`` run with Levanter's adam and ours, alternating."""
    from marin_optim.levanter import offline

    shape = (
        {"hidden_dim": 64, "num_layers": 2, "num_heads": 2, "seq_len": 128, "batch_size": 8}
        if quick
        else {"hidden_dim": 256, "num_layers": 4, "num_heads": 4, "seq_len": 256, "batch_size": 16}
    )
    runs: dict[str, list[float]] = {"levanter": [], "marin_optim": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            order = ["levanter", "marin_optim"] if r % 2 == 0 else ["marin_optim", "levanter"]
            for name in order:
                opt = {"type": "adam" if name == "levanter" else "marin_optim.adam", **SETTINGS}
                out = Path(tmp) / f"{name}-{r}"
                cfg = offline.train_lm_config(
                    out, optimizer=opt, num_train_steps=steps, source="stdlib", **shape
                )
                proc = offline.run_train_lm(cfg, launcher=None if name == "levanter" else [])
                if proc.returncode != 0:
                    raise RuntimeError(f"{name} train_lm failed:\n{proc.stderr[-3000:]}")
                metrics = offline.read_metrics(out)
                tps = [
                    row["throughput/tokens_per_second"]
                    for s, row in metrics.items()
                    if s >= 5 and "throughput/tokens_per_second" in row
                ]
                runs[name].append(statistics.median(tps))
                print(f"  train_lm round {r} {name:<11} {runs[name][-1]:>9,.0f} tokens/s", flush=True)
    ratios = [o / lv for o, lv in zip(runs["marin_optim"], runs["levanter"], strict=True)]
    return {"shape": shape, "steps": steps, "tokens_per_second": runs, "ratio_ours_over_levanter": ratios}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--train-rounds", type=int, default=2, help="train_lm rounds (0: skip)")
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="a small tree and one short training round")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.hidden, args.layers, args.vocab, args.rounds, args.reps = 128, 2, 1024, 1, 3
        args.train_rounds, args.train_steps = min(args.train_rounds, 1), 10

    key = jax.random.PRNGKey(0)
    params = llama_params(args.hidden, args.layers, args.vocab, key)
    grads = jax.tree.map(lambda x: 1e-3 * jnp.ones_like(x), params)
    txs = optimizers()
    n = count(params)
    print(
        f"Levanter adam vs marin_optim adam on a Levanter Llama: {n / 1e6:.1f}M parameters, "
        f"{jax.devices()[0].platform}, settings {SETTINGS}",
        flush=True,
    )
    update = time_updates(txs, params, grads, args.rounds, args.reps)
    for name in ("levanter", "marin_optim"):
        row = update[name]
        print(
            f"  update {name:<11} best {row['best_ms']:8.1f} ms  median {row['median_ms']:8.1f} ms  "
            f"temp {row.get('temp_mb', float('nan')):8.1f} MB  copies {row.get('big_copies', '-')}"
        )
    print(
        f"  Levanter / ours per update: {update['ratio_levanter_over_ours']:.2f} (best), "
        f"{update['ratio_levanter_over_ours_median']:.2f} (median)"
    )
    rel = agreement(txs, params, 5, jax.random.PRNGKey(1))
    print(
        f"  after 5 updates, relative difference of the parameters {rel['parameters']:.1e}, "
        f"of their changes {rel['changes']:.1e}",
        flush=True,
    )
    result: dict[str, Any] = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "node": platform.node(),
            "device": str(jax.devices()[0]),
            "cpu_count": jax.local_device_count(),
        },
        "command": "python benchmarks/levanter_step.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "parameters": n,
        "settings": SETTINGS,
        "update": update,
        "relative_difference_after_5_updates": rel,
    }
    if args.train_rounds:
        train = train_throughput(args.train_rounds, args.train_steps, args.quick)
        ratios = ", ".join(f"{r:.3f}" for r in train["ratio_ours_over_levanter"])
        print(f"  train_lm tokens/s, ours / Levanter's per round: {ratios}")
        result["train_lm"] = train
    out = (
        args.out
        or RESULTS_DIR / f"levanter_step-{jax.devices()[0].platform}-{_dt.datetime.now():%Y%m%d-%H%M%S}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
