"""Faults injected into real speedruns: a NaN gradient and a loss spike are skipped and counted
(parameters and moments untouched, the run finishes); a run whose every step is non-finite stops
with one line and publishes nothing."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from speedrun_helpers import TINY_ARGS, tiny_config

from marin_optim.cli.training import speedrun_main
from marin_optim.speedrun import results as res
from marin_optim.speedrun import run_speedrun
from marin_optim.speedrun.checkpoint import load_params
from marin_optim.transforms.guards import NonFiniteError

ONE_DEVICE = ["--train.mesh.data", "1"]
EVERY_STEP = ["--train.checkpoint_interval", "1", "--train.checkpoints_to_keep", "100"]


def quiet(_msg: str) -> None:
    pass


def at_step(k: int, loss_fn, grad_fn):
    """A ``perturb`` that changes the loss and the gradients of step ``k`` only."""

    def perturb(step, loss, grads):
        hit = step == k
        loss = jnp.where(hit, loss_fn(loss), loss)
        grads = jax.tree.map(lambda g: jnp.where(hit, grad_fn(g), g), grads)
        return loss, grads

    return perturb


def unchanged_by_step(ckpt_dir, k: int) -> tuple[list[str], list[str]]:
    """(arrays equal between the checkpoints of steps k-1 and k, arrays that differ)."""
    before, after = load_params(ckpt_dir, k - 1), load_params(ckpt_dir, k)
    same = [n for n in before if np.array_equal(before[n], after[n])]
    return same, [n for n in before if n not in same]


def rows_by_step(run_dir) -> dict[int, dict]:
    return {r["step"]: r for r in res.read_metrics(run_dir / res.METRICS) if "loss" in r}


@pytest.mark.slow
def test_nan_gradient_is_skipped_counted_and_the_run_finishes(tmp_path):
    run_dir = tmp_path / "nan"
    cfg = tiny_config(run_dir, *ONE_DEVICE, *EVERY_STEP)
    nan = lambda x: jnp.full_like(x, jnp.nan)
    result = run_speedrun(cfg, log=quiet, perturb=at_step(5, lambda loss: loss, nan))

    assert math.isfinite(result.run_info["eval_loss"])
    rows = rows_by_step(run_dir)
    assert rows[5]["skip/last_skipped"] is True
    assert [rows[s]["skip/nonfinite_steps"] for s in (4, 5, 6, 12)] == [0, 1, 1, 1]
    assert [rows[s]["skip/skipped_steps"] for s in (4, 5, 12)] == [0, 1, 1]
    assert not any(rows[s]["skip/last_skipped"] for s in rows if s != 5)

    # The skipped step changed no parameter and no moment; only the guard's own counters moved.
    same, changed = unchanged_by_step(run_dir / res.CHECKPOINTS, 5)
    assert all(not n.startswith("params.") for n in changed), changed
    assert any(".mu." in n for n in same) and any(".nu." in n for n in same)
    assert all(n.startswith("opt_state.") and ".inner_state.inner_state." not in n for n in changed), changed
    # ... while a normal step changes every parameter.
    _, changed_by_6 = unchanged_by_step(run_dir / res.CHECKPOINTS, 6)
    assert sum(n.startswith("params.") for n in changed_by_6) == sum(n.startswith("params.") for n in same)


@pytest.mark.slow
@pytest.mark.extended
def test_loss_spike_is_skipped_by_skip_bad_steps(tmp_path):
    run_dir = tmp_path / "spike"
    cfg = tiny_config(
        run_dir, *ONE_DEVICE, *EVERY_STEP,
        "--optimizer.skip_bad_steps", "true", "--optimizer.skip_window", "8",
    )  # fmt: skip
    result = run_speedrun(cfg, log=quiet, perturb=at_step(9, lambda loss: 50.0 * loss, lambda g: 50.0 * g))

    assert math.isfinite(result.run_info["eval_loss"])
    rows = rows_by_step(run_dir)
    assert rows[9]["skip/last_skipped"] is True and rows[9]["skip/loss_zscore"] > 6
    assert rows[12]["skip/skipped_steps"] == 1 and rows[12]["skip/nonfinite_steps"] == 0
    _, changed = unchanged_by_step(run_dir / res.CHECKPOINTS, 9)
    assert all(not n.startswith("params.") for n in changed), changed

    # Without the spike rule the same spike is taken: the step changes the parameters.
    other = tmp_path / "taken"
    run_speedrun(
        tiny_config(other, *ONE_DEVICE, *EVERY_STEP),
        log=quiet,
        perturb=at_step(9, lambda loss: 50.0 * loss, lambda g: 50.0 * g),
    )
    _, changed = unchanged_by_step(other / res.CHECKPOINTS, 9)
    assert any(n.startswith("params.") for n in changed)


@pytest.mark.slow
@pytest.mark.extended
def test_a_run_that_stays_non_finite_stops_with_one_line_and_publishes_nothing(tmp_path, capsys):
    run_dir = tmp_path / "diverged"
    cfg = tiny_config(run_dir, *ONE_DEVICE, "--optimizer.max_nonfinite_steps", "3")

    def from_step_3(step, loss, grads):
        bad = step >= 3
        return jnp.where(bad, jnp.nan, loss), jax.tree.map(lambda g: jnp.where(bad, jnp.nan, g), grads)

    with pytest.raises(NonFiniteError, match="3 consecutive steps"):
        run_speedrun(cfg, log=quiet, perturb=from_step_3)
    assert not (run_dir / res.RESULTS).exists()
    # The last good checkpoint (step 4 holds two skipped steps, all finite) is there to resume from.
    ckpt = load_params(run_dir / res.CHECKPOINTS)
    assert all(np.all(np.isfinite(v)) for v in ckpt.values())

    # From the CLI, a genuinely diverging run (a huge learning rate overflows the logits): exit 1, one line.
    rc = speedrun_main(
        [*TINY_ARGS, *ONE_DEVICE, "--output_dir", str(tmp_path / "cli"),
         "--optimizer.learning_rate", "1e30", "--optimizer.max_nonfinite_steps", "2"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1, err
    assert err.count("\n") == 1 and "stopped:" in err and "max_nonfinite_steps=2" in err
    assert not (tmp_path / "cli" / res.RESULTS).exists()
