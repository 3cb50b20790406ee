"""The trainer on one device: the default run learns, outputs are complete, accumulation and the
Markov floor are right."""

from __future__ import annotations

import json
import math

import pytest
from speedrun_helpers import config_from_args

from marin_optim import hyperparams
from marin_optim.speedrun import SpeedrunConfig, run_speedrun
from marin_optim.speedrun import results as res


def quiet(_msg: str) -> None:
    pass


@pytest.mark.slow
def test_default_config_learns_and_writes_every_output(tmp_path):
    """The default `marin-optim speedrun` config, shortened to 30 steps: eval loss clearly falls."""
    cfg = config_from_args(
        [
            "--train.num_train_steps", "30",
            "--train.eval_interval", "15",
            "--train.eval_sequences", "32",
            "--train.mesh.data", "1",
            "--output_dir", str(tmp_path / "run"),
        ],
    )  # fmt: skip
    assert cfg.model.preset == "cpu" and cfg.optimizer_name == "adam" and cfg.data.resolved_source == "stdlib"
    result = run_speedrun(cfg, log=quiet, keep_state=True)
    info = result.run_info
    assert info["initial_eval_loss"] > 5.0  # ~ln(256) at initialisation
    assert info["eval_loss"] < info["initial_eval_loss"] - 1.5
    assert info["eval_steps"] == [0, 15, 30]
    assert info["eval_losses"] == sorted(info["eval_losses"], reverse=True)
    assert math.isclose(info["eval_bpb"], info["eval_loss"] / math.log(2))

    # Marin's results fields.
    assert info["model_size"] == cfg.model.num_parameters()
    assert info["total_tokens"] == 30 * cfg.train.batch_size * cfg.train.seq_len
    assert info["model_flops"] == 3 * info["model_flops_per_token"] * info["total_tokens"]
    assert info["training_time"] > 0 and info["tokens_per_second"] > 0
    assert info["config"]["optimizer"]["type"] == "adam"

    run_dir = tmp_path / "run"
    for name in (res.RESULTS, res.METRICS, res.CONFIG, res.PLOT):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / res.PARTIAL_METRICS).exists()
    assert (run_dir / res.PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert SpeedrunConfig.from_yaml((run_dir / res.CONFIG).read_text()) == cfg

    rows = res.read_metrics(run_dir / res.METRICS)
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 31))
    # Every value hyperparams(state) exposes is logged at every step.
    expected = set(hyperparams(result.opt_state))
    assert {"learning_rate", "weight_decay", "grad_norm"} <= expected
    for r in train_rows:
        assert expected <= set(r), expected - set(r)
    # Warmup then cosine: the logged LR rises to the peak and ends below it.
    lrs = [r["learning_rate"] for r in train_rows]
    assert max(lrs) == pytest.approx(cfg.optimizer.learning_rate, rel=1e-5)
    assert lrs[-1] < max(lrs)
    assert (
        json.loads((run_dir / res.RESULTS).read_text())["runs"][0]["run_info"]["eval_loss"]
        == info["eval_loss"]
    )


def test_markov_floor_and_gradient_accumulation(tiny):
    """On the Markov source: the run reports its gap to the entropy floor, and accumulating two
    microbatches gives the same training as one full batch."""
    markov = (
        "--data.source", "markov",
        "--data.markov_vocab", "16",
        "--data.markov_train_tokens", "20000",
        "--data.markov_val_tokens", "4096",
        "--train.num_train_steps", "6",
        "--train.mesh.data", "1",
    )  # fmt: skip
    full = run_speedrun(tiny(*markov, name="full"), log=quiet)
    accum = run_speedrun(tiny(*markov, "--train.grad_accum", "2", name="accum"), log=quiet)

    info = full.run_info
    floor = info["loss_floor"]
    assert 0 < floor < math.log(16)
    assert info["eval_gap_to_floor"] == pytest.approx(info["eval_loss"] - floor)
    assert info["eval_loss"] > floor  # no model beats the entropy rate
    assert info["data"]["name"].startswith("markov(")

    a = [r["loss"] for r in res.read_metrics(full.run_dir / res.METRICS) if "loss" in r]
    b = [r["loss"] for r in res.read_metrics(accum.run_dir / res.METRICS) if "loss" in r]
    assert len(a) == len(b) == 6
    # Same data, same update; only the order of the float32 sums differs.
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4
    assert abs(accum.run_info["eval_loss"] - info["eval_loss"]) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize(
    "optimizer",
    [
        {"type": "sam"},
        # the averaged evaluation point twice more: the extended tier's (pytest --extended)
        pytest.param({"type": "schedule_free_adamw"}, marks=pytest.mark.extended),
        pytest.param(
            {"type": "adam", "model_averaging": {"type": "ema", "beta": 0.5}}, marks=pytest.mark.extended
        ),
    ],
)
def test_optimizers_needing_the_loss_closure_or_an_averaged_eval_point(tiny, optimizer):
    """SAM differentiates the obj_fn the trainer passes to update(); schedule-free and model
    averaging are evaluated at their averaged parameters (eval_params). All train through the
    same loop."""
    from marin_optim import OptimizerConfig

    cfg = tiny("--train.num_train_steps", "4", "--train.eval_sequences", "8", "--train.mesh.data", "1")
    info = run_speedrun(cfg.replace(optimizer=OptimizerConfig.from_dict(optimizer)), log=quiet).run_info
    assert info["optimizer"] == optimizer["type"]
    assert math.isfinite(info["eval_loss"]) and info["eval_loss"] < info["initial_eval_loss"]


def test_throughput_counts_only_finished_steps(monkeypatch):
    # a row is written once the next step is queued: that step's tokens are not yet done
    from marin_optim.speedrun import hooks

    now = [0.0]
    monkeypatch.setattr(hooks.time, "perf_counter", lambda: now[0])
    clock = hooks.Clock()
    clock.resume()
    clock.count(100)  # step 1 dispatched
    clock.count(100)  # step 2 dispatched; step 1's row is written when step 1 is done, at t=1
    now[0] = 1.0
    assert clock.tick(in_flight=100) == (1.0, 100.0)
    now[0] = 2.0
    assert clock.tick() == (2.0, 100.0)  # a pause: nothing in flight


def test_smoothing_steps_over_a_skipped_steps_loss():
    from marin_optim.speedrun.plots import smooth

    out = smooth([3.0, math.nan, 2.0, math.inf])
    assert out[:2] == pytest.approx([3.0, 3.0]) and out[2] == pytest.approx((0.27 + 0.2) / 0.19)
    assert out[3] == out[2]
    assert math.isnan(smooth([math.nan, 1.0])[0]) and smooth([math.nan, 1.0])[1] == 1.0
