"""Newton–Schulz and Muon-step cost, as ratios measured side by side in one run.

1. Newton–Schulz on every hidden matrix of the speedrun model (its real shapes, scan-stacked
   layers as batches) against the bare matrix products the same iteration performs (``X X^T``,
   ``A A``, ``B X`` per step on the same shapes and dtype, chained so none is skipped): the ratio
   is the price of everything else (normalisation, transposes, the polynomial's sums, casts).
2. One Muon optimizer step against one AdamW step on the same parameters and gradients
   (``cfg.build(n).update`` + ``apply_updates``, jitted, buffers donated).
3. Each coefficient preset's distance to the exact polar factor ``U V^T`` (from an SVD) of a
   64x112 standard normal matrix (key 0), in float32: ``||NS(X) - U V^T||_F / ||U V^T||_F``.
   Not a timing; ``--distances_only`` prints just this.

    python benchmarks/newton_schulz.py                      # the default CPU speedrun model
    python benchmarks/newton_schulz.py --preset 150m --reps 5

Times are the best of ``--reps`` after one compile-and-warm-up call; compare ratios only within
one run (this machine's timings vary by 1.5x or more between runs).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from marin_optim.labels import ParamLabel, ParamLabeler
from marin_optim.optimizers.adam import AdamWConfig
from marin_optim.optimizers.muon import MuonConfig
from marin_optim.speedrun.model import ModelConfig, Transformer
from marin_optim.transforms.newton_schulz import NS_DTYPES, NS_PRESETS, newton_schulz


def interleaved_best(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    """Best wall time of each thunk, calling them in turn ``reps`` times (after one warm-up each),
    so that load changes on a shared machine hit every candidate alike."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def bare_matmuls(x: jax.Array, steps: int, dtype: Any) -> jax.Array:
    """The products of ``steps`` Newton–Schulz iterations on ``x[batch, m, n]``, nothing else."""
    if x.shape[-2] > x.shape[-1]:
        x = jnp.swapaxes(x, -1, -2)  # the iteration runs on the wide orientation
    x = x.astype(dtype)
    for _ in range(steps):
        gram = jnp.matmul(x, jnp.swapaxes(x, -1, -2), preferred_element_type=jnp.float32).astype(dtype)
        gram2 = jnp.matmul(gram, gram, preferred_element_type=jnp.float32).astype(dtype)
        x = jnp.matmul(gram2, x, preferred_element_type=jnp.float32).astype(dtype)
    return x


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="cpu", help="speedrun model preset (cpu, nano, 30m, ..., 300m)")
    parser.add_argument("--steps", type=int, default=5, help="Newton-Schulz iterations")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--distances_only", action="store_true", help="only part 3 (no timings)")
    args = parser.parse_args()
    if args.distances_only:
        print_distances(args.steps)
        return

    config = ModelConfig(preset=args.preset)
    model = Transformer.init(config, key=jax.random.PRNGKey(0))
    params = eqx.filter(model, eqx.is_inexact_array)
    labels = jax.tree.leaves(ParamLabeler().labels(params), is_leaf=lambda x: isinstance(x, ParamLabel))
    views = [lab.axes for lab in labels if lab.kind == "matrix"]  # the head has a view too: skip it
    hidden = [
        jax.random.normal(jax.random.PRNGKey(i), (v.num_matrices, v.fan_out_size, v.fan_in_size))
        for i, v in enumerate(views)
    ]
    n_values = sum(m.size for m in hidden)
    print(f"backend {jax.default_backend()}, model preset {args.preset}: {len(hidden)} hidden matrix leaves,")
    print(
        "  shapes "
        + ", ".join(f"{m.shape[0]}x{m.shape[1]}x{m.shape[2]}" for m in hidden)
        + f" ({n_values:,} values)"
    )

    print(f"\n1. Newton-Schulz ({args.steps} steps) vs the bare matmuls it performs, best of {args.reps}")
    thunks: dict[str, Callable[[], Any]] = {}
    for name, dtype in NS_DTYPES.items():
        ns = jax.jit(lambda ms, d=name: [newton_schulz(m, steps=args.steps, dtype=d) for m in ms])
        bare = jax.jit(lambda ms, d=dtype: [bare_matmuls(m, args.steps, d) for m in ms])
        thunks[f"ns {name}"] = lambda f=ns: f(hidden)
        thunks[f"bare {name}"] = lambda f=bare: f(hidden)
    times = interleaved_best(thunks, args.reps)
    for name in NS_DTYPES:
        t_ns, t_bare = times[f"ns {name}"], times[f"bare {name}"]
        ratio = t_ns / t_bare
        print(
            f"  {name:9s} NS {t_ns * 1e3:8.2f} ms   bare matmuls {t_bare * 1e3:8.2f} ms   ratio {ratio:5.2f}"
        )

    n_params = sum(p.size for p in jax.tree.leaves(params))
    print(f"\n2. One optimizer step on the whole model ({n_params:,} values), best of {args.reps}")
    grads = jax.tree.map(lambda p: 1e-3 * jnp.ones_like(p), params)
    steppers: dict[str, Callable[[], Any]] = {}
    for label, cfg in [
        ("adamw", AdamWConfig()),
        ("muon (bf16 NS)", MuonConfig(ns_dtype="bfloat16")),
        ("muon (fp32 NS)", MuonConfig(ns_dtype="float32")),
    ]:
        tx = cfg.build(1000)

        def step(p, s, g, tx=tx):
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        step_fn = jax.jit(step, donate_argnums=(0, 1))
        carry = [jax.tree.map(jnp.copy, params)]
        carry.append(tx.init(carry[0]))

        def run(step_fn=step_fn, carry=carry):
            carry[0], carry[1] = step_fn(carry[0], carry[1], grads)
            return carry[0]

        steppers[label] = run
    results = interleaved_best(steppers, args.reps)
    base = results["adamw"]
    for label, t in results.items():
        print(f"  {label:15s} {t * 1e3:8.2f} ms   x{t / base:5.2f} AdamW")
    print_distances(args.steps)


def print_distances(steps: int) -> None:
    """Part 3 of the module docstring."""
    import numpy as np

    x = jax.random.normal(jax.random.PRNGKey(0), (64, 112), jnp.float32)
    u, _, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
    polar = u @ vt
    print(f"\n3. Distance of {steps} Newton-Schulz steps (float32) to the polar factor of a 64x112 matrix")
    for name in NS_PRESETS:
        y = np.asarray(newton_schulz(x, coefficients=name, steps=steps, dtype=jnp.float32), np.float64)
        print(f"  {name:14s} {np.linalg.norm(y - polar) / np.linalg.norm(polar):.3f}")


if __name__ == "__main__":
    main()
