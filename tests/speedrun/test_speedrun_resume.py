"""Kill and resume: a SIGKILLed run continues to bitwise the same parameters; a changed config is
refused; a failed run never overwrites a finished run's results."""

from __future__ import annotations

import shutil
import textwrap

import numpy as np
import pytest
from speedrun_helpers import REPO, TINY_ARGS, run_python, tiny_config

from marin_optim.cli.training import speedrun_main
from marin_optim.speedrun import results as res
from marin_optim.speedrun import run_speedrun
from marin_optim.speedrun.checkpoint import load_params

ONE_DEVICE = ["--train.mesh.data", "1"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted tiny run: 12 steps, checkpoints every 4."""
    run_dir = tmp_path_factory.mktemp("speedrun") / "uninterrupted"
    run_speedrun(tiny_config(run_dir, *ONE_DEVICE), log=lambda _m: None)
    return run_dir


def run_killed(run_dir, setup: str = "", hooks: str = "[]"):
    """A tiny run in a subprocess that SIGKILLs itself where ``setup``/``hooks`` call ``die()``."""
    return run_python(
        textwrap.dedent(
            f"""
            import os, signal, sys
            sys.path.insert(0, {str(REPO / "tests" / "speedrun")!r})
            from speedrun_helpers import tiny_config
            from marin_optim.speedrun import run_speedrun
            def die(*_args, **_kwargs):
                os.kill(os.getpid(), signal.SIGKILL)
            """
        )
        + textwrap.dedent(setup)
        + f"\nrun_speedrun(tiny_config({str(run_dir)!r}, *{ONE_DEVICE!r}), hooks={hooks})\n"
    )


def assert_same_checkpoints(a_dir, b_dir, step: int) -> None:
    """Every saved array (parameters and optimizer state) bitwise equal."""
    a, b = load_params(a_dir / res.CHECKPOINTS, step), load_params(b_dir / res.CHECKPOINTS, step)
    assert a.keys() == b.keys() and any(k.startswith("opt_state.") for k in a)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``marin-optim speedrun ARGV`` in this process: (exit status, stdout, stderr)."""
    rc = speedrun_main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.slow
def test_kill_and_resume_gives_identical_params(finished, tmp_path, capsys):
    run_dir = tmp_path / "killed"
    # A real SIGKILL at step 6: no cleanup, the last checkpoint is step 4.
    killed = run_killed(run_dir, hooks="[lambda step: step == 6 and die()]")
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

    assert_same_checkpoints(finished, run_dir, 12)  # bitwise, optimizer state included

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


@pytest.mark.slow
def test_a_diverged_run_with_its_guard_off_publishes_nothing(finished, tmp_path):
    from marin_optim.transforms.guards import NonFiniteError

    run_dir = tmp_path / "copy"
    shutil.copytree(finished, run_dir)
    before = (run_dir / res.RESULTS).read_bytes()
    args = ["--optimizer.learning_rate", "1e30", "--optimizer.skip_nonfinite", "false"]
    with pytest.raises(NonFiniteError, match="final eval loss nan: the run diverged; nothing published"):
        run_speedrun(tiny_config(run_dir, *ONE_DEVICE, *args), log=lambda _m: None)
    assert (run_dir / res.RESULTS).read_bytes() == before


@pytest.mark.slow
def test_a_resume_after_the_metrics_were_published_keeps_their_history(finished, tmp_path, capsys):
    # killed between publishing metrics.jsonl and writing results.json: no unfinished metrics left
    run_dir = tmp_path / "published"
    shutil.copytree(finished, run_dir)
    (run_dir / res.RESULTS).unlink()
    rc, _, err = cli(capsys, *TINY_ARGS, *ONE_DEVICE, "--output_dir", str(run_dir), "--resume", "true")
    assert rc == 0, err
    assert res.read_metrics(run_dir / res.METRICS) == res.read_metrics(finished / res.METRICS)
    info, ref = res.read_results(run_dir), res.read_results(finished)
    assert (info["eval_loss"], info["initial_eval_loss"]) == (ref["eval_loss"], ref["initial_eval_loss"])
    # its config.yaml reruns it from the start, resume flags cleared
    assert "resume: false" in (run_dir / res.CONFIG).read_text().splitlines()

    # a finished run extended by 4 steps: its first 12 steps' losses stay in its history
    longer = ["--train.num_train_steps", "16", "--resume", "true", "--allow_config_change", "true"]
    rc, out, err = cli(capsys, *TINY_ARGS, *ONE_DEVICE, "--output_dir", str(run_dir), *longer)
    assert rc == 0 and "at step 12" in out, err
    steps = [r["step"] for r in res.read_metrics(run_dir / res.METRICS) if "loss" in r]
    assert steps == list(range(1, 17))


@pytest.mark.slow
def test_an_earlier_runs_results_are_not_taken_for_the_checkpoints(finished, tmp_path, capsys):
    # a second run in a finished run's directory, killed before its results.json: the first run's
    # results are still there, and a resume must publish the second's, not return the first's
    run_dir = tmp_path / "second"
    shutil.copytree(finished, run_dir)
    (run_dir / f"{res.CHECKPOINTS}.removing" / "4").mkdir(parents=True)  # a kill while clearing
    other = [*TINY_ARGS, *ONE_DEVICE, "--output_dir", str(run_dir), "--optimizer.learning_rate", "0.001"]
    rc, _, err = cli(capsys, *other)
    assert rc == 0, err
    assert not (run_dir / f"{res.CHECKPOINTS}.removing").exists()
    second = res.read_results(run_dir)
    shutil.copy(finished / res.RESULTS, run_dir / res.RESULTS)
    rc, out, err = cli(capsys, *other, "--resume", "true")
    assert rc == 0 and "already finished" not in out, err
    assert (
        res.read_results(run_dir)["eval_loss"]
        == second["eval_loss"]
        != res.read_results(finished)["eval_loss"]
    )


@pytest.mark.slow
def test_kill_during_a_checkpoint_write_leaves_the_previous_one_and_resume_works(finished, tmp_path, capsys):
    run_dir = tmp_path / "killed_mid_write"
    # SIGKILL inside orbax's write of the step-8 checkpoint, after its directory is created.
    killed = run_killed(
        run_dir,
        setup="""
        import orbax.checkpoint as ocp
        from marin_optim.speedrun.checkpoint import Checkpointer

        real_save = Checkpointer.save
        def save(self, step, *args):
            if step == 8:
                ocp.JsonCheckpointHandler.save = ocp.JsonCheckpointHandler.async_save = die
            return real_save(self, step, *args)
        Checkpointer.save = save
        """,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    entries = sorted(p.name for p in (run_dir / res.CHECKPOINTS).iterdir())
    assert [n for n in entries if n.isdigit()] == ["4"], entries
    assert any(n.startswith("8") and not n.isdigit() for n in entries), entries  # the unfinished write
    assert not (run_dir / res.RESULTS).exists()

    rc, out, err = cli(capsys, *TINY_ARGS, *ONE_DEVICE, "--output_dir", str(run_dir), "--resume", "true")
    assert rc == 0, err
    assert "at step 4" in out
    assert_same_checkpoints(finished, run_dir, 12)


@pytest.fixture(scope="module")
def stopped_at_4(tmp_path_factory):
    """A tiny run stopped after step 6; its last checkpoint is step 4."""
    run_dir = tmp_path_factory.mktemp("speedrun") / "stopped"

    def stop(step: int) -> None:
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_speedrun(tiny_config(run_dir, *ONE_DEVICE), hooks=[stop], log=lambda _m: None)
    return run_dir


def resume(capsys, stopped_at_4, tmp_path, *argv: str) -> tuple[int, str, str, object]:
    run_dir = tmp_path / "resumed"
    shutil.copytree(stopped_at_4, run_dir)
    rc, out, err = cli(
        capsys, *TINY_ARGS, *ONE_DEVICE, "--output_dir", str(run_dir), "--resume", "true", *argv
    )
    return rc, out, err, run_dir


def lr_at(run_dir, step: int) -> float:
    return next(r["learning_rate"] for r in res.read_metrics(run_dir / res.METRICS) if r.get("step") == step)


@pytest.mark.slow
@pytest.mark.extended
def test_optimizer_resume_override_takes_the_configs_values(stopped_at_4, finished, tmp_path, capsys):
    rc, out, err, run_dir = resume(capsys, stopped_at_4, tmp_path, "--optimizer.learning_rate", "0.001",
                                   "--optimizer_resume", "override")  # fmt: skip
    assert rc == 0, err
    assert "optimizer values from override" in out
    assert res.read_results(run_dir)["config"]["optimizer"]["learning_rate"] == 0.001
    # The schedule continues from the checkpoint's step with the new peak: a third of the old LR.
    assert lr_at(run_dir, 5) == pytest.approx(lr_at(finished, 5) / 3, rel=1e-6)


@pytest.mark.slow
@pytest.mark.extended
def test_optimizer_resume_checkpoint_keeps_the_checkpoints_values_except_fixed_fields(
    stopped_at_4, finished, tmp_path, capsys
):
    rc, _, err, run_dir = resume(
        capsys, stopped_at_4, tmp_path, "--optimizer.learning_rate", "0.001", "--optimizer.beta2", "0.99",
        "--optimizer.fixed_fields", "[beta2]", "--optimizer_resume", "checkpoint",
    )  # fmt: skip
    assert rc == 0, err
    optimizer = res.read_results(run_dir)["config"]["optimizer"]
    assert optimizer["learning_rate"] == 0.003  # the checkpoint's
    assert optimizer["beta2"] == 0.99  # fixed: never taken from a checkpoint
    assert lr_at(run_dir, 5) == pytest.approx(lr_at(finished, 5), rel=1e-6)


@pytest.mark.slow
@pytest.mark.extended
def test_a_different_optimizer_needs_reset_optimizer_state(stopped_at_4, finished, tmp_path, capsys):
    rc, _, err, _ = resume(capsys, stopped_at_4, tmp_path, "--optimizer.type", "lion")
    assert rc == 2 and err.count("\n") == 1
    assert "'lion'" in err and "'adam'" in err and "--reset_optimizer_state true" in err

    rc, out, err, run_dir = resume(
        capsys,
        stopped_at_4,
        tmp_path / "reset",
        "--optimizer.type",
        "lion",
        "--reset_optimizer_state",
        "true",
    )
    assert rc == 0, err
    assert "optimizer state reset" in out
    info = res.read_results(run_dir)
    assert info["config"]["optimizer"]["type"] == "lion"
    # The step count (hence the schedule) came from the checkpoint: step 5's LR is the schedule's
    # value at step 5, as in the uninterrupted run (same peak LR and schedule).
    assert lr_at(run_dir, 5) == pytest.approx(lr_at(finished, 5), rel=1e-6)
    # The parameters came from the checkpoint: training goes on from there, not from scratch.
    first = next(r for r in res.read_metrics(run_dir / res.METRICS) if r.get("step") == 5)
    assert first["loss"] < 5.0  # ~ln(256) = 5.55 at initialisation


@pytest.mark.slow
def test_a_state_that_no_longer_fits_fails_before_compiling(stopped_at_4, tmp_path, capsys):
    # bfloat16 first moments: the saved float32 ones no longer fit.
    rc, _, err, _ = resume(
        capsys, stopped_at_4, tmp_path, "--optimizer.mu_dtype", "bfloat16", "--optimizer_resume", "override"
    )
    assert rc == 2 and err.count("\n") == 1
    assert "does not fit" in err and "reshaped: opt_state." in err and ".mu." in err
    assert "--reset_optimizer_state true" in err
