"""The ``marin-optim`` CLI: list, show, schedule, and one-line errors with exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from marin_optim import OptimizerConfig
from marin_optim.cli import main, parse_config
from marin_optim.cli.parsing import parse_config_with_draccus


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_list_shows_every_optimizer_and_schedule(capsys):
    rc, out, _ = run(capsys, "list")
    assert rc == 0
    for name in OptimizerConfig.registered():
        assert f" {name} " in out
    for name in ("cosine", "linear", "constant", "wsd"):
        assert f" {name} " in out


def test_show_a_schedule_without_fields(capsys):
    rc, out, _ = run(capsys, "show", "linear")
    assert rc == 0 and out.rstrip().endswith("Fields: none")


def test_show_prints_fields_types_defaults_and_docs(capsys):
    rc, out, _ = run(capsys, "show", "adam")
    assert rc == 0
    assert "beta2" in out and "0.95" in out and "float" in out
    assert "Decay rate of the second moment" in out
    assert "learning_rate" in out and "Peak learning rate" in out


def test_schedule_prints_a_table_and_writes_a_png(capsys, tmp_path):
    png = tmp_path / "lr.png"
    rc, out, _ = run(
        capsys,
        "schedule",
        "--optimizer.type",
        "lion",
        "--optimizer.warmup",
        "10",
        "--optimizer.lr_schedule",
        "linear",
        "--num_train_steps",
        "100",
        "--plot",
        str(png),
    )
    assert rc == 0, out
    lines = [line for line in out.splitlines() if line.strip() and line.split()[0].isdigit()]
    steps = [int(line.split()[0]) for line in lines]
    assert 0 in steps and 10 in steps and 100 in steps
    row10 = next(line for line in lines if line.split()[0] == "10")
    # lion's default peak (Levanter's), reached at the end of warmup
    assert float(row10.split()[1]) == pytest.approx(6e-4)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_schedule_from_yaml_with_overrides(capsys, tmp_path):
    cfg = tmp_path / "opt.yaml"
    cfg.write_text(
        "optimizer:\n  type: adam\n  learning_rate: 0.002\n  warmup: 0\n"
        "  lr_schedule: {type: wsd, decay_style: linear}\nnum_train_steps: 50\n"
    )
    rc, out, err = run(capsys, "schedule", "--config_path", str(cfg), "--optimizer.learning_rate", "0.004")
    assert rc == 0, err
    row0 = next(line for line in out.splitlines() if line.split() and line.split()[0] == "0")
    assert float(row0.split()[1]) == pytest.approx(0.004)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["schedule", "--optimizer.type", "adamw_"], "did you mean 'adamw'"),
        (["schedule", "--optimizer.type", "nonsense_opt"], "nonsense_opt"),
        (["schedule", "--optimizer.lr", "1e-3"], "did you mean 'learning_rate'"),
        (["schedule", "--optimizer.beta_1", "0.9"], "did you mean 'beta1'"),
        (["schedule", "--optimizer.learning_rate", "-1"], "learning_rate=-1"),
        (["schedule", "--optimizer.beta2", "1.5"], "[0, 1)"),
        (["schedule", "--optimizer.learning_rate", "abc"], "learning_rate"),
        (["schedule", "--optimizer.warmup", "2.5"], "fraction"),
        (["schedule", "--num_train_steps", "0"], "num_train_steps"),
        (["schedule", "--num_train_step", "10"], "did you mean 'num_train_steps'"),
        (["schedule", "--optimizer.lr_schedule", "cosin"], "cosine"),
        (["schedule", "--config_path", "/nonexistent/x.yaml"], "no such file"),
        (["schedule", "--optimizer.learning_rate"], "missing a value"),
        (["show", "adamz"], "adam"),
        (["shedule"], "did you mean 'schedule'"),
        (["list", "extra"], "no arguments"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, expected):
    rc, _, err = run(capsys, *argv)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert expected in lines[0]


def test_an_output_path_that_cannot_be_written_is_one_line(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    rc, out, err = run(capsys, "schedule", "--plot", str(blocker / "lr.png"))
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"plot={str(blocker / 'lr.png')!r}: {blocker} is a file, not a directory" in err
    assert out == ""  # refused before the table is printed


def test_unknown_yaml_key_is_reported_with_a_suggestion(capsys, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("optimizer:\n  type: lion\n  beta_2: 0.98\n")
    rc, _, err = run(capsys, "schedule", "--config_path", str(cfg))
    assert rc == 2 and "did you mean 'beta2'" in err and len(err.strip().splitlines()) == 1


def test_console_script_exit_code_and_single_line():
    proc = subprocess.run(
        [sys.executable, "-m", "marin_optim.cli", "schedule", "--optimizer.type", "lionn"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "did you mean 'lion'" in proc.stderr


@pytest.mark.parametrize(
    "spelling",
    [
        ["--optimizer.lr_schedule", "wsd"],
        ["--optimizer.lr_schedule.type", "wsd"],
        ["--optimizer.lr_schedule", "{type: wsd, decay_style: linear}"],
    ],
)
def test_every_cli_spelling_of_a_schedule(capsys, spelling):
    rc, out, err = run(capsys, "schedule", "--num_train_steps", "100", *spelling)
    assert rc == 0, err
    assert "'type': 'wsd'" in out.splitlines()[0]


def test_yaml_schedule_as_a_bare_name(capsys, tmp_path):
    cfg = tmp_path / "opt.yaml"
    cfg.write_text("optimizer:\n  type: lion\n  lr_schedule: linear\n")
    rc, out, err = run(capsys, "schedule", "--config_path", str(cfg))
    assert rc == 0, err
    assert "'type': 'linear'" in out.splitlines()[0]


def test_show_writes_defaults_as_yaml_and_every_field_has_a_doc_line(capsys):
    import dataclasses

    from marin_optim import OptimizerConfig
    from marin_optim.schedules import ScheduleConfig

    assert main(["show", "adam"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert "{'exponent'" not in rows["lr_schedule"]  # a schedule at its defaults is written by name
    assert " cosine " in rows["lr_schedule"] and " null " in rows["min_lr"] and " 1.0e-08 " in rows["epsilon"]
    assert " true " in rows["skip_nonfinite"] and " steps " in rows["schedule_units"]
    for registry in (OptimizerConfig, ScheduleConfig):
        for name, cls in registry.registered().items():
            undocumented = [f.name for f in dataclasses.fields(cls) if not cls.field_doc(f.name)]
            assert not undocumented, (name, undocumented)


def test_the_parser_builds_what_draccus_parse_builds(tmp_path):
    """parse_config decodes the tree draccus's parser would: the file's values, the overrides read
    as YAML over them, bare choice names, a wrapped optimizer given as one YAML value, lists."""
    from marin_optim.speedrun import SpeedrunConfig

    path = tmp_path / "run.yaml"
    path.write_text(
        "model: {preset: nano}\ntrain: {num_train_steps: 50, batch_size: 8}\n"
        "optimizer: {type: lion, learning_rate: 3.0e-4, lr_schedule: {type: wsd, decay_fraction: 0.3}}\n"
    )
    cases = [
        [
            "--config_path", str(path),
            "--optimizer.beta2", "0.98", "--optimizer.lr_schedule.decay_fraction", "0.5",
        ],
        ["--optimizer.type", "lion", "--optimizer.lr_schedule", "linear", "--train.seq_len=32"],
        [
            "--optimizer.type", "sam",
            "--optimizer.base",
            "{type: adamw, learning_rate: 3e-3, beta2: 0.9, weight_decay_modules: [lm_head]}",
            "--model.num_layers", "3", "--output_dir", "null",
        ],
    ]  # fmt: skip
    for argv in cases:
        ours = parse_config(SpeedrunConfig, argv)
        assert ours == parse_config_with_draccus(SpeedrunConfig, argv), argv
    assert ours.optimizer.base.weight_decay_modules == ["lm_head"] and ours.model.num_layers == 3
    assert ours.output_dir is None
