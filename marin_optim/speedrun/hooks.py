"""The speedrun trainer's collaborators: the state it advances, its clock, its progress bar and hooks.

:class:`marin_optim.speedrun.trainer.Trainer` runs the step loop; everything around a step lives
here, one object per concern (as Levanter's trainer hooks):

- :class:`TrainState`: parameters, optimizer state, the last finished step and the data position;
- :class:`Clock`: training time (compilation, evaluations and checkpoints excluded, earlier runs
  included on resume) and tokens/s over the last steps;
- :class:`ProgressBar`: the step bar on the main process's terminal, and where messages go;
- :class:`MetricsHook`: writes each step's metrics row one step late (the host never waits on the
  step it just dispatched) and stops a run of non-finite steps;
- :class:`EvalHook`: the loss on the fixed validation batches, on schedule;
- :class:`CheckpointHook`: parameters, optimizer state and data position, on schedule.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from marin_optim.speedrun import results as res
from marin_optim.speedrun.checkpoint import Checkpointer
from marin_optim.speedrun.config import SpeedrunConfig
from marin_optim.speedrun.plots import Curve
from marin_optim.transforms.guards import check_nonfinite_run


@dataclass
class TrainState:
    """What the step loop advances: the parameters, the optimizer state, the last finished step and
    the number of training sequences consumed (the data position a checkpoint records)."""

    params: Any
    opt_state: Any
    step: int = 0
    consumed: int = 0


def due(step: int, is_last: bool, interval: int) -> bool:
    """Whether an every-``interval``-steps action runs after ``step``: on schedule and at the last step
    (``interval=0``: only at the last step)."""
    return is_last or bool(interval and step % interval == 0)


class Clock:
    """Training time and throughput. It runs while steps run; the trainer pauses it (after the
    device has finished) around evaluations and checkpoints and resumes it after them."""

    WINDOW = 20
    """Throughput is measured over this many ticks (steps)."""

    def __init__(self, training_time: float = 0.0) -> None:
        self.training_time = training_time
        """Seconds trained up to the last pause (a resumed run starts from its checkpoint's)."""
        self.tokens = 0
        """Tokens of the steps this process has dispatched."""
        self._segment_start = time.perf_counter()
        self._window: list[tuple[float, int]] = [(self._segment_start, 0)]

    def count(self, tokens: int) -> None:
        """Adds a dispatched step's tokens."""
        self.tokens += tokens

    def tick(self, in_flight: int = 0) -> tuple[float, float]:
        """``(training time so far, tokens per second over the last WINDOW ticks)``, now, when all
        but ``in_flight`` of the dispatched tokens are done (the step queued behind the one whose
        row is written is still running: counting it would overstate the first rows' rate)."""
        now = time.perf_counter()
        self._window.append((now, self.tokens - in_flight))
        del self._window[: -self.WINDOW]
        (t0, n0), (t1, n1) = self._window[0], self._window[-1]
        rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
        return self.training_time + (now - self._segment_start), rate

    def pause(self) -> None:
        """Ends the running segment: its time joins ``training_time``."""
        self.training_time += time.perf_counter() - self._segment_start

    def resume(self) -> None:
        """Starts a segment now; the throughput window starts afresh with it."""
        self._segment_start = time.perf_counter()
        self._window[:] = [(self._segment_start, self.tokens)]


class ProgressBar:
    """The step progress bar (tqdm) on the main process. ``disable=None``: a bar on a terminal,
    nothing in logs and pipes, where :meth:`message` goes to ``say`` instead."""

    def __init__(self, total: int, initial: int, enabled: bool, say: Callable[[str], None]) -> None:
        self._say = say
        self._bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, initial=initial, unit="step", dynamic_ncols=True, disable=None, file=sys.stderr
            )

    def update(self) -> None:
        """One more step done."""
        if self._bar is not None:
            self._bar.update(1)

    def show(self, loss: float, tokens_per_second: float, learning_rate: float) -> None:
        """The latest training loss, throughput and learning rate beside the bar."""
        if self._bar is not None:
            self._bar.set_postfix(
                loss=f"{loss:.3f}", tok_s=f"{tokens_per_second:,.0f}", lr=f"{learning_rate:.2e}"
            )

    def message(self, msg: str) -> None:
        """A line above the bar, or through ``say`` when no bar is shown."""
        if self._bar is not None and not self._bar.disable:
            self._bar.write(msg)
        else:
            self._say(msg)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class MetricsHook:
    """Holds the metrics of the step just dispatched and writes their row when the next step has been
    queued (or at a pause), so reading them never stalls the device. Each row: ``step``, ``tokens``,
    ``training_time``, ``tokens_per_second`` and every value the step returned (``loss`` and
    ``hyperparams(state)``). Raises ``NonFiniteError`` after ``max_nonfinite_steps`` non-finite
    steps in a row."""

    def __init__(
        self,
        log: res.MetricsLog,
        curve: Curve,
        clock: Clock,
        progress: ProgressBar,
        tokens_per_step: int,
        max_nonfinite_steps: int,
    ) -> None:
        self.log = log
        self.curve = curve
        self.clock = clock
        self.progress = progress
        self.tokens_per_step = tokens_per_step
        self.max_nonfinite_steps = max_nonfinite_steps
        self.last_loss = math.nan
        """The training loss of the last row written (NaN before the first)."""
        self._pending: tuple[int, Any] | None = None

    def push(self, step: int, values: Any) -> None:
        """Writes the previous step's row, then holds ``values`` (device arrays) of ``step``, which
        was dispatched (and counted by the clock) just before."""
        self.drain(in_flight=self.tokens_per_step)
        self._pending = (step, values)

    def drain(self, in_flight: int = 0) -> None:
        """Writes the held step's row (reading its values waits for that step only); ``in_flight``:
        the tokens of steps dispatched after it, still running."""
        if self._pending is None:
            return
        step, values = self._pending
        self._pending = None
        values = {k: _scalar(v) for k, v in jax.device_get(values).items()}
        self.last_loss = values["loss"]
        if "skip/consecutive_nonfinite" in values:
            # The guard already turned these steps into no-ops; stop before wasting more.
            check_nonfinite_run(
                values["skip/consecutive_nonfinite"], values["skip/nonfinite_steps"], self.max_nonfinite_steps
            )
        training_time, rate = self.clock.tick(in_flight)
        row = {
            "step": step,
            "tokens": step * self.tokens_per_step,
            "training_time": training_time,
            "tokens_per_second": rate,
            **values,
        }
        self.log.write(row)
        self.curve.train_steps.append(step)
        self.curve.train_loss.append(self.last_loss)
        self.progress.show(self.last_loss, rate, values.get("learning_rate", math.nan))


class EvalHook:
    """The mean loss over the fixed validation batches, written as an ``eval_loss`` row (with
    ``eval_bpb`` and, when the data has one, ``eval_gap_to_floor``) and added to the curve."""

    def __init__(
        self,
        eval_fn: Callable[[Any, Any, jax.Array], jax.Array],
        batches: Sequence[jax.Array],
        log: res.MetricsLog,
        curve: Curve,
        loss_floor: float | None,
        interval: int,
    ) -> None:
        self.eval_fn = eval_fn
        self.batches = batches
        self.log = log
        self.curve = curve
        self.loss_floor = loss_floor
        self.interval = interval

    def due(self, step: int, is_last: bool) -> bool:
        """Every ``interval`` steps and at the last step."""
        return due(step, is_last, self.interval)

    def evaluate(self, step: int, state: TrainState) -> float:
        """Evaluates ``state`` (the optimizer's evaluation point, see ``make_step_functions``) and
        records it as step ``step``'s evaluation."""
        losses = [self.eval_fn(state.params, state.opt_state, b) for b in self.batches]
        loss = float(np.mean(jax.device_get(losses)))
        row = {"step": step, "eval_loss": loss, "eval_bpb": loss / math.log(2)}
        if self.loss_floor is not None:
            row["eval_gap_to_floor"] = loss - self.loss_floor
        self.log.write(row)
        self.curve.eval_steps.append(step)
        self.curve.eval_loss.append(loss)
        return loss


class CheckpointHook:
    """Saves the parameters, the optimizer state and ``meta`` (step, sequences consumed, training
    time, data fingerprint, resolved config) every ``interval`` steps and at the last step."""

    def __init__(
        self, checkpointer: Checkpointer, interval: int, cfg: SpeedrunConfig, data_fingerprint: str
    ) -> None:
        self.checkpointer = checkpointer
        self.interval = interval
        self.cfg = cfg
        self.data_fingerprint = data_fingerprint

    def due(self, step: int, is_last: bool) -> bool:
        """Every ``interval`` steps and at the last step."""
        return due(step, is_last, self.interval)

    def save(self, state: TrainState, training_time: float) -> None:
        """Checkpoints ``state`` at its step (synchronously: the next step donates its buffers)."""
        meta = {
            "step": state.step,
            "sequences_consumed": state.consumed,
            "training_time": training_time,
            "data_fingerprint": self.data_fingerprint,
            "config": self.cfg.to_dict(),
        }
        self.checkpointer.save(state.step, state.params, state.opt_state, meta)

    def close(self) -> None:
        self.checkpointer.close()


def _scalar(v: Any) -> Any:
    """A logged value as a Python scalar, or a list for an array of several values."""
    a = np.asarray(v)
    return a.item() if a.size == 1 else a.tolist()
