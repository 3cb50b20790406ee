"""Kill and resume: a SIGKILLed run continues to bitwise the same parameters; a changed config is
refused; a failed run never overwrites a finished run's results."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from speedrun_helpers import REPO, TINY_ARGS, run_python, tiny_config

from marin_optim.speedrun import results as res
from marin_optim.speedrun import run_speedrun
from marin_optim.speedrun.checkpoint import load_params
from marin_optim.speedrun.cli import speedrun_main

ONE_DEVICE = ["--train.mesh.data", "1"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted tiny run: 12 steps, checkpoints every 4."""
    run_dir = tmp_path_factory.mktemp("speedrun") / "uninterrupted"
    run_speedrun(tiny_config(run_dir, *ONE_DEVICE), log=lambda _m: None)
    return run_dir


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``marin-optim speedrun ARGV`` in this process: (exit status, stdout, stderr)."""
    rc = speedrun_main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.slow
def test_kill_and_resume_gives_identical_params(finished, tmp_path, capsys):
    run_dir = tmp_path / "killed"
    # A real SIGKILL at step 6: no cleanup, the last checkpoint is step 4.
    killed = run_python(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO / "tests" / "speedrun")!r})
        from speedrun_helpers import tiny_config
        from marin_optim.speedrun import run_speedrun
        def kill(step):
            if step == 6:
                os.kill(os.getpid(), signal.SIGKILL)
        run_speedrun(tiny_config({str(run_dir)!r}, *{ONE_DEVICE!r}), hooks=[kill])
        """
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (run_dir / res.RESULTS).exists()
    assert sorted(int(p.name) for p in (run_dir / res.CHECKPOINTS).iterdir() if p.name.isdigit()) == [4]

    # Without --resume the unfinished run is protected.
    rc, _, err = cli(capsys, *TINY_ARGS, *ONE_DEVICE, "--output_dir", str(run_dir))
    assert rc == 2 and err.count("\n") == 1 and "--resume true" in err

    # A different config is refused, naming every differing field.
    rc, _, line = cli(
        capsys, *TINY_ARGS, *ONE_DEVICE, "--output_dir", str(run_dir), "--resume", "true",
        "--train.batch_size", "16", "--optimizer.beta2", "0.99",
    )  # fmt: skip
    assert rc == 2 and line.count("\n") == 1
    assert "train.batch_size: 8 -> 16" in line and "optimizer.beta2: 0.95 -> 0.99" in line
    assert "--allow_config_change" in line

    # The resumed run is a new process (this one), as after a real crash.
    rc, out, err = cli(capsys, *TINY_ARGS, *ONE_DEVICE, "--output_dir", str(run_dir), "--resume", "true")
    assert rc == 0, err
    assert "resumed from" in out and "at step 4" in out

    a, b = load_params(finished / res.CHECKPOINTS, 12), load_params(run_dir / res.CHECKPOINTS, 12)
    assert a.keys() == b.keys() and any(k.startswith("opt_state.") for k in a)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)  # bitwise, optimizer state included

    rows_a = res.read_metrics(finished / res.METRICS)
    rows_b = res.read_metrics(run_dir / res.METRICS)
    loss_a = [(r["step"], r["loss"]) for r in rows_a if "loss" in r]
    loss_b = [(r["step"], r["loss"]) for r in rows_b if "loss" in r]
    assert loss_a == loss_b  # each step logged once, with the same values
    info_a, info_b = res.read_results(finished), res.read_results(run_dir)
    assert info_a["eval_loss"] == info_b["eval_loss"]

    # Resuming a finished run does nothing and keeps its results.
    rc, out, _ = cli(capsys, *TINY_ARGS, *ONE_DEVICE, "--output_dir", str(run_dir), "--resume", "true")
    assert rc == 0 and "already finished 12 steps" in out
    assert res.read_results(run_dir) == info_b


@pytest.mark.slow
def test_a_failed_run_never_overwrites_a_finished_runs_results(finished, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(finished, run_dir)
    before = {
        name: (run_dir / name).read_bytes() for name in (res.RESULTS, res.METRICS, res.CONFIG, res.PLOT)
    }

    def crash(step: int) -> None:
        if step == 2:
            raise RuntimeError("simulated failure")

    # A new run into the same directory (the earlier one finished, so no --resume is needed).
    with pytest.raises(RuntimeError, match="simulated failure"):
        run_speedrun(
            tiny_config(run_dir, *ONE_DEVICE, "--optimizer.learning_rate", "0.001"),
            hooks=[crash],
            log=lambda _m: None,
        )
    for name, data in before.items():
        assert (run_dir / name).read_bytes() == data, name
