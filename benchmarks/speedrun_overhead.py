"""Trainer overhead: tokens/s of ``run_speedrun`` against a minimal hand-written jax+optax loop.

Both train the same model (the default ``cpu`` preset unless overridden) with the same optimizer
transformation on the same batches (the trainer's data, in the trainer's order), in one process,
alternating runs (and which goes first) so that machine noise hits both. The hand loop is a
jitted, buffer-donating step fed batches already on the device; the trainer additionally builds
each batch on the host, transfers it, logs every value of ``hyperparams(state)`` and drives the
progress bar. Compilation, evaluation and checkpoints are
outside both clocks.

    python benchmarks/speedrun_overhead.py                  # default model, 40 steps, 5 rounds
    python benchmarks/speedrun_overhead.py --steps 100 --rounds 3 --preset nano

Three ratios (trainer / hand loop, target >= 0.97), each over steps ``SKIP+1 .. N-1``:

- wall tokens/s, median over rounds of the per-round ratio;
- wall tokens/s of the fastest ``WINDOW``-step window of each run (the least disturbed stretch);
- tokens per CPU-second of this process (user + system): on a machine shared with other jobs,
  wall time swings by 2x between runs while the CPU time a loop needs per step does not, so this
  is the ratio that measures the trainer's own overhead there.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
import optax

from marin_optim import host
from marin_optim.cli import parse_config
from marin_optim.runtime import setup_process
from marin_optim.speedrun import SpeedrunConfig, run_speedrun
from marin_optim.speedrun.data import SequenceSampler, load_dataset
from marin_optim.speedrun.model import Transformer, cast_floating, next_token_loss
from marin_optim.speedrun.trainer import resolve_compute_dtype

WINDOW = 10
SKIP = 5
"""Steps left out at the start of each clock (the first dispatches warm caches and allocators)."""


class Clock:
    """Wall and process CPU time at each observed step."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def mark(self, step: int) -> None:
        self.steps.append(step)
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def rates(self, tokens_per_step: int, first: int, last: int) -> tuple[float, float, float]:
        """(wall tokens/s, best-window wall tokens/s, tokens per CPU-second) over steps first..last."""
        i, j = self.steps.index(first), self.steps.index(last)
        n = (last - first) * tokens_per_step
        wall = self.wall[i : j + 1]
        best = min(b - a for a, b in zip(wall, wall[WINDOW:], strict=False))
        return (
            n / (self.wall[j] - self.wall[i]),
            WINDOW * tokens_per_step / best,
            n / (self.cpu[j] - self.cpu[i]),
        )


def trainer_rates(cfg: SpeedrunConfig) -> tuple[float, float, float]:
    """The trainer's rates, clocked by a hook (called after each step's bookkeeping)."""
    clock = Clock()
    last = cfg.train.num_train_steps - 1  # the last step's hook runs after the final eval/checkpoint
    with tempfile.TemporaryDirectory() as tmp:
        run_speedrun(
            cfg.replace(output_dir=os.path.join(tmp, "run")), hooks=[clock.mark], log=lambda _m: None
        )
    return clock.rates(cfg.train.tokens_per_step, SKIP, last)


def hand_loop_rates(cfg: SpeedrunConfig) -> tuple[float, float, float]:
    """The minimal loop: init, jit(value_and_grad + tx.update + apply_updates) with donation, repeat."""
    t = cfg.train
    dtype = resolve_compute_dtype(t.compute_dtype)
    tx = cfg.optimizer.build(t.num_train_steps)
    params = Transformer.init(cfg.model, key=jax.random.PRNGKey(t.seed))
    opt_state = tx.init(params)
    # The trainer's batches (real text: a model confident on text does different arithmetic,
    # e.g. underflowing probabilities, than one on random bytes), staged on the device up front.
    dataset = load_dataset(cfg.data, t.seq_len, t.seed)
    seed = t.seed if cfg.data.seed is None else cfg.data.seed
    sampler = SequenceSampler(dataset.train, t.seq_len, dataset.stride, seed=seed)
    batches = [
        jax.device_put(sampler.sequences(i * t.batch_size, t.batch_size).astype(np.int32))
        for i in range(t.num_train_steps)
    ]

    def loss_fn(p, inputs, targets):
        return next_token_loss(cast_floating(p, dtype), inputs, targets)

    def step(params, opt_state, tokens):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens[:, :-1], tokens[:, 1:])
        updates, opt_state = tx.update(grads, opt_state, params, loss=loss)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    jax.block_until_ready(step(params, opt_state, batches[0]))  # compile (on throwaway copies)
    params = Transformer.init(cfg.model, key=jax.random.PRNGKey(t.seed))
    opt_state = tx.init(params)
    # Like the trainer: step s is observed once step s + 1 is queued, so the device never idles.
    clock, previous = Clock(), None
    for s in range(1, t.num_train_steps + 1):
        params, opt_state, loss = step(params, opt_state, batches[s - 1])
        if previous is not None:
            previous.block_until_ready()
            clock.mark(s - 1)
        previous = loss
    return clock.rates(t.tokens_per_step, SKIP, t.num_train_steps - 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seq_len", type=int, default=128)
    args = parser.parse_args(argv)
    if args.steps < SKIP + WINDOW + 2:
        parser.error(f"--steps must be at least {SKIP + WINDOW + 2}")
    # The process as `marin-optim speedrun` sets it up (both loops share it): malloc's huge
    # pages (restarts the program) and XLA:CPU multi-output fusion.
    fusion = setup_process(program=argv is None).cpu_multi_output_fusion
    cfg = parse_config(
        SpeedrunConfig,
        [
            "--model.preset", args.preset,
            "--train.num_train_steps", str(args.steps),
            "--train.batch_size", str(args.batch_size),
            "--train.seq_len", str(args.seq_len),
            "--train.eval_interval", "0",
            "--train.checkpoint_interval", "0",
            "--train.eval_sequences", str(args.batch_size),
            "--train.mesh.data", "1",
        ],
    )  # fmt: skip
    print(
        f"model {args.preset} ({cfg.model.num_parameters() / 1e6:.2f}M params), batch {args.batch_size} x "
        f"{args.seq_len}, {args.steps} steps, optimizer {cfg.optimizer_name}, {jax.devices()[0].platform}, "
        f"load average {os.getloadavg()[0]:.1f}; XLA:CPU multi-output fusion {'on' if fusion else 'off'}, "
        f"malloc huge pages {'on' if host.malloc_hugepages() else 'off'}"
    )
    hand, trainer = [], []
    for r in range(args.rounds):
        # Alternate which goes first, so a drift in machine load over a round favours neither.
        if r % 2 == 0:
            hand.append(hand_loop_rates(cfg))
            trainer.append(trainer_rates(cfg))
        else:
            trainer.append(trainer_rates(cfg))
            hand.append(hand_loop_rates(cfg))
        (hw, hb, hc), (tw, tb, tc) = hand[-1], trainer[-1]
        print(
            f"round {r + 1}: tokens/s hand {hw:,.0f} trainer {tw:,.0f} | best window hand {hb:,.0f} "
            f"trainer {tb:,.0f} | tokens/CPU-s hand {hc:,.0f} trainer {tc:,.0f}"
        )
    wall = float(np.median([t[0] / h[0] for t, h in zip(trainer, hand, strict=True)]))
    window = max(t[1] for t in trainer) / max(h[1] for h in hand)
    cpu = float(np.median([t[2] / h[2] for t, h in zip(trainer, hand, strict=True)]))
    print(f"ratio, wall tokens/s (median of rounds)         = {wall:.3f}")
    print(f"ratio, fastest {WINDOW}-step windows                 = {window:.3f}")
    print(f"ratio, tokens per CPU-second (median of rounds) = {cpu:.3f}   target >= 0.97")
    print(f"load average now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
