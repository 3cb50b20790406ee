"""Times one optimizer step of every registered optimizer against the memory-bandwidth limit.

The command line: arguments become :class:`Options` (:func:`parse_options`), and
:func:`run_benchmark` builds the tree and the rows, times them and reports. What is timed and
what the columns mean: the package's docstring (``benchmarks/opt_bench/__init__.py``).

Usage::

    python benchmarks/optimizer_step.py                      # ~50M params on CPU, 1B on GPU
    python benchmarks/optimizer_step.py --quick              # a few-second smoke run
    python benchmarks/optimizer_step.py --optimizers adamw --rounds 5 --out benchmarks/results/x.json
    python benchmarks/optimizer_step.py --compile-only       # temp buffers and copies only, no timing
    python benchmarks/optimizer_step.py --optimizers adamw --layout single   # the tree as one leaf
    python -m benchmarks.opt_bench --quick                   # the same, from the repository root

The JSON written to ``--out`` (default ``benchmarks/results/optimizer_step-<device>-<time>.json``)
holds every row plus the headline ratios, for tracking over time.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from marin_optim import OptimizerConfig
from marin_optim.runtime import setup_process
from marin_optim.transforms import global_norm

from .plan import build_rows
from .report import RunInfo, describe, report
from .run import WARMUP_SECONDS, RunOptions, free_memory, run_rows
from .torch_ref import TorchContext
from .trees import LAYOUTS, llama_shape, make_tree, parse_count, tree_bytes


@dataclass(frozen=True)
class Options:
    """The benchmark's settings, once ``--quick``, ``--compile-only`` and the defaults are applied."""

    params: int
    vocab: int
    layout: str
    optimizers: tuple[str, ...]
    rounds: int
    reps: int
    warmup: int
    warmup_seconds: float
    torch: bool
    bf16: bool
    out: str | None
    verbose: bool


def build_parser() -> argparse.ArgumentParser:
    """The command line's flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--params", type=parse_count, default=None, help="parameter count (default 50M on CPU, 1B on GPU)"
    )
    parser.add_argument("--vocab", type=int, default=32_000)
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="llama",
        help="parameter tree: per-layer leaves (llama), stacked over layers (scan layout), as many "
        "equal leaves (uniform) or one leaf (single) of about the same size",
    )
    parser.add_argument(
        "--optimizers", default=None, help="comma-separated names (default: every registered one)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16-moment rows")
    parser.add_argument("--quick", action="store_true", help="tiny tree, one round: a smoke run")
    parser.add_argument(
        "--compile-only",
        action="store_true",
        help="no timing: only the compiled step's memory, temporaries and copies per optimizer",
    )
    parser.add_argument("--out", default=None, help="JSON output path ('' to skip writing)")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument(
        "--cpu-fusion",
        choices=("on", "off"),
        default="on",
        help="on: switch XLA:CPU multi-output fusion on, as `marin-optim speedrun` does "
        "(marin_optim/xla.py); off: leave XLA_FLAGS as they are",
    )
    parser.add_argument(
        "--malloc-hugepages",
        choices=("on", "off"),
        default="on",
        help="on: run as `marin-optim speedrun` does, restarting with glibc malloc's huge pages where "
        "that helps (marin_optim/host.py; only when run as a program); off: as started",
    )
    return parser


def parse_options(parser: argparse.ArgumentParser, args: argparse.Namespace, platform_name: str) -> Options:
    """``args`` as :class:`Options` for a device of ``platform_name`` (unknown optimizers: an error).

    ``--quick``: a ~300k-parameter tree, vocabulary at most 1024, one round of two reps after one
    warm-up step; ``--compile-only``: no rounds, no torch; ``--params`` defaults to 50M on CPU
    and 1B elsewhere.
    """
    params, vocab, warmup_seconds = args.params, args.vocab, WARMUP_SECONDS
    rounds, reps, warmup = args.rounds, args.reps, args.warmup
    if args.quick:
        params, vocab, warmup_seconds = params or 300_000, min(vocab, 1024), 0.0
        rounds, reps, warmup = 1, 2, 1
    if args.compile_only:
        rounds = 0
    if params is None:
        params = 50_000_000 if platform_name == "cpu" else 1_000_000_000
    return Options(
        params=params,
        vocab=vocab,
        layout=args.layout,
        optimizers=_optimizer_names(parser, args.optimizers),
        rounds=rounds,
        reps=reps,
        warmup=warmup,
        warmup_seconds=warmup_seconds,
        torch=not (args.no_torch or args.compile_only),
        bf16=not args.no_bf16,
        out=args.out,
        verbose=args.verbose,
    )


def _optimizer_names(parser: argparse.ArgumentParser, text: str | None) -> tuple[str, ...]:
    """The names in comma-separated ``text`` (default: every registered one); unknown: an error."""
    registered = OptimizerConfig.registered()
    names = list(registered) if not text else [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in registered]
    if unknown:
        parser.error(f"unknown optimizer(s) {unknown}; registered: {sorted(registered)}")
    return tuple(names)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark with ``argv`` (default ``sys.argv[1:]``); returns the JSON result.

    Only when ``argv`` is None (run as a program) may it first restart the process with glibc
    malloc's huge pages (``--malloc-hugepages``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    # Before the backend starts (jax.devices()): XLA reads XLA_FLAGS once.
    setup = setup_process(
        program=argv is None, cpu_fusion=args.cpu_fusion == "on", hugepages=args.malloc_hugepages == "on"
    )
    cpu_fusion = setup.cpu_multi_output_fusion
    device = jax.devices()[0]
    opts = parse_options(parser, args, device.platform)
    command = " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
    return run_benchmark(opts, device, cpu_fusion, command)


def run_benchmark(opts: Options, device: Any, cpu_fusion: bool, command: str) -> dict[str, Any]:
    """Builds the tree and the rows on ``device``, times them, reports; returns the JSON result."""
    shape = llama_shape(opts.params, opts.vocab)
    shapes = shape.shapes(opts.layout)
    params, grads = _inputs(shapes, device)
    info = RunInfo(
        command=command,
        device=device,
        cores=visible_cores(),
        cpu_fusion=cpu_fusion,
        shape=shape,
        layout=opts.layout,
        n_params=shape.num_params(opts.layout),
        n_leaves=len(jax.tree.leaves(params)),
        rounds=opts.rounds,
        reps=opts.reps,
    )
    torch_ctx, torch_note = _torch_context(opts, shapes, info)
    print(describe(info), flush=True)
    if torch_note:
        print(torch_note)
    rows = build_rows(list(opts.optimizers), params, grads, torch_ctx, bf16=opts.bf16)
    row_bytes = int(3.5 * tree_bytes(params))  # parameters and their state, per row
    run_opts = RunOptions(
        rounds=opts.rounds,
        reps=opts.reps,
        warmup=opts.warmup,
        verbose=opts.verbose,
        row_bytes=row_bytes,
        budget=free_memory(device),
        warmup_seconds=opts.warmup_seconds,
    )
    run_rows(rows, run_opts)
    return report(rows, info, opts.out)


def _inputs(shapes: Any, device: Any) -> tuple[Any, Any]:
    """Parameters (normal, scale 0.02) and gradients scaled to global norm 2 (the clip is active)."""
    params = make_tree(shapes, jax.random.PRNGKey(0), 0.02, jnp.float32, device)
    grads = make_tree(shapes, jax.random.PRNGKey(1), 1.0, jnp.float32, device)
    norm = float(global_norm(grads))
    return params, jax.tree.map(lambda g: g * (2.0 / norm), grads)


def _torch_context(opts: Options, shapes: Any, info: RunInfo) -> tuple[TorchContext | None, str | None]:
    """The torch references' context, or None and why not (None, None with ``--no-torch``)."""
    if not opts.torch:
        return None, None
    try:
        return TorchContext(shapes, info.platform, info.cores), None
    except Exception as e:
        return None, f"torch rows skipped: {e}"


def visible_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
