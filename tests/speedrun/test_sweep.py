"""``marin-optim sweep``: grids and their errors, the coordinate descent (on a loss function
whose optimum is known), resuming without rerunning, the speedup's interpolation, and real
sweeps of the tiny speedrun in this process, in worker processes and on Ray."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from speedrun_helpers import REPO, TINY_ARGS, tiny_config

from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError
from marin_optim.schedules import parse_schedule
from marin_optim.sweep import make_spec, run_sweep, steps_to_reach
from marin_optim.sweep.grids import (
    MAX_EXTENSIONS,
    WARMUPS,
    beyond,
    default_grid,
    near,
    parse_grid_option,
    significant,
)
from marin_optim.sweep.report import log_axis_at, sensitivity_figure
from marin_optim.sweep.search import SweepSpec, run_search
from marin_optim.sweep.trials import LocalRunner, Trial, TrialStore, cpu_shares, node_share, run_trial

# ---------------------------------------------------------------- grids and their errors


def test_parse_grid_option():
    assert parse_grid_option("learning_rate=1e-3, 3e-3") == (None, "learning_rate", (1e-3, 3e-3))
    assert parse_grid_option("adamw.beta2=0.95,0.99") == ("adamw", "beta2", (0.95, 0.99))
    for bad in ("learning_rate", "=1,2", "beta1=", "beta1=,"):
        with pytest.raises(ConfigError, match="--grid"):
            parse_grid_option(bad)


def test_default_grids_follow_the_defaults():
    adamw = OptimizerConfig.from_dict({"type": "adamw", "learning_rate": 0.002, "weight_decay": 0.0})
    assert default_grid(adamw, "learning_rate") == (0.0005, 0.001, 0.002, 0.004, 0.008)
    assert default_grid(adamw, "weight_decay") == (0.0, 0.01, 0.1)
    assert default_grid(adamw, "beta1") == (0.8, 0.9, 0.95)
    assert default_grid(adamw, "beta2") == (0.9, 0.95, 0.98)
    spec = make_spec(["muon"], baseline=None)
    assert list(spec.grids["muon"])[:2] == ["learning_rate", "adam_lr"]
    kron = make_spec(["kron"], baseline=None).grids["kron"]
    assert list(kron) == ["learning_rate", "warmup", "weight_decay", "beta1", "preconditioner_lr"]
    assert kron["preconditioner_lr"] == (0.025, 0.05, 0.1, 0.2, 0.4)
    assert beyond("preconditioner_lr", kron["preconditioner_lr"], "high") == 0.8
    # a doubling grid centres on the value as given, so the start is not run again rounded
    odd = OptimizerConfig.from_dict({"type": "adamw", "learning_rate": 0.00123456})
    assert default_grid(odd, "learning_rate") == (0.000309, 0.000617, 0.00123456, 0.00247, 0.00494)
    assert make_spec(["adamw"], fields=["warmup"], shared={"warmup": 0}).grids["adamw"]["warmup"] == WARMUPS


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"grids": ["adamw.beta1=0.9,1.5"]}, r"--grid adamw\.beta1=1\.5: .*beta1"),
        ({"grids": ["learning_rat=0.1"]}, r"not a field of any of the swept optimizers.*learning_rate"),
        ({"grids": ["adamx.beta1=0.9"]}, r"'adamx' is not one of the swept optimizers.*adamw"),
        ({"grids": ["learning_rate=nan"]}, "must be a finite number"),
        ({"fields": ["bta2"]}, r"--fields bta2: .*beta2"),
        ({"fields": ["epsilon"]}, r"no default grid for it; give its values with --grid adamw\.epsilon"),
        ({"fields": ["beta1"], "grids": ["beta2=0.9"]}, r"--grid beta2: beta2 is not among --fields"),
        ({"seeds": 0}, "--seeds=0"),
        ({"lengths": [2, 4]}, "--lengths=2,4"),
        ({"threshold": -1.0}, "--threshold=-1.0"),
        # 100 steps of warmup has no place on a grid of fractions of the run
        (
            {"shared": {"warmup": 100}},
            r"--fields warmup: adamw's warmup is 100 steps .*--grid adamw\.warmup=",
        ),
    ],
)
def test_bad_sweeps_are_refused_before_any_trial(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        make_spec(["adamw"], **kwargs)


def test_unknown_optimizer_names_its_close_matches():
    with pytest.raises(ConfigError, match="lion"):
        make_spec(["loin"])


def test_fields_and_grids_choose_what_is_swept():
    spec = make_spec(
        ["lion"], fields=["beta1", "learning_rate"], grids=["lion.learning_rate=1e-3,3e-3"], baseline="adamw"
    )
    assert spec.grids["lion"] == {"beta1": (0.8, 0.9, 0.95), "learning_rate": (1e-3, 3e-3)}
    assert list(spec.grids["adamw"]) == ["beta1", "learning_rate"]  # the baseline was added
    assert ("lion", "learning_rate") in spec.given and ("adamw", "learning_rate") not in spec.given


def write_start(directory, name: str, **fields: Any) -> None:
    """``directory/name.yaml``: a speedrun config (as a sweep's ``best/`` holds) with ``fields``."""
    opt = OptimizerConfig.from_dict({"type": name, **fields})
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.yaml").write_text(
        tiny_config(directory / "unused").replace(optimizer=opt).to_yaml()
    )


def test_shared_optimizer_fields_may_be_nested_and_one_no_optimizer_has_is_refused(tmp_path):
    start = tmp_path / "best"
    write_start(start, "adamw", learning_rate=0.002, lr_schedule={"type": "wsd", "decay_fraction": 0.1})
    shared = {"lr_schedule.type": "wsd", "lr_schedule.decay_fraction": 0.3, "adam_lr": 0.01}
    spec = make_spec(["muon"], start=start, shared=shared)
    adamw, muon = spec.optimizers["adamw"], spec.optimizers["muon"]
    # the started config keeps its own fields, the nested one set; adam_lr only where it is a field
    assert adamw.learning_rate == 0.002
    assert adamw.lr_schedule == parse_schedule({"type": "wsd", "decay_fraction": 0.3})
    assert muon.adam_lr == 0.01 and not hasattr(adamw, "adam_lr") and muon.lr_schedule == adamw.lr_schedule
    with pytest.raises(ConfigError, match=r"--optimizer\.warmpu: none of muon, adamw has .*'warmup'"):
        make_spec(["muon"], shared={"warmpu": 0.1})
    with pytest.raises(ConfigError, match="schedule 'cosine' has no field 'decay_fraction'"):
        make_spec(["lion"], shared={"lr_schedule.decay_fraction": 0.3})


def test_an_output_dir_that_cannot_be_made_is_refused_before_any_trial(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    spec = make_spec(["lion"], seeds=1)
    with pytest.raises(ConfigError, match=r"output_dir=.*: cannot create the directory"):
        run_sweep(tiny_config(tmp_path / "unused"), spec, blocker / "sweep", workers=2)
    with pytest.raises(ConfigError, match=r"output_dir=.*: a file, not a directory"):
        run_sweep(tiny_config(tmp_path / "unused"), spec, blocker)


def test_an_output_dir_that_cannot_be_made_is_refused_before_ray_starts(tmp_path, monkeypatch):
    import marin_optim.sweep as sweep

    started = []
    monkeypatch.setattr(sweep, "RayRunner", lambda *args: started.append(args))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"output_dir=.*: a file, not a directory"):
        run_sweep(tiny_config(tmp_path / "unused"), make_spec(["lion"], seeds=1), blocker, ray="local")
    assert started == [] and not (tmp_path / "unused").exists()


def test_start_takes_each_optimizer_from_its_file_and_centres_its_grids_there(tmp_path):
    start = tmp_path / "best"
    write_start(start, "adamw", learning_rate=0.002, beta1=0.7, warmup=0.2)
    spec = make_spec(["lion"], fields=["learning_rate", "beta1"], start=start, shared={"max_grad_norm": 0.5})
    adamw, lion = spec.optimizers["adamw"], spec.optimizers["lion"]
    assert (adamw.learning_rate, adamw.beta1, adamw.warmup, adamw.max_grad_norm) == (0.002, 0.7, 0.2, 0.5)
    assert spec.grids["adamw"] == {
        "learning_rate": (0.0005, 0.001, 0.002, 0.004, 0.008),
        "beta1": (0.5, 0.7, 0.8),
    }
    assert lion == OptimizerConfig.from_dict({"type": "lion", "max_grad_norm": 0.5})  # no lion.yaml
    # warmup's grid is the default one, with a start's neighbours when it lies beyond
    assert default_grid(adamw, "warmup") == (*WARMUPS, 0.3)
    assert default_grid(lion, "warmup") == WARMUPS
    assert spec.origins == {
        "lion": f"its defaults (no lion.yaml in {start})",
        "adamw": str(start / "adamw.yaml"),
    }
    # several directories: each optimizer's file is taken from the first that has one
    write_start(tmp_path / "other", "adamw", learning_rate=0.004)
    write_start(tmp_path / "other", "lion", learning_rate=0.001)
    both = make_spec(["lion"], start=[start, tmp_path / "other"])
    assert both.optimizers["adamw"] == OptimizerConfig.from_dict(
        {"type": "adamw", "learning_rate": 0.002, "beta1": 0.7, "warmup": 0.2}
    )
    assert both.optimizers["lion"].learning_rate == 0.001
    assert both.origins["lion"] == str(tmp_path / "other" / "lion.yaml")


@pytest.mark.parametrize(
    "write, match",
    [
        (
            lambda d: write_start(d, "lion") or (d / "lion.yaml").rename(d / "adamw.yaml"),
            "holds a lion config, not adamw",
        ),
        (
            lambda d: (d / "adamw.yaml").write_text("optimizer: {type: adamw, beta1: 2.0}\n"),
            r"adamw\.yaml: .*beta1",
        ),
        (lambda d: (d / "adamw.yaml").write_text("optimizer: [\n"), r"--start: .*adamw\.yaml: "),
    ],
)
def test_a_bad_start_file_is_refused_naming_it(tmp_path, write, match):
    tmp_path.joinpath("best").mkdir()
    write(tmp_path / "best")
    with pytest.raises(ConfigError, match=match):
        make_spec(["adamw"], start=tmp_path / "best")
    with pytest.raises(ConfigError, match=r"--start .*nowhere: not a directory"):
        make_spec(["adamw"], start=tmp_path / "nowhere")


# ---------------------------------------------------------------- the speedup


def test_steps_to_reach_interpolates_in_log_steps():
    steps, bound = steps_to_reach([100, 200, 400], [3.0, 2.8, 2.7], 2.9)
    assert bound == "" and steps == pytest.approx(100 * math.sqrt(2), rel=1e-12)
    assert steps_to_reach([100, 200, 400], [3.0, 2.8, 2.7], 2.75) == (pytest.approx(200 * math.sqrt(2)), "")
    assert steps_to_reach([1, 2, 4], [3.0, 2.8, 2.7], 3.0) == (1.0, "")
    assert steps_to_reach([1, 2, 4], [3.0, 2.8, 2.7], 3.1) == (1.0, "<")
    assert steps_to_reach([1, 2, 4], [3.0, 2.8, 2.7], 2.6) == (4.0, ">")
    # noise that makes 4x worse than 2x does not move the answer past 2x: a running minimum
    assert steps_to_reach([1, 2, 4], [3.0, 2.8, 2.9], 2.8) == (2.0, "")
    assert steps_to_reach([1, 2, 4], [3.0, math.inf, 2.7], 2.9)[1] == "failed"


# ---------------------------------------------------------------- the search, on a known loss


class Bowl:
    """A runner whose "final eval loss" is a function of the config with a known optimum:
    ``learning_rate`` at ``lr_star`` (quadratic in log2), ``beta1`` at ``beta1_star``,
    ``weight_decay`` nearly flat (below the threshold), longer runs lower; every trial counted."""

    def __init__(self, lr_star: float, diverge_above: float = math.inf, beta1_star: float = 0.95):
        self.lr_star = lr_star
        self.diverge_above = diverge_above
        self.beta1_star = beta1_star
        self.ran: list[Trial] = []

    def loss(self, opt: dict[str, Any], seed: int, steps: int, base_steps: int) -> float:
        return (
            3.0
            + 0.1 * math.log2(opt["learning_rate"] / self.lr_star) ** 2
            + 4.0 * (opt["beta1"] - self.beta1_star) ** 2
            + 0.001 * opt["weight_decay"]
            + 0.01 * seed
            - 0.3 * math.log2(steps / base_steps)
        )

    def run(self, base: dict[str, Any], trials: list[tuple[Trial, str]]) -> Iterator[dict[str, Any]]:
        for trial, run_dir in trials:
            self.ran.append(trial)
            row = {"key": trial.key, "label": trial.label, "optimizer": trial.optimizer, "seed": trial.seed,
                   "changes": trial.changes, "steps": trial.steps, "run_dir": run_dir}  # fmt: skip
            if trial.optimizer["learning_rate"] > self.diverge_above:
                yield {**row, "status": "failed", "reason": "diverged", "eval_loss": math.inf}
            else:
                loss = self.loss(trial.optimizer, trial.seed, trial.steps, base["train"]["num_train_steps"])
                yield {**row, "status": "ok", "eval_loss": loss}

    def close(self) -> None:
        pass


def bowl_spec(**kwargs: Any) -> SweepSpec:
    return make_spec(["lion"], fields=["learning_rate", "weight_decay", "beta1"], **kwargs)


def test_descent_finds_the_optimum_growing_the_learning_rate_grid(tmp_path):
    spec = bowl_spec(seeds=2, lengths=(1, 2, 4))
    base = tiny_config(tmp_path / "unused")
    lion_lr, adamw_lr = spec.optimizers["lion"].learning_rate, spec.optimizers["adamw"].learning_rate
    runner = Bowl(lr_star=16 * lion_lr, diverge_above=100 * lion_lr)  # 16x: beyond the 1/4..4 grid
    store, outcomes = run_search(base, spec, tmp_path / "sweep", runner, log=lambda _: None)

    lion = outcomes["lion"]
    assert lion.best.learning_rate == significant(16 * lion_lr)
    assert lion.best.beta1 == 0.95
    assert lion.best.weight_decay == spec.optimizers["lion"].weight_decay  # gains below the threshold
    tried = {t.optimizer["learning_rate"] for t in runner.ran if t.label == "lion"}
    assert significant(32 * lion_lr) in tried and significant(64 * lion_lr) not in tried
    # each step moves once, to its best: 4x (the default grid's end), then each value it grows to
    assert [(p["field"], p["value"]) for p in lion.path][:3] == [
        ("learning_rate", significant(k * lion_lr)) for k in (4, 8, 16)
    ]
    assert outcomes["adamw"].best.learning_rate == significant(runner.lr_star / lion_lr * adamw_lr)
    assert len(runner.ran) == len(store.rows) == len({t.key for t in runner.ran})  # each trial once
    assert [t.seed for t in lion.seed_trials] == [base.train.seed, base.train.seed + 1]
    assert sorted(outcomes["adamw"].length_trials) == [1, 2, 4]
    assert not outcomes["lion"].length_trials


class CoupledBowl(Bowl):
    """:class:`Bowl` whose learning rate optimum doubles, and lowers by 0.2, once ``beta1`` reaches
    0.95, which the descent finds after the learning rate in its first round."""

    def loss(self, opt: dict[str, Any], seed: int, steps: int, base_steps: int) -> float:
        loss = super().loss(opt, seed, steps, base_steps)
        if opt["beta1"] != 0.95:
            return loss
        moved = 0.1 * math.log2(opt["learning_rate"] / (2 * self.lr_star)) ** 2 - 0.2
        return loss - 0.1 * math.log2(opt["learning_rate"] / self.lr_star) ** 2 + moved


def test_a_later_round_tries_the_grown_grid_around_the_best(tmp_path):
    # round 1: the grid grows to 16x (32x tried, worse), then beta1 moves and the optimum becomes
    # 32x; round 2 must try 32x again (a default grid, 1/4..4, would not reach it) and grow to 64x
    spec = bowl_spec(seeds=1, lengths=(1, 2))
    base = tiny_config(tmp_path / "unused")
    lion_lr = spec.optimizers["lion"].learning_rate
    runner = CoupledBowl(lr_star=16 * lion_lr)
    _, outcomes = run_search(base, spec, tmp_path / "sweep", runner, log=lambda _: None)
    lion = outcomes["lion"]
    assert lion.best.beta1 == 0.95 and lion.best.learning_rate == significant(32 * lion_lr)
    assert [(p["round"], p["field"]) for p in lion.path][-1] == (2, "learning_rate")
    tried = [t.optimizer["learning_rate"] for t in runner.ran if t.label == "lion"]
    assert significant(64 * lion_lr) in tried and significant(128 * lion_lr) not in tried  # 4 growths
    # round 2 tries the grown grid near the best (within 4x of 16x), not all it grew through
    lion_runs = [t.optimizer for t in runner.ran if t.label == "lion"]
    assert min(o["learning_rate"] for o in lion_runs if o["beta1"] == 0.95) == significant(4 * lion_lr)


class Table(Bowl):
    """:class:`Bowl` whose loss is read from ``losses`` by learning rate (``default`` elsewhere)."""

    def __init__(self, losses: dict[float, float], default: float):
        super().__init__(lr_star=1.0)
        self.losses, self.default = losses, default

    def loss(self, opt: dict[str, Any], seed: int, steps: int, base_steps: int) -> float:
        return self.losses.get(opt["learning_rate"], self.default)


def test_a_step_moves_to_the_best_value_not_the_first_that_beats_the_threshold(tmp_path):
    # 2x and 4x both beat the start by more than the threshold (0.005); 4x is the best, though
    # not by the threshold over 2x. The search moves to 4x, the grid's end, so the grid grows.
    spec = make_spec(["lion"], fields=["learning_rate"], seeds=1, lengths=(1, 2), baseline=None)
    lr = spec.optimizers["lion"].learning_rate
    runner = Table({lr: 3.0, significant(2 * lr): 2.990, significant(4 * lr): 2.987}, default=3.05)
    base = tiny_config(tmp_path / "unused")
    _, outcomes = run_search(base, spec, tmp_path / "sweep", runner, log=lambda _: None)
    lion = outcomes["lion"]
    assert lion.best.learning_rate == significant(4 * lr)
    assert lion.path == [
        {"round": 1, "field": "learning_rate", "value": significant(4 * lr), "eval_loss": 2.987}
    ]
    assert significant(8 * lr) in {t.optimizer["learning_rate"] for t in runner.ran}


def test_a_given_grid_is_tried_whole_and_never_grows(tmp_path):
    # 1e-5 and 1e-2 lie beyond 4x of the default 6e-4, where a grown default grid is not tried
    spec = bowl_spec(seeds=1, lengths=(1, 2), baseline=None, grids=["lion.learning_rate=1e-5,1e-2"])
    runner = Bowl(lr_star=0.1)  # beyond the given grid's end
    _, outcomes = run_search(
        tiny_config(tmp_path / "unused"), spec, tmp_path / "sweep", runner, log=lambda _: None
    )
    tried = {t.optimizer["learning_rate"] for t in runner.ran}
    assert tried == {spec.optimizers["lion"].learning_rate, 1e-5, 1e-2}
    assert outcomes["lion"].best.learning_rate == 1e-2


def test_a_search_started_at_the_optimum_stays_there_in_one_round(tmp_path):
    base = tiny_config(tmp_path / "unused")
    lion_lr = OptimizerConfig.from_dict({"type": "lion"}).learning_rate
    runner = Bowl(lr_star=significant(16 * lion_lr))
    write_start(tmp_path / "best", "lion", learning_rate=runner.lr_star, beta1=0.95)
    spec = bowl_spec(seeds=1, lengths=(1, 2), baseline=None, start=tmp_path / "best")
    said: list[str] = []
    _, outcomes = run_search(base, spec, tmp_path / "sweep", runner, log=said.append)
    assert f"sweep: lion starts from {tmp_path / 'best' / 'lion.yaml'}" in said
    lion = outcomes["lion"]
    assert lion.best == spec.optimizers["lion"] and lion.path == []
    assert lion.changes == {"learning_rate": runner.lr_star, "beta1": 0.95}  # still from the defaults
    # one round: the start (its seed's run too), then each grid's other values once
    assert len(runner.ran) == 1 + sum(len(v) - 1 for v in spec.grids["lion"].values())


def test_grids_grow_along_their_ladders_and_learning_rates_stop_after_max_extensions(tmp_path):
    # beta1's default grid is 0.8..0.95 around lion's 0.9; the optimum 0.5 is two rungs below it.
    # The learning rate's optimum is far past what MAX_EXTENSIONS doublings reach: it stops there.
    spec = bowl_spec(seeds=1, lengths=(1, 2))
    base = tiny_config(tmp_path / "unused")
    lion_lr = spec.optimizers["lion"].learning_rate
    runner = Bowl(lr_star=1e6 * lion_lr, beta1_star=0.5)
    _, outcomes = run_search(base, spec, tmp_path / "sweep", runner, log=lambda _: None)
    lion = outcomes["lion"]
    reach = significant(4 * 2**MAX_EXTENSIONS * lion_lr)
    assert lion.best.learning_rate == reach and lion.best.beta1 == 0.5
    tried = [t.optimizer for t in runner.ran if t.label == "lion"]
    assert max(o["learning_rate"] for o in tried) == reach
    assert min(o["beta1"] for o in tried) == 0.5  # the ladder's end: nothing below is tried


def test_a_grid_grows_by_doubling_or_along_its_ladder():
    assert beyond("learning_rate", (1e-3, 2e-3, 4e-3), "high") == 8e-3
    assert beyond("adam_lr", (1e-3, 2e-3), "low") == 5e-4
    assert beyond("weight_decay", (0.0, 0.05, 0.1, 0.2), "high") == 0.4
    assert beyond("weight_decay", (0.0, 0.05, 0.1, 0.2), "low") is None  # already at 0
    assert beyond("warmup", WARMUPS, "high") == 0.3 and beyond("warmup", (0.3, 0.5), "high") == 0.7
    assert beyond("warmup", (0.5, 0.7), "high") is None
    assert beyond("beta2", (0.9, 0.95, 0.98), "low") == 0.8 and beyond("beta2", (0.99,), "high") == 0.995
    assert beyond("beta2", (0.8, 0.9), "low") == 0.7 and beyond("beta2", (0.5,), "low") is None
    assert beyond("momentum", (0.8, 0.9), "low") == 0.7 and beyond("momentum", (0.99,), "high") is None
    assert beyond("beta1", (0.93,), "high") == 0.95  # a value off the ladder joins it


def test_a_round_tries_a_doubling_grid_near_the_best_despite_rounding():
    grown = [significant(7e-4 * 2.0**k) for k in range(-2, 11)]  # 1.75e-4 .. 0.717
    # 0.179 (0.1792) and 0.717 (0.7168) are 4.006x apart once rounded: still within 4x
    assert near("learning_rate", grown, significant(7e-4 * 2**8)) == grown[8:]
    assert near("adam_lr", grown, 7e-4) == grown[:5]
    assert near("beta2", (0.8, 0.9, 0.95), 0.95) == [0.8, 0.9, 0.95]  # a ladder grid: all of it


@pytest.mark.parametrize("fields", [1, 3])
def test_a_sensitivity_plots_title_fits_its_figure(fields):
    # a sweep of one field (--fields learning_rate) draws one panel: its title was cut at both sides
    import matplotlib.pyplot as plt

    curves = {f"field{i}": [(1e-3, 2.0), (2e-3, 1.9)] for i in range(fields)}
    fig = sensitivity_figure("cautious", curves)
    fig.canvas.draw()
    (title,) = [t for t in fig.texts if t.get_text() == fig.get_suptitle()]
    box = title.get_window_extent()
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width
    plt.close(fig)


def test_a_sensitivity_plots_log_axis_labels_the_values_tried_only():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    xs = [4.8e-3, 9.6e-3, 1.92e-2, 3.84e-2]  # under a decade: matplotlib would label minor ticks
    ax.plot(xs, [2.0, 1.9, 1.85, 1.9])
    log_axis_at(ax, xs)
    fig.canvas.draw()
    assert list(ax.get_xticks()) == xs and len(ax.xaxis.get_minorticklocs()) == 0
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.0048", "0.0096", "0.0192", "0.0384"]
    plt.close(fig)


def test_a_given_zero_is_the_defaults_spelling():
    # `--grid warmup=0` (an int: 0 steps) is the same run as the default grid's 0.0 (0% of the
    # run): one trial, not two
    spec = make_spec(["lion"], fields=["warmup"], grids=["warmup=0,0.1"])
    assert spec.grids["lion"]["warmup"] == (0.0, 0.1)
    assert all(type(v) is float for v in spec.grids["lion"]["warmup"])
    assert make_spec(["lion"], fields=["warmup"], grids=["warmup=5,0.1"]).grids["lion"]["warmup"] == (5, 0.1)


def test_a_diverged_trial_loses_and_is_reported(tmp_path):
    spec = bowl_spec(seeds=1, lengths=(1, 2), max_rounds=1)
    base = tiny_config(tmp_path / "unused")
    lion_lr = spec.optimizers["lion"].learning_rate
    runner = Bowl(lr_star=4 * lion_lr, diverge_above=3 * lion_lr)
    store, outcomes = run_search(base, spec, tmp_path / "sweep", runner, log=lambda _: None)
    assert outcomes["lion"].best.learning_rate == significant(2 * lion_lr)
    failed = [r for r in store.rows.values() if r["status"] == "failed"]
    assert {r["optimizer"]["learning_rate"] for r in failed if r["label"] == "lion"} == {
        significant(4 * lion_lr)
    }
    from marin_optim.sweep.report import write_report

    summary = write_report(tmp_path / "sweep", base, spec, store, outcomes)
    assert summary["lion"]["trials_failed"] == 1
    text = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "failed: diverged" in text
    # the header names the model the trials trained, sizes set apart from its preset included
    assert f"speedrun model {base.model.describe()}, data" in text.splitlines()[2]


def test_loss_curves_come_from_the_first_seed_whose_run_directory_is_still_there(tmp_path):
    # a sweep continued on another machine reuses trials whose directories it does not have
    spec = bowl_spec(seeds=2, lengths=(1, 2), max_rounds=1)
    base = tiny_config(tmp_path / "unused")
    store, outcomes = run_search(base, spec, tmp_path / "sweep", Bowl(lr_star=1e-3), log=lambda _: None)
    from marin_optim.sweep.report import tuned_curves

    first, second = (Path(store.rows[t.key]["run_dir"]) for t in outcomes["lion"].seed_trials)
    said: list[str] = []
    assert tuned_curves(store, outcomes, said.append) == {}
    assert said == [
        f"sweep: no loss curves for {label}: none of its tuned runs' directories holds its metrics"
        for label in outcomes  # lion and the baseline, adamw
    ]

    def write_metrics(run: Path, loss: float) -> None:
        run.mkdir(parents=True, exist_ok=True)
        rows = [{"step": 1, "loss": loss}, {"step": 2, "loss": loss - 1, "eval_loss": loss - 0.5}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    write_metrics(second, 5.0)
    curves = tuned_curves(store, outcomes, said.append)
    assert list(curves) == [f"lion (seed {base.train.seed + 1})"]
    assert curves[f"lion (seed {base.train.seed + 1})"].train_loss == [5.0, 4.0]
    write_metrics(first, 7.0)
    assert {k: c.eval_loss for k, c in tuned_curves(store, outcomes, said.append).items()} == {"lion": [6.5]}


class AdamWBehind(Bowl):
    """:class:`Bowl` with AdamW's every loss 0.5 higher."""

    def loss(self, opt: dict[str, Any], seed: int, steps: int, base_steps: int) -> float:
        return super().loss(opt, seed, steps, base_steps) + 0.5 * (opt["type"] == "adamw")


def test_outcomes_keep_the_commands_order_and_the_curves_the_tables(tmp_path, monkeypatch):
    # AdamW, first on the command line, finishes last (its longer runs); and ends behind lion
    spec = make_spec(["adamw", "lion"], fields=["learning_rate"], seeds=1, lengths=(1, 2), max_rounds=1)
    base = tiny_config(tmp_path / "unused")
    said: list[str] = []
    store, outcomes = run_search(base, spec, tmp_path / "sweep", AdamWBehind(lr_star=1e-3), log=said.append)
    tuned = [line.split()[1] for line in said if line.endswith(("tuned: its defaults", "}"))]
    assert tuned == ["lion", "adamw"] and list(outcomes) == ["adamw", "lion"]
    for o in outcomes.values():
        run = Path(store.rows[o.seed_trials[0].key]["run_dir"])
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 3.0}) + "\n")
    from marin_optim.sweep import report

    legend: list[str] = []
    monkeypatch.setattr(report, "plot_curves", lambda path, curves, title: legend.extend(curves))
    summary = report.write_report(tmp_path / "sweep", base, spec, store, outcomes, log=said.append)
    assert list(summary) == ["adamw", "lion"] and legend == ["lion", "adamw"] == report.ranked(summary)
    table = (tmp_path / "sweep" / "sweep.md").read_text().split("## ")[0]
    assert table.index("| lion |") < table.index("| adamw |")


class SeedsApart(Bowl):
    """AdamW: 3.0 at the run's steps, 0.3 lower per doubling; lion: 2.85 with its first seed (AdamW's
    loss at sqrt(2) times the steps), 3.2 with its second (above AdamW's at 1x); no field matters."""

    def loss(self, opt: dict[str, Any], seed: int, steps: int, base_steps: int) -> float:
        if opt["type"] == "adamw":
            return 3.0 - 0.3 * math.log2(steps / base_steps)
        return 2.85 if seed == 0 else 3.2


def test_a_speedup_beyond_the_lengths_for_some_seeds_is_given_per_seed(tmp_path):
    spec = make_spec(["lion"], fields=["learning_rate"], seeds=2, lengths=(1, 2), max_rounds=1)
    base = tiny_config(tmp_path / "unused", "--train.seed", "0")
    store, outcomes = run_search(base, spec, tmp_path / "sweep", SeedsApart(lr_star=1.0), log=lambda _: None)
    from marin_optim.sweep.report import write_report

    speedup = write_report(tmp_path / "sweep", base, spec, store, outcomes)["lion"]["speedup"]
    assert speedup["values"] == [pytest.approx(math.sqrt(2)), 1.0] and speedup["bounds"] == ["", "<"]
    assert speedup["bound"] == "mixed" and math.isnan(speedup["mean"])  # no mean over a bound
    text = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "| 1.41, < 1 (seeds 0, 1) |" in text
    assert "Speedup: adamw's final eval loss at 1, 2 times the steps" in text


def test_a_report_after_force_on_another_base_leaves_the_first_bases_trials_out(tmp_path):
    spec = bowl_spec(seeds=1, lengths=(1, 2), max_rounds=1)
    root = tmp_path / "sweep"
    first, _ = run_search(
        tiny_config(tmp_path / "unused"), spec, root, Bowl(lr_star=1e-3), log=lambda _: None
    )
    wider = tiny_config(tmp_path / "unused", "--model.hidden_dim", "64")
    runner, said = Bowl(lr_star=1e-3), []
    store, outcomes = run_search(wider, spec, root, runner, log=said.append, force=True)
    n = len(first.rows)
    assert (
        f"sweep: 0 of the {n} finished trials in {root / 'trials.jsonl'} are on this base and reused" in said
    )
    from marin_optim.sweep.report import write_report

    summary = write_report(root, wider, spec, store, outcomes)
    assert len(store.rows) == len(first.rows) + len(runner.ran)  # nothing lost
    assert summary["lion"]["trials"] == sum(t.label == "lion" for t in runner.ran)
    reported = json.loads((root / "sweep.json").read_text())["trials"]
    assert sorted(r["key"] for r in reported) == sorted(t.key for t in runner.ran)


def test_resume_reuses_finished_trials_and_refuses_another_sweep(tmp_path):
    spec = bowl_spec(seeds=2, lengths=(1, 2))
    base = tiny_config(tmp_path / "unused")
    root = tmp_path / "sweep"
    first = Bowl(lr_star=2 * spec.optimizers["lion"].learning_rate)
    said: list[str] = []
    store, outcomes = run_search(base, spec, root, first, log=said.append)
    n = len(store.rows)
    lion_lr = spec.optimizers["lion"].learning_rate
    # before they run, the log says which of each search's next trials have to run, and what for
    steps = [line for line in said if line.startswith("sweep: lion, ")]
    grid = [v for v in spec.grids["lion"]["learning_rate"] if v != lion_lr]
    assert steps[:2] == [
        "sweep: lion, its start: seed 0 (1 trial)",
        f"sweep: lion, round 1, learning_rate: {', '.join(map(str, grid))} ({len(grid)} trials)",
    ]
    assert steps[-1] == "sweep: lion, its best: seed 1 (1 trial)"  # seed 0's ran in the search

    # a kill in the middle of writing the last row (the baseline's 2x run, seed 1): that trial
    # alone runs again, and the log says which step of which search it belongs to
    lines = (root / "trials.jsonl").read_text().splitlines()
    (root / "trials.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:40])
    again = Bowl(lr_star=first.lr_star)
    said.clear()
    store2, outcomes2 = run_search(base, spec, root, again, log=said.append)
    assert [t.key for t in again.ran] == [json.loads(lines[-1])["key"]]
    assert [line for line in said if line.endswith("trial)")] == [
        "sweep: adamw, its best at more steps: 2x seed 1 (1 trial)"
    ]
    assert len(store2.rows) == n
    assert {k: o.best for k, o in outcomes2.items()} == {k: o.best for k, o in outcomes.items()}

    other = bowl_spec(seeds=3, lengths=(1, 2))
    with pytest.raises(ConfigError, match=r"holds a different sweep \(its seeds differ\).*--force"):
        run_search(base, other, root, Bowl(lr_star=1.0), log=lambda _: None)
    longer = tiny_config(tmp_path / "unused", "--train.num_train_steps", "24")
    with pytest.raises(ConfigError, match=r"\(its steps differ\)"):
        run_search(longer, spec, root, Bowl(lr_star=1.0), log=lambda _: None)
    wider = tiny_config(tmp_path / "unused", "--model.hidden_dim", "64")
    with pytest.raises(ConfigError, match=r"\(its base differ\)"):
        run_search(wider, spec, root, Bowl(lr_star=1.0), log=lambda _: None)
    third = Bowl(lr_star=first.lr_star)
    run_search(base, other, root, third, log=lambda _: None, force=True)
    assert {t.seed for t in third.ran} == {base.train.seed + 2}  # only the new seed's trials


def test_a_second_sweep_in_a_directory_a_sweep_is_running_in_is_refused(tmp_path):
    spec = bowl_spec(seeds=1, lengths=(1, 2))
    base = tiny_config(tmp_path / "unused")
    root = tmp_path / "sweep"
    lr_star = 2 * spec.optimizers["lion"].learning_rate

    class Intruder(Bowl):  # while its trials run, a second sweep starts in the same directory
        def run(self, given: dict[str, Any], trials: list[tuple[Trial, str]]) -> Iterator[dict[str, Any]]:
            with pytest.raises(ConfigError, match=f"another sweep is running in {root}"):
                run_search(base, spec, root, Bowl(lr_star=lr_star), log=lambda _: None)
            yield from super().run(given, trials)

    def intrude(store: TrialStore, outcomes: dict[str, Any]) -> None:  # and while its report is written
        with pytest.raises(ConfigError, match=f"another sweep is running in {root}"):
            run_search(base, spec, root, Bowl(lr_star=lr_star), log=lambda _: None, force=True)
        reported.append(len(store.rows))

    first, reported = Intruder(lr_star=lr_star), []
    store, _ = run_search(base, spec, root, first, log=lambda _: None, report=intrude)
    assert reported == [len(store.rows)]
    again = Bowl(lr_star=lr_star)  # the first one has finished: the directory is free again
    store2, _ = run_search(base, spec, root, again, log=lambda _: None)
    assert not again.ran and store2.rows == store.rows


def test_a_held_lock_is_waited_for_or_refused(tmp_path):
    import threading
    import time

    from marin_optim.sweep.trials import held

    path, order, taken = tmp_path / ".lock", [], threading.Event()

    def holder() -> None:
        with held(path):
            taken.set()
            time.sleep(0.5)
            order.append("holder done")

    thread = threading.Thread(target=holder)
    thread.start()
    taken.wait()
    with pytest.raises(ConfigError, match=r"^busy$"):
        with held(path, busy="busy"):
            pass
    with held(path):  # waits for the holder
        order.append("second in")
    thread.join()
    assert order == ["holder done", "second in"]


def test_cpus_are_shared_out_evenly_among_workers():
    assert cpu_shares(2, [1, 0]) == [{0}, {1}]
    assert cpu_shares(3, range(8)) == [{0, 1, 2}, {3, 4, 5}, {6, 7}]
    assert cpu_shares(3, [0, 1]) == [{0}, {1}, {0}]  # more workers than CPUs: one each, shared
    assert cpu_shares(1, [0, 1, 2]) == [{0, 1, 2}]


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="1 CPU")
def test_each_local_worker_keeps_to_its_share_of_the_cpus():
    runner = LocalRunner(2)
    try:
        pool = runner.pool()
        seen = [f.result(timeout=120) for f in [pool.submit(os.sched_getaffinity, 0) for _ in range(8)]]
    finally:
        runner.close()
    shares = cpu_shares(2, os.sched_getaffinity(0))
    assert all(cpus in shares for cpus in seen) and all(cpus < os.sched_getaffinity(0) for cpus in seen)


STOP_SCRIPT = """
import os, time
from marin_optim.sweep.trials import LocalRunner
pool = LocalRunner(2).pool()
print(sorted({f.result() for f in [pool.submit(os.getpid) for _ in range(8)]}), flush=True)
pool.submit(time.sleep, 120)
os._exit(0)  # as a kill would end the sweep: no shutdown of the pool
"""


@pytest.mark.extended
def test_workers_stop_when_the_sweep_process_is_gone():
    import time

    proc = subprocess.run([sys.executable, "-c", STOP_SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    workers = json.loads(proc.stdout.strip().splitlines()[-1])
    assert workers and os.getpid() not in workers

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/status") as f:
                return "\tZ" not in next(line for line in f if line.startswith("State:"))
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if alive(pid)], "a worker outlived the sweep's process"


# ---------------------------------------------------------------- real sweeps of the tiny speedrun

SWEEP_ARGS = ["--fields", "learning_rate", "--grid", "learning_rate=0.003", "--seeds", "1",
              "--lengths", "1,2", "--max_rounds", "1"]  # fmt: skip
BASE_ARGS = [a for a in TINY_ARGS if a not in ("--optimizer.learning_rate", "0.003")]
SHORT = ["--train.checkpoint_interval", "0", "--train.num_train_steps", "6", "--train.eval_interval", "6"]
BASE_ARGS += SHORT


def sweep_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "marin_optim.cli", "sweep", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


@pytest.mark.extended
def test_sweep_cli_end_to_end_with_workers_then_resumed(tmp_path):
    out = tmp_path / "sweep"
    args = ["lion", *SWEEP_ARGS, *BASE_ARGS, "--output_dir", str(out)]
    first = sweep_cli(*args, "--workers", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    # per optimizer: its defaults and lr=0.003; adamw's tuned config again at 2x the steps
    assert len(rows) == 5 and all(r["status"] == "ok" for r in rows)
    assert sorted(r["steps"] for r in rows) == [6, 6, 6, 6, 12]
    summary = json.loads((out / "sweep.json").read_text())["results"]
    for label in ("lion", "adamw"):
        mine = [r for r in rows if r["label"] == label and r["steps"] == 6]
        best = min(mine, key=lambda r: r["eval_loss"])
        assert summary[label]["best"] == best["optimizer"]
        assert summary[label]["eval_loss"]["values"] == [best["eval_loss"]]
        tuned = yaml.safe_load((out / "best" / f"{label}.yaml").read_text())
        assert tuned["optimizer"]["learning_rate"] == best["optimizer"]["learning_rate"]
        assert (out / f"sensitivity-{label}.png").stat().st_size > 0
    assert summary["adamw"]["speedup"]["values"] == [1.0]  # against itself, at 1x
    lion_loss = summary["lion"]["eval_loss"]["values"][0]
    adamw = {
        r["steps"]: r["eval_loss"]
        for r in rows
        if r["label"] == "adamw" and r["optimizer"] == summary["adamw"]["best"]
    }
    expected = steps_to_reach([1, 2], [adamw[6], adamw[12]], lion_loss)
    assert summary["lion"]["speedup"]["values"] == [expected[0]]
    assert (out / "curves.png").exists() and "| lion |" in (out / "sweep.md").read_text()
    if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) > 1:  # each worker on its share
        shares = cpu_shares(2, os.sched_getaffinity(0))
        assert all(trial_cpus(r["run_dir"])[1] in shares for r in rows)

    again = sweep_cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "5 finished trials" in again.stdout and "eval loss" not in again.stdout  # nothing reran
    assert len((out / "trials.jsonl").read_text().splitlines()) == 5

    changed = sweep_cli(*args[:-2], "--seeds", "2", "--output_dir", str(out))
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1
    assert "holds a different sweep (its seeds differ)" in changed.stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (["lion", "--grid", "lion.beta1=2.0"], "--grid lion.beta1=2.0"),
        (["lion", "--workers", "0"], "--workers=0"),
        (["--seeds", "2"], "name at least one optimizer"),
        (["lion", "--lengths", "1,x"], "--lengths='1,x'"),
        (["lion", "--fields", "learning_rate,bta1"], "--fields bta1"),
        (["lion", "--start", "no/such/dir"], "--start no/such/dir: not a directory"),
        (["lion", "--ray_gpus", "1"], "--ray_gpus: only with --ray"),
        (["lion", "--ray", "local", "--ray_cpus", "0"], "--ray_cpus=0.0: must be > 0"),
        (["lion", "--ray", "local", "--ray_gpus", "-1"], "--ray_gpus=-1.0: must be >= 0"),
        (["lion", "--ray", "local", "--ray_cpus", "two"], "--ray_cpus='two': expected a number"),
    ],
)
def test_sweep_cli_bad_input_is_one_line_and_exit_2(capsys, tmp_path, args, needle):
    from marin_optim.cli import main

    assert main(["sweep", *args, "--output_dir", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "never").exists()


def test_a_diverging_trial_is_a_failed_trial_not_an_error(tmp_path):
    base = tiny_config(tmp_path / "unused", "--train.checkpoint_interval", "0")
    opt = OptimizerConfig.from_dict(
        {"type": "sgd", "learning_rate": 1e30, "max_nonfinite_steps": 1, "warmup": 0.0}
    )
    trial = Trial("sgd", opt.to_dict(), 0, 12, "base")
    row = run_trial(base.to_dict(), trial, str(tmp_path / "trial"))
    assert row["status"] == "failed" and row["eval_loss"] == math.inf, row
    assert "NaN/inf" in row["reason"]
    store = TrialStore(tmp_path)
    store.add(row)
    assert TrialStore(tmp_path).rows[trial.key]["eval_loss"] == math.inf  # survives JSON


def test_a_trial_whose_evaluation_is_not_finite_failed(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from marin_optim.speedrun import trainer

    info = {"eval_loss": math.nan, "eval_bpb": math.nan, "training_time": 1.0}
    monkeypatch.setattr(trainer, "run_speedrun", lambda cfg, log: SimpleNamespace(run_info=info))
    trial = Trial("adamw", OptimizerConfig.from_dict({"type": "adamw"}).to_dict(), 0, 12, "base")
    row = run_trial(tiny_config(tmp_path / "unused").to_dict(), trial, str(tmp_path / "trial"))
    assert (row["status"], row["reason"], row["eval_loss"]) == ("failed", "eval loss nan", math.inf)


def trial_cpus(run_dir: str) -> tuple[int, set[int]]:
    """(the process, the CPUs it kept to) of a trial, from its log."""
    line = next(x for x in (Path(run_dir) / "trial.log").read_text().splitlines() if " on CPUs " in x)
    pid, cpus = line.split(": process ")[1].split(" on CPUs ")
    return int(pid), {int(c) for c in cpus.split(",")}


def test_sweep_on_ray(tmp_path):
    pytest.importorskip("ray", reason="Ray is optional: pip install -e '.[ray]'")
    out = tmp_path / "sweep"
    args = ["lion", *SWEEP_ARGS, "--baseline", "none", *BASE_ARGS, "--output_dir", str(out)]
    result = sweep_cli(*args, "--ray", "local", "--ray_cpus", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert "speedup" not in json.loads((out / "sweep.json").read_text())["results"]["lion"]
    # each task in a worker process, kept to a share of one CPU (Ray pins none)
    seen = [trial_cpus(r["run_dir"]) for r in rows]
    assert seen[0][0] != seen[1][0] and os.getpid() not in (seen[0][0], seen[1][0])
    if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) > 1:
        assert all(len(cpus) == 1 and cpus < os.sched_getaffinity(0) for _, cpus in seen), seen


def test_trials_on_one_node_claim_shares_no_other_holds(tmp_path):
    with node_share(1, [0, 1], tmp_path) as first, node_share(1, [1, 0], tmp_path) as second:
        assert (first, second) == ({0}, {1})
        with node_share(1, [0, 1], tmp_path) as third:
            assert third is None  # every share held: runs unpinned
        with node_share(2, [0, 1, 2, 3], tmp_path) as wide:  # another share size: CPUs not held
            assert wide == {2, 3}
    with node_share(1.5, [0, 1, 2, 3], tmp_path) as again:  # all let go; 1.5 CPUs ask for 2
        assert again == {0, 1}


def test_run_sweep_in_process_matches_a_speedrun(tmp_path):
    """A trial is exactly the speedrun of its config: same final eval loss as running it directly."""
    from marin_optim.speedrun.trainer import run_speedrun

    base = tiny_config(tmp_path / "unused", *SHORT)
    spec = make_spec(["lion"], fields=["learning_rate"], grids=["learning_rate=3e-3"], seeds=1, baseline=None)
    summary = run_sweep(base, spec, tmp_path / "sweep", log=lambda _: None)
    best = OptimizerConfig.from_dict(summary["lion"]["best"])
    direct = base.replace(optimizer=best, output_dir=str(tmp_path / "direct"))
    loss = float(run_speedrun(direct, log=lambda _: None).run_info["eval_loss"])
    assert summary["lion"]["eval_loss"]["values"] == [loss]
