"""Bad input fails before compilation with one line; compare; the experiment scripts."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys

import pytest
from speedrun_helpers import REPO, TINY_ARGS, last_json_line, run_python, tiny_config

from marin_optim import ConfigError
from marin_optim.cli import main
from marin_optim.cli.training import compare_main, speedrun_main, split_compare_argv
from marin_optim.speedrun import results as res
from marin_optim.speedrun.compare import parse_optimizer_spec, run_compare, steps_to_target
from marin_optim.speedrun.plots import Curve, curve_styles

# name -> (extra argv, text the one-line error must contain). Run on 2 simulated devices.
BAD_INPUTS = {
    "missing data file": (
        ["--data.files", "/nonexistent/corpus.txt"],
        "data.files: '/nonexistent/corpus.txt'",
    ),
    "sequence longer than the context": (
        ["--train.seq_len", "128", "--model.max_seq_len", "64"],
        "train.seq_len=128: longer than the model's context model.max_seq_len=64",
    ),
    "batch not divisible by the data axis": (
        ["--train.batch_size", "6", "--train.grad_accum", "2"],
        "not divisible by the data axis (train.mesh.data=2)",
    ),
    "mesh larger than the device count": (["--train.mesh.data", "4"], "only 2 are available"),
    "model axis larger than the device count": (["--train.mesh.model", "3"], "train.mesh.model=3"),
    "tensor-parallel axis not divisible": (
        ["--train.mesh.data", "1", "--train.mesh.model", "2", "--model.num_kv_heads", "1"],
        "kv_heads size 1 is not divisible by the model mesh axis",
    ),
    "unknown optimizer": (
        ["--optimizer.type", "adamz"],
        "optimizer.type='adamz': not a registered optimizer",
    ),
    "unknown field": (["--train.batch", "8"], "did you mean 'batch_size'"),
}


def test_bad_input_fails_before_compiling_with_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    bad_inputs = {
        **BAD_INPUTS,
        "output_dir is a file": (["--output_dir", str(blocker)], f"output_dir={str(blocker)!r}: a file"),
        "output_dir under a file": (["--output_dir", str(blocker / "run")], "cannot create the directory"),
    }
    cases = {
        name: [*TINY_ARGS, "--output_dir", str(tmp_path / "x"), *argv]
        for name, (argv, _) in bad_inputs.items()
    }
    proc = run_python(
        f"""
        import contextlib, io, json
        import marin_optim.speedrun.trainer as trainer

        def reached_compilation(*args, **kwargs):
            raise AssertionError("bad input reached compilation")

        trainer.make_step_functions = reached_compilation
        from marin_optim.cli.training import speedrun_main
        out = {{}}
        for name, argv in {cases!r}.items():
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                rc = speedrun_main(argv)
            out[name] = [rc, err.getvalue()]
        print(json.dumps(out))
        """,
        devices=2,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = last_json_line(proc.stdout)
    for name, (_, expected) in bad_inputs.items():
        rc, err = out[name]
        assert rc == 2, (name, err)
        assert err.endswith("\n") and err.count("\n") == 1, (name, err)
        assert err.startswith("marin-optim speedrun: error: "), (name, err)
        assert expected in err, (name, err)
    assert not (tmp_path / "x").exists()  # nothing was written


def test_make_dir_checks_and_with_keep_false_leaves_nothing(tmp_path):
    deep = tmp_path / "a" / "b" / "c"
    assert res.make_dir(deep, "output_dir", keep=False) == deep
    assert not (tmp_path / "a").exists()
    assert res.make_dir(deep, "output_dir").is_dir()
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match=r"plot='.*f/x\.png': .*f is a file, not a directory"):
        res.make_dir(tmp_path / "f", "plot", tmp_path / "f" / "x.png")


def test_top_level_cli_dispatches_speedrun_and_compare(capsys):
    assert main(["speedrun", "--optimizer.type", "lino"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'lion'" in err
    assert main(["compare", "adamw", "lino"]) == 2
    assert "did you mean 'lion'" in capsys.readouterr().err
    assert speedrun_main(["--help"]) == 0
    assert "train.batch_size" in capsys.readouterr().out


def test_compare_argument_parsing():
    specs, options, shared, rest = split_compare_argv(
        ["adamw", "lion:learning_rate=3e-4,beta2=0.98", "--target_loss", "2.5", "--optimizer.warmup", "10",
         "--train.num_train_steps", "50"]
    )  # fmt: skip
    assert specs == ["adamw", "lion:learning_rate=3e-4,beta2=0.98"]
    assert options == {"target_loss": "2.5"} and shared == {"warmup": "10"}
    assert rest == ["--train.num_train_steps", "50"]
    label, cfg = parse_optimizer_spec(specs[1], {"warmup": 10})
    assert label == "lion-learning_rate=3e-4-beta2=0.98"
    assert (cfg.learning_rate, cfg.beta2, cfg.warmup) == (3e-4, 0.98, 10)
    with pytest.raises(ConfigError, match="no field 'beta3'"):
        parse_optimizer_spec("lion:beta3=0.9")
    with pytest.raises(ConfigError, match="learning_rate"):
        parse_optimizer_spec("adamw:learning_rate=-1")
    assert compare_main(["--train.num_train_steps", "5"]) == 2


def test_a_compare_spec_value_may_hold_commas_inside_brackets():
    label, cfg = parse_optimizer_spec(
        "lion:learning_rate=1e-3,lr_schedule={type: wsd, decay_fraction: 0.2},beta2=0.9"
    )
    assert (cfg.learning_rate, cfg.beta2) == (1e-3, 0.9)
    assert type(cfg.lr_schedule).__name__ == "WSDSchedule" and cfg.lr_schedule.decay_fraction == 0.2
    assert "," not in label and " " not in label
    with pytest.raises(ConfigError, match=r"lr_schedule: .* is not a YAML value"):
        parse_optimizer_spec("lion:lr_schedule={type: wsd, decay_fraction: 0.2")
    # a shared --optimizer.lr_schedule.FIELD sets a field of the nested schedule, under the spec's own
    shared = {"lr_schedule.type": "wsd", "lr_schedule.decay_fraction": 0.3}
    _, cfg = parse_optimizer_spec("adamw:lr_schedule.decay_fraction=0.1", shared)
    assert type(cfg.lr_schedule).__name__ == "WSDSchedule" and cfg.lr_schedule.decay_fraction == 0.1
    _, cfg = parse_optimizer_spec("lion", shared)
    assert cfg.lr_schedule.decay_fraction == 0.3
    # a schedule given by name is replaced by the mapping, as on the speedrun's command line
    _, cfg = parse_optimizer_spec("lion:lr_schedule=cosine,lr_schedule.type=wsd")
    assert type(cfg.lr_schedule).__name__ == "WSDSchedule"
    with pytest.raises(ConfigError, match="schedule 'cosine' has no field 'decay_fraction'"):
        parse_optimizer_spec("lion:lr_schedule=cosine,lr_schedule.decay_fraction=0.1")
    # bad YAML in a shared override: one line, exit 2
    assert compare_main(["adamw", "--optimizer.warmup", "{a", "--train.num_train_steps", "2"]) == 2


def test_steps_to_target_uses_the_smoothed_training_loss():
    c = Curve(train_steps=[1, 2, 3, 4], train_loss=[4.0, 3.0, 1.0, 1.0])
    # EMA (alpha 0.1, bias-corrected): 4.0, 3.47, 2.55, 2.09
    assert steps_to_target(c, 2.6) == 3
    assert steps_to_target(c, 1.0) is None


@pytest.mark.parametrize("n", [3, 10, 11, 20, 21, 80])
def test_no_two_curves_of_a_plot_look_alike(n):
    # a sweep of the study's eleven optimizers plots eleven curves: the ten-colour cycle drew the
    # first and the eleventh in one colour
    import matplotlib

    styles = curve_styles(n)
    assert len(styles) == n and len(set(styles)) == n
    if n <= 10:  # matplotlib's own default colours while they suffice
        cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
        assert [matplotlib.colors.to_hex(c) for c, _ in styles] == [
            matplotlib.colors.to_hex(c) for c in cycle[:n]
        ]


@pytest.mark.slow
def test_compare_runs_each_optimizer_and_writes_one_table_and_plot(tmp_path):
    base = tiny_config(
        tmp_path / "unused",
        "--train.num_train_steps",
        "4",
        "--train.eval_sequences",
        "8",
        "--train.mesh.data",
        "1",
    )
    optimizers = [parse_optimizer_spec("adamw"), parse_optimizer_spec("lion:learning_rate=1e-3")]
    result = run_compare(base, optimizers, output_dir=tmp_path / "cmp", log=lambda _m: None)
    assert [r.label for r in result.rows] == ["adamw", "lion-learning_rate=1e-3"]
    assert all(r.steps_to_target is not None for r in result.rows)  # the default target is reached by all
    for r in result.rows:
        info = res.read_results(r.run_dir)
        assert info["optimizer"] == r.optimizer and info["eval_loss"] == r.eval_loss
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| adamw |" in table and "| lion-learning_rate=1e-3 |" in table and "final eval loss" in table
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert len(json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"]) == 2


def test_compare_checks_every_run_before_the_first_trains(tmp_path):
    # lion's directory holds an unfinished run (a checkpoint, no results): refused before adamw trains
    base = tiny_config(tmp_path / "unused", "--train.num_train_steps", "4", "--train.mesh.data", "1")
    (tmp_path / "cmp" / "lion" / res.CHECKPOINTS / "2").mkdir(parents=True)
    optimizers = [parse_optimizer_spec("adamw"), parse_optimizer_spec("lion")]
    with pytest.raises(ConfigError, match=r"lion'? holds an unfinished run \(checkpoint at step 2\)"):
        run_compare(base, optimizers, output_dir=tmp_path / "cmp", log=lambda _m: None)
    assert not (tmp_path / "cmp" / "adamw").exists()


def test_a_script_refuses_a_config_path_in_either_spelling(capsys):
    from marin_optim.cli import run_script

    config = tiny_config("unused")
    for flag in ("--config_path", "--config-path"):
        assert run_script(config, [flag, "other.yaml"]) == 2
        assert "carries its own config" in capsys.readouterr().err


def test_experiment_scripts_hold_their_configs():
    adamw = runpy.run_path(str(REPO / "experiments/speedrun/adamw_baseline.py"), run_name="adamw_baseline")
    lion = runpy.run_path(str(REPO / "experiments/speedrun/lion.py"), run_name="lion")
    assert adamw["config"].optimizer_name == "adamw" and adamw["config"].optimizer.learning_rate == 3e-3
    assert lion["config"].optimizer_name == "lion" and lion["config"].optimizer.learning_rate == 3e-4


@pytest.mark.slow
@pytest.mark.extended
def test_user_defined_adamax_script_runs_with_overrides(tmp_path):
    out = tmp_path / "adamax"
    proc = subprocess.run(
        [sys.executable, "experiments/speedrun/user_adamax.py", *TINY_ARGS, "--train.num_train_steps", "4",
         "--train.mesh.data", "1", "--optimizer.beta2", "0.99", "--output_dir", str(out)],
        capture_output=True, text=True, timeout=240, cwd=REPO,
        env={**__import__("os").environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = res.read_results(out)
    assert info["optimizer"] == "adamax"
    opt = info["config"]["optimizer"]
    assert opt["type"] == "adamax" and opt["beta2"] == 0.99 and opt["learning_rate"] == 0.003
    rows = [r for r in res.read_metrics(out / res.METRICS) if "loss" in r]
    # The script's own build ran: it injects only the learning rate and uses optax's clip (no
    # grad_norm), unlike marin_optim's adamax.
    assert "learning_rate" in rows[-1] and "grad_norm" not in rows[-1] and "weight_decay" not in rows[-1]


@pytest.mark.extended
def test_params_prints_groups_weight_decay_and_update_rules(capsys):
    """`marin-optim params`: the weight-decay mask and groups resolved on the speedrun model."""
    rc = main(
        ["params", *TINY_ARGS, "--optimizer.weight_decay", "0.1",
         "--optimizer.group_overrides", '[{params: ["lm_head*"], lr_multiplier: 0.5, name: head}]']
    )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:] if line and "." in line.split()[0]}
    # Levanter's default mask: matrices decay, embeddings and norms do not.
    assert rows["layers.stacked.attn.q_proj.weight"][2:] == ["default", "0.003", "0.1"]
    assert rows["embed.weight"][-1] == "-" and rows["final_norm.weight"][-1] == "-"
    assert rows["lm_head.weight"][2:] == ["head", "0.0015", "0.1"]
    assert "groups: default, head" in out

    rc = main(["params", *TINY_ARGS, "--optimizer.type", "muon"])
    out = capsys.readouterr().out
    assert rc == 0 and "matrix -> muon" in out and "embedding -> adam" in out

    rc = main(["params", *TINY_ARGS, "--optimizer.group_overrides", '[{params: ["nothing*"]}]'])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "nothing*" in err
