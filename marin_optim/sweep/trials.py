"""One sweep trial: a speedrun with one optimizer config, seed and length, and where it is kept.

A :class:`Trial` is named by a hash of everything that decides its result (the base speedrun
config, the optimizer's full config, the seed, the number of steps), so a trial asked for twice,
by two rounds of the search or by a resumed sweep, runs once. Finished trials are appended to
``trials.jsonl`` (one JSON row each, flushed and synced) by the process that runs the sweep;
a row cut short by a kill is ignored, and its trial runs again (its speedrun resumes from its
last checkpoint in ``trials/<key>/``). A trial whose non-finite guard stops it is a finished
trial with status ``failed``; any other error stops the sweep (a bug is not a result).

Trials run in this process, in ``workers`` processes of this machine
(``concurrent.futures.ProcessPoolExecutor``, spawned; each stops when the sweep's process is
gone, however it ended), or as Ray tasks on a cluster (:class:`RayRunner`, ``pip install
'marin-optim[ray]'``). A trial computing on XLA:CPU keeps to its own CPUs either way (a local
worker to its share, a Ray task to a share of its node that no other trial holds): XLA sizes its
thread pools from the CPUs a process may use, and trials spread over the same cores contend. A
trial's directory is locked while it runs (:func:`held`), so a trial is never run by two
processes at once: a worker left over from a killed sweep, a second sweep.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import dataclasses
import fcntl
import hashlib
import io
import json
import math
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from marin_optim.errors import ConfigError
from marin_optim.speedrun import results as res

TRIALS = "trials.jsonl"


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex digest of ``obj``'s canonical JSON (sorted keys): the same data, the same name."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


@dataclass(frozen=True)
class Trial:
    """A speedrun of ``optimizer`` (a full config dict, ``type`` included) for ``steps`` steps
    with ``seed``, on the sweep's base config (named by ``base_hash``). ``changes`` (the fields
    that differ from the optimizer's defaults) is for people; it is not part of the key."""

    label: str
    optimizer: dict[str, Any] = field(hash=False)
    seed: int
    steps: int
    base_hash: str
    changes: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    key: str = field(init=False)

    def __post_init__(self) -> None:
        identity = {
            "base": self.base_hash,
            "optimizer": self.optimizer,
            "seed": self.seed,
            "steps": self.steps,
        }
        object.__setattr__(self, "key", stable_hash(identity))


@contextlib.contextmanager
def held(path: str | Path, busy: str | None = None) -> Iterator[None]:
    """An exclusive lock on the file ``path`` (``flock``; released when the block ends or the
    process dies) while the block runs. Another holder, in this process or any other on the
    machine: wait for it, or with ``busy``, raise ``ConfigError(busy)`` at once."""
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy is not None else 0))
        except BlockingIOError:
            raise ConfigError(busy) from None
        yield


def run_trial(base: dict[str, Any], trial: Trial, run_dir: str) -> dict[str, Any]:
    """Runs ``trial`` on the speedrun config ``base`` (a dict) in ``run_dir``; returns its row.

    A module-level function of plain data, so that a worker process or a Ray task can run it.
    The speedrun's log goes to ``run_dir/trial.log``; an interrupted trial resumes there. The
    directory is :func:`held` meanwhile: a process already running this trial is waited for,
    and its finished run is then read back (a resumed run at its last step)."""
    from marin_optim.config import OptimizerConfig
    from marin_optim.speedrun.config import SpeedrunConfig
    from marin_optim.speedrun.trainer import run_speedrun
    from marin_optim.transforms.guards import NonFiniteError

    cfg = SpeedrunConfig.from_dict(base)
    cfg = cfg.replace(
        optimizer=OptimizerConfig.from_dict(trial.optimizer),
        train=dataclasses.replace(cfg.train, seed=trial.seed, num_train_steps=trial.steps),
        output_dir=run_dir,
        resume=True,
        overwrite=False,
    )
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    row: dict[str, Any] = {
        "key": trial.key,
        "label": trial.label,
        "optimizer": trial.optimizer,
        "changes": trial.changes,
        "seed": trial.seed,
        "steps": trial.steps,
        "run_dir": run_dir,
    }
    with (
        held(Path(run_dir) / ".lock"),
        open(Path(run_dir) / "trial.log", "a") as log,
        contextlib.redirect_stdout(log),
    ):
        if cpus is not None:
            print(f"trial {trial.key}: process {os.getpid()} on CPUs {','.join(map(str, cpus))}", flush=True)
        try:
            info = run_speedrun(cfg, log=lambda msg: print(msg, file=log, flush=True)).run_info
        except NonFiniteError as e:
            return {**row, "status": "failed", "reason": str(e).split(";")[0], "eval_loss": math.inf}
    if not math.isfinite(info["eval_loss"]):  # run_speedrun refuses a non-finite end; should one come
        return {**row, "status": "failed", "reason": f"eval loss {info['eval_loss']}", "eval_loss": math.inf}
    return {
        **row,
        "status": "ok",
        "eval_loss": float(info["eval_loss"]),
        "eval_bpb": float(info["eval_bpb"]),
        "training_time": float(info["training_time"]),
    }


class TrialStore:
    """``trials.jsonl`` in a sweep directory: every finished trial, by key."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.path = self.root / TRIALS
        self.rows: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the last row, cut short by a kill: that trial runs again
                if isinstance(row, dict) and "key" in row:
                    row["eval_loss"] = float(row["eval_loss"])  # "inf" as JSON writes it
                    self.rows.setdefault(row["key"], row)

    def on_base(self, base_hash: str) -> TrialStore:
        """These rows, only those of trials on the base config named ``base_hash`` (a row's key
        hashes its base: :class:`Trial`): a directory whose sweep was replaced with ``--force``
        on another base keeps the first one's rows too."""
        view = copy.copy(self)
        view.rows = {
            key: row
            for key, row in self.rows.items()
            if Trial(row["label"], row["optimizer"], row["seed"], row["steps"], base_hash).key == key
        }
        return view

    def run_dir(self, trial: Trial) -> str:
        return str(self.root / "trials" / trial.key)

    def add(self, row: dict[str, Any]) -> None:
        if row["key"] in self.rows:
            return
        self.rows[row["key"]] = row
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps(res.jsonable(row), sort_keys=True) + "\n"
        with self.path.open("a+b") as f:
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # the last row was cut short by a kill: start a new line
                    line = "\n" + line
            f.write(line.encode())
            f.flush()
            os.fsync(f.fileno())


class Runner(Protocol):
    """Runs trials (each with its run directory), yielding each one's row as it finishes."""

    def run(self, base: dict[str, Any], trials: list[tuple[Trial, str]]) -> Iterator[dict[str, Any]]: ...

    def close(self) -> None: ...


def stop_with(parent: int, interval: float = 1.0) -> None:
    """In a worker process: end it (``os._exit``) once ``parent`` is no longer its parent, checked
    every ``interval`` seconds by a daemon thread. A pool's workers otherwise outlive a sweep
    killed by a signal and go on running (and writing) trials; a trial they leave cut short
    resumes from its last checkpoint when the sweep is run again."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="stop_with_parent").start()


def cpu_shares(workers: int, cpus: Iterable[int]) -> list[set[int]]:
    """The CPUs each of ``workers`` processes runs on: ``cpus`` cut into ``workers`` contiguous
    shares as even as they go, or one CPU each, dealt round-robin, when there are fewer CPUs
    than workers."""
    cpus = sorted(cpus)
    if workers >= len(cpus):
        return [{cpus[i % len(cpus)]} for i in range(workers)]
    size, extra = divmod(len(cpus), workers)
    starts = [i * size + min(i, extra) for i in range(workers + 1)]
    return [set(cpus[starts[i] : starts[i + 1]]) for i in range(workers)]


def keep_to(cpus: Iterable[int]) -> None:
    """Keeps every thread of this process (and the threads they start) to ``cpus``. Done before
    XLA sizes its thread pools from the CPUs the process may use: unpinned, trials side by side
    each spread over every core and contend, several times slower than pinned (measured in the
    README's sweep section, "Where it runs")."""
    cpus = set(cpus)
    threads = [int(t) for t in os.listdir("/proc/self/task")] if os.path.isdir("/proc/self/task") else [0]
    for tid in threads:
        with contextlib.suppress(ProcessLookupError):  # a thread that has ended meanwhile
            os.sched_setaffinity(tid, cpus)


def start_worker(parent: int, shares: Any) -> None:
    """A local worker's start: stop with ``parent`` (:func:`stop_with`) and keep to the next CPU
    share in the queue ``shares`` (:func:`cpu_shares`, :func:`keep_to`)."""
    stop_with(parent)
    # a share may still be in the parent's feeder thread: wait for it a little; none comes for a
    # worker that replaces one (the pool is then broken anyway) or where there is no affinity API
    with contextlib.suppress(queue.Empty, AttributeError, OSError):
        keep_to(shares.get(timeout=10))


@contextlib.contextmanager
def node_share(num_cpus: float, cpus: Iterable[int], lock_dir: str | Path) -> Iterator[set[int] | None]:
    """A share of ``cpus`` (``ceil(num_cpus)`` of them or more: :func:`cpu_shares`) that no other
    holder on this machine has, held while the block runs: each CPU of a share is claimed by an
    ``flock`` on ``lock_dir/marin_optim-cpu-N.lock``, so trials of different share sizes, or of two
    sweeps, never overlap. Yields None when every share has a CPU held (more trials than shares:
    a Ray node whose CPU count exceeds its cores)."""
    cpus = sorted(cpus)
    shares = cpu_shares(max(1, len(cpus) // max(1, math.ceil(num_cpus))), cpus)
    with contextlib.ExitStack() as claimed:
        for share in shares:
            files = []
            for cpu in sorted(share):
                f = open(Path(lock_dir) / f"marin_optim-cpu-{cpu}.lock", "a")
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    f.close()
                    break
                files.append(f)
            else:
                for f in files:
                    claimed.enter_context(f)
                yield share
                return
            for f in files:  # part of this share was held: let go of the rest, try the next
                f.close()
        yield None


def run_ray_trial(
    base: dict[str, Any], trial: Trial, run_dir: str, num_cpus: float, pin: bool
) -> dict[str, Any]:
    """:func:`run_trial` as a Ray task: with ``pin`` (a trial on XLA:CPU), first keeps this
    process, a fresh one per task, to a free share of its node's CPUs (:func:`node_share` in the
    node's temporary directory; unpinned when none is free). Ray counts a task's CPUs but does not
    pin it to any."""
    import tempfile

    if not pin or not hasattr(os, "sched_getaffinity"):
        return run_trial(base, trial, run_dir)
    with node_share(num_cpus, os.sched_getaffinity(0), tempfile.gettempdir()) as share:
        if share is not None:
            keep_to(share)
        return run_trial(base, trial, run_dir)


class LocalRunner:
    """Trials in this process (``workers == 1``) or in ``workers`` spawned processes, each of
    which stops when this process is gone and keeps to its own share of this process's CPUs
    (:func:`start_worker`)."""

    def __init__(self, workers: int = 1):
        if workers < 1:
            raise ConfigError(f"--workers={workers}: must be at least 1")
        self.workers = workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def run(self, base: dict[str, Any], trials: list[tuple[Trial, str]]) -> Iterator[dict[str, Any]]:
        if self.workers == 1:
            for trial, run_dir in trials:
                yield run_trial(base, trial, run_dir)
            return
        pool = self.pool()
        futures = [pool.submit(run_trial, base, trial, run_dir) for trial, run_dir in trials]
        try:
            for future in concurrent.futures.as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()

    def pool(self) -> concurrent.futures.ProcessPoolExecutor:
        """The worker processes (started on first use)."""
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            shares = context.Queue()
            if hasattr(os, "sched_getaffinity"):
                for share in cpu_shares(self.workers, os.sched_getaffinity(0)):
                    shares.put(share)
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=start_worker, initargs=(os.getpid(), shares)
            )
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


class RayRunner:
    """Trials as Ray tasks on the cluster at ``address`` (``auto``: the one this machine belongs
    to; ``local``: a new one on this machine), each asking for ``num_cpus`` CPUs and ``num_gpus``
    GPUs (Ray gives a task its GPUs; one without GPUs computes on XLA:CPU, kept to a share of its
    node's CPUs: :func:`run_ray_trial`). Each task runs in a fresh worker process
    (``max_calls=1``), whose XLA starts with that task's CPUs and devices. Results come back to
    this process, which alone writes ``trials.jsonl``."""

    def __init__(self, address: str, num_cpus: float = 1, num_gpus: float = 0):
        if not num_cpus > 0:
            raise ConfigError(f"--ray_cpus={num_cpus}: must be > 0 (the CPUs each trial asks Ray for)")
        if not num_gpus >= 0:
            raise ConfigError(f"--ray_gpus={num_gpus}: must be >= 0 (the GPUs each trial asks Ray for)")
        try:
            import ray
        except ImportError:
            raise ConfigError(
                f"--ray {address}: Ray is not installed (pip install 'marin-optim[ray]')"
            ) from None
        self._ray = ray
        if not ray.is_initialized():
            with contextlib.redirect_stderr(io.StringIO()):
                ray.init(address=None if address == "local" else address, log_to_driver=False)
        self._task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_calls=1)(run_ray_trial)
        self._resources = (num_cpus, num_gpus == 0)

    def run(self, base: dict[str, Any], trials: list[tuple[Trial, str]]) -> Iterator[dict[str, Any]]:
        ray = self._ray
        pending = [self._task.remote(base, trial, run_dir, *self._resources) for trial, run_dir in trials]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield ray.get(done[0])
        finally:
            for ref in pending:
                ray.cancel(ref)

    def close(self) -> None:
        pass


def run_all(
    runner: Runner, store: TrialStore, base: dict[str, Any], trials: Iterable[Trial], log: Any
) -> None:
    """Runs every trial of ``trials`` that ``store`` does not have yet, recording each as it ends."""
    todo: dict[str, Trial] = {}
    for trial in trials:
        if trial.key not in store.rows:
            todo.setdefault(trial.key, trial)
    if not todo:
        return
    for row in runner.run(base, [(t, store.run_dir(t)) for t in todo.values()]):
        store.add(row)
        log(describe(row))


def describe(row: dict[str, Any]) -> str:
    """One line for a finished trial: what changed from the defaults, the seed, the result."""
    changed = ", ".join(f"{k}={v}" for k, v in row.get("changes", {}).items())
    what = f"{row['label']}" + (f" [{changed}]" if changed else "")
    result = f"eval loss {row['eval_loss']:.4f}" if row["status"] == "ok" else f"failed: {row['reason']}"
    return f"sweep: {what} seed {row['seed']} {row['steps']} steps: {result}"
