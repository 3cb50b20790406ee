"""The run loop: rows set up together per optimizer, warmed up, and stepped interleaved."""

from __future__ import annotations

import gc
import os
import random
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

from .rows import Row, Runner

WARMUP_SECONDS = 0.3
"""Minimum warm-up time per row and round (the default of :attr:`RunOptions.warmup_seconds`)."""


@dataclass(frozen=True)
class RunOptions:
    """How rows are timed.

    ``rounds`` rounds (0: set every JAX row up once, which compiles it, and time nothing), in
    each ``reps`` timed steps per row after at least ``warmup`` steps and ``warmup_seconds``;
    ``row_bytes``: memory one row holds, against ``budget`` (free bytes, None if unknown).
    """

    rounds: int
    reps: int
    warmup: int
    verbose: bool = False
    row_bytes: int = 0
    budget: int | None = None
    warmup_seconds: float = WARMUP_SECONDS


def run_rows(rows: list[Row], opts: RunOptions) -> None:
    """Times every row; the rows of one optimizer (and the memory pass, ``rows[0]``) step in turn.

    Within a group, rows are set up together and stepped in turn, in a new random order each
    rep (A B C, C A B, ...), so a burst of load from another process hits all of them alike;
    groups that would not fit in 60% of the free memory (``opts.row_bytes`` each, against
    ``opts.budget``) run one row at a time.
    """
    if opts.rounds == 0:  # --compile-only
        compile_rows(rows, opts.verbose)
        return
    mem, rest = rows[0], rows[1:]
    groups: dict[str, list[Row]] = {}
    for row in rest:
        groups.setdefault(row.optimizer, []).append(row)
    for r in range(opts.rounds):
        for name, group in groups.items():
            members = [mem, *group]
            together = opts.budget is None or len(members) * opts.row_bytes < 0.6 * opts.budget
            batches = [members] if together else [[mem, row] for row in group]
            for batch in batches:
                _run_batch([row for row in batch if not row.skipped], opts, f"{r + 1}/{name}")


def compile_rows(rows: list[Row], verbose: bool) -> None:
    """Sets every JAX row up once (which compiles it and records its memory); times nothing."""
    for row in rows:
        if row.skipped or row.framework == "torch":
            continue
        try:
            row.setup().close()
        except Exception as e:
            _fail(row, e, verbose)
        gc.collect()


def _run_batch(rows: list[Row], opts: RunOptions, label: str) -> None:
    """Sets ``rows`` up, warms each up, times them interleaved, and frees them."""
    runners: list[tuple[Row, Runner]] = []
    try:
        for row in rows:
            try:
                runners.append((row, row.setup()))
            except Exception as e:
                _fail(row, e, opts.verbose)
        alive = _warm_up(runners, opts)
        _time_interleaved(alive, opts.reps)
        for row, _, times in alive:
            row.times.append(times)
            if opts.verbose:
                print(f"  {label}: {row.key:55s} {min(times) * 1e3:9.2f} ms", file=sys.stderr)
    finally:
        for _, runner in runners:
            runner.close()
        runners.clear()
        gc.collect()


def _warm_up(runners: list[tuple[Row, Runner]], opts: RunOptions) -> list[tuple[Row, Runner, list[float]]]:
    """Steps each runner at least ``opts.warmup`` times and ``opts.warmup_seconds``; returns those
    that did not fail, each with an empty list for its times.

    The minimum time lets the other framework's thread pool (XLA's or torch's OpenMP) settle
    before timing starts.
    """
    alive: list[tuple[Row, Runner, list[float]]] = []
    for row, runner in runners:
        try:
            t_end = time.perf_counter() + opts.warmup_seconds
            done = 0
            while done < opts.warmup or time.perf_counter() < t_end:
                runner.step()
                done += 1
            alive.append((row, runner, []))
        except Exception as e:
            _fail(row, e, opts.verbose)
    return alive


def _time_interleaved(alive: list[tuple[Row, Runner, list[float]]], reps: int) -> None:
    """``reps`` timed steps of every runner, appended to its list, in a fresh order every rep.

    A fresh order: the row stepped right after another framework's (whose threads may still be
    spinning) would otherwise always be the same one.
    """
    order = random.Random(len(alive))
    for _ in range(reps):
        for _row, runner, times in order.sample(alive, len(alive)):
            t0 = time.perf_counter()
            runner.step()
            times.append(time.perf_counter() - t0)


def _fail(row: Row, e: Exception, verbose: bool) -> None:
    """Marks ``row`` skipped with the first line of ``e`` (and prints the traceback if verbose)."""
    row.skipped = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    if verbose:
        traceback.print_exc()


def free_memory(device: Any) -> int | None:
    """Bytes free on ``device`` (host RAM for CPU), or None if unknown."""
    try:
        if device.platform == "cpu":
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        stats = device.memory_stats() or {}
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    except Exception:
        return None
