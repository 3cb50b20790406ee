"""Inside Levanter's real ``train_lm``: optimizers Levanter lacks, their logged counters, and the guard.

Through the launcher (``python -m marin_optim.levanter train_lm``), as a user runs them.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from levanter_runs import series, train

from marin_optim.levanter import offline

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "optimizer",
    [
        {
            "type": "marin_optim.lion",
            "learning_rate": 3e-4,
            "group_overrides": [{"params": ["lm_head*"], "lr_multiplier": 0.5, "name": "head"}],
        },
        {"type": "marin_optim.sam", "base": {"type": "adamw", "learning_rate": 3e-3}},
        # the extended tier's (pytest --extended): an optax-signature config, and the other
        # optimizer that takes obj_fn (after SAM)
        pytest.param({"type": "marin_optim.optax_adamw", "learning_rate": 3e-3}, marks=pytest.mark.extended),
        pytest.param(
            {"type": "marin_optim.sophia", "learning_rate": 3e-3, "update_interval": 4},
            marks=pytest.mark.extended,
        ),
    ],
    ids=["lion", "sam", "optax_adamw", "sophia"],
)
def test_an_optimizer_levanter_lacks_trains_and_its_counters_reach_the_tracker(tmp_path, optimizer):
    metrics = train(tmp_path, optimizer, steps=12).metrics
    losses = series(metrics, "train/loss")
    assert len(losses) == 10 and np.all(np.isfinite(losses))
    assert losses[-3:].mean() < losses[0] - 0.1
    for name in ("skip/skipped_steps", "skip/nonfinite_steps", "skip/consecutive_nonfinite", "grad_norm"):
        assert len(series(metrics, f"optim/{name}")) == 10, name
    assert series(metrics, "optim/skip/skipped_steps")[-1] == 0
    if "group_overrides" in optimizer:
        # every group's learning rate reaches the tracker (Levanter logs the injected values)
        np.testing.assert_allclose(
            series(metrics, "optim/head__learning_rate"),
            0.5 * series(metrics, "optim/learning_rate"),
            rtol=1e-6,
        )
    if optimizer["type"] == "marin_optim.sam":
        # obj_fn reached SAM: the gradient at the perturbed point is a second, different one
        perturbed = series(metrics, "optim/sam_perturbed_grad_norm")
        assert len(perturbed) == 10 and not np.allclose(perturbed, series(metrics, "optim/grad_norm"))
    if optimizer["type"] == "marin_optim.sophia":
        # obj_fn reached Sophia: a Hessian estimate every 4 steps, counted in its state
        estimates = series(metrics, "optim/hessian_updates")
        assert len(estimates) == 10 and estimates[-1] == 3 and set(np.diff(estimates)) <= {0.0, 1.0}
        assert len(series(metrics, "optim/unclipped_fraction")) == 10


def test_max_nonfinite_steps_stops_a_levanter_run(tmp_path):
    """A learning rate of 1e30 makes the parameters overflow after one step; every later step is
    non-finite, skipped and counted, and the run stops at the limit instead of going on."""
    optimizer = {"type": "marin_optim.sgd", "learning_rate": 1e30, "max_nonfinite_steps": 3}
    # Levanter's own crash_on_nan would stop at the first NaN loss; leave those to our guard.
    run = train(tmp_path, optimizer, trainer={"crash_on_nan": False, "crash_on_inf": False}, expect_rc=1)
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m marin_optim.levanter: stopped: 3 consecutive steps had a NaN/inf")
    assert max(run.metrics) == 3  # stopped after step 3 of 20
    row = run.metrics[3]
    assert row["optim/skip/consecutive_nonfinite"] == 3
    assert row["optim/skip/nonfinite_steps"] == row["optim/skip/skipped_steps"] == 3


REPO = Path(__file__).resolve().parents[2]


def test_a_users_own_class_chosen_on_levanters_command_line(tmp_path):
    """The Marin guide's pattern: a user's OptimizerConfig subclass in their own script (here the
    Levanter-style Adamax of experiments/speedrun/user_adamax.py, with its own `build`), loaded with
    the launcher's --import and chosen with Levanter's own command-line overrides."""
    user = str(REPO / "experiments" / "speedrun" / "user_adamax.py")
    run = train(
        tmp_path,
        {},
        steps=12,
        launcher=["--import", user],
        extra_args=["--optimizer.type", "marin_optim.adamax", "--optimizer.learning_rate", "3e-3"],
    )
    losses = series(run.metrics, "train/loss")
    assert len(losses) == 10 and losses[-3:].mean() < losses[0] - 0.1
    assert 1e-3 < series(run.metrics, "optim/learning_rate").max() <= 3e-3
    assert "optim/grad_norm" not in run.metrics[11]  # its own build: no marin_optim statistics


@pytest.mark.extended
def test_the_python_form_of_the_levanter_example_trains(tmp_path):
    """experiments/levanter/speedrun.py: TrainLmConfig(optimizer=MuonConfig(...)), Levanter's main."""
    script = REPO / "experiments" / "levanter" / "speedrun.py"
    out = subprocess.run(
        [sys.executable, str(script), "--steps", "6", "--out", str(tmp_path / "run")],
        cwd=tmp_path,
        env=offline.offline_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("MuonConfig in Levanter's train_lm, 6 steps: train loss")
    eval_loss = float(line.rsplit(" ", 1)[1])
    assert math.isfinite(eval_loss) and eval_loss < math.log(256)  # below a uniform guess over bytes
