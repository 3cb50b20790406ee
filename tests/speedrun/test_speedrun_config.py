"""SpeedrunConfig: Python, YAML and CLI agree; validation names the field; resume differences."""

from __future__ import annotations

import pytest

from marin_optim import AdamWConfig, ConfigError, LionConfig
from marin_optim.cli import parse_config
from marin_optim.config import config_differences
from marin_optim.speedrun import ModelConfig, SpeedrunConfig, TrainConfig
from marin_optim.speedrun.config import RUN_CONTROL_FIELDS
from marin_optim.speedrun.data import DataConfig
from marin_optim.speedrun.mesh import MeshConfig


def test_python_yaml_and_cli_build_the_same_config(tmp_path):
    py = SpeedrunConfig(
        model=ModelConfig(preset="nano"),
        train=TrainConfig(batch_size=8, seq_len=64, num_train_steps=50),
        optimizer=LionConfig(learning_rate=3e-4, beta2=0.98),
    )
    assert SpeedrunConfig.from_yaml(py.to_yaml()) == py
    path = tmp_path / "run.yaml"
    path.write_text(py.to_yaml())
    assert parse_config(SpeedrunConfig, ["--config_path", str(path)]) == py
    cli = parse_config(
        SpeedrunConfig,
        [
            "--model.preset", "nano",
            "--train.batch_size", "8", "--train.seq_len", "64", "--train.num_train_steps", "50",
            "--optimizer.type", "lion", "--optimizer.learning_rate", "3e-4", "--optimizer.beta2", "0.98",
        ],
    )  # fmt: skip
    assert cli == py
    # A CLI override on top of a YAML file keeps the file's other optimizer values.
    merged = parse_config(SpeedrunConfig, ["--config_path", str(path), "--optimizer.beta1", "0.95"])
    assert (merged.optimizer.learning_rate, merged.optimizer.beta1) == (3e-4, 0.95)


def test_a_config_file_may_include_another_as_draccus_reads_it(tmp_path):
    (tmp_path / "opt.yaml").write_text("type: lion\nlearning_rate: 0.001\nbeta2: 0.98\n")
    (tmp_path / "run.yaml").write_text("optimizer: !include opt.yaml\ntrain:\n  num_train_steps: 50\n")
    cfg = parse_config(SpeedrunConfig, ["--config_path", str(tmp_path / "run.yaml")])
    assert type(cfg.optimizer) is LionConfig and (cfg.optimizer.learning_rate, cfg.optimizer.beta2) == (
        1e-3,
        0.98,
    )
    assert cfg.train.num_train_steps == 50
    # an included file's fields are checked like the file's own, and a missing one is one line
    (tmp_path / "opt.yaml").write_text("type: lion\nbeta3: 0.9\n")
    with pytest.raises(ConfigError, match="beta3"):
        parse_config(SpeedrunConfig, ["--config_path", str(tmp_path / "run.yaml")])
    (tmp_path / "opt.yaml").unlink()
    with pytest.raises(ConfigError, match=r"!include .*opt\.yaml: No such file"):
        parse_config(SpeedrunConfig, ["--config_path", str(tmp_path / "run.yaml")])


def test_the_resolved_config_carries_the_presets_sizes():
    cfg = parse_config(SpeedrunConfig, ["--model.preset", "30m", "--train.seq_len", "512"])
    data = cfg.to_dict()
    assert data["model"]["hidden_dim"] == 128 and data["model"]["max_seq_len"] == 1024
    assert data["optimizer"]["type"] == "adam"
    assert cfg.run_dir == "runs/speedrun/adam-30m"


def test_one_source_of_truth_for_the_learning_rate():
    # The train section has no learning rate or weight decay to silently ignore.
    for name in ("learning_rate", "lr", "weight_decay"):
        with pytest.raises(ConfigError, match="unknown field"):
            parse_config(SpeedrunConfig, [f"--train.{name}", "0.1"])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: TrainConfig(batch_size=10, grad_accum=4), r"train\.batch_size=10: must be divisible"),
        (lambda: TrainConfig(num_train_steps=0), r"train\.num_train_steps=0"),
        (lambda: TrainConfig(eval_interval=-1), r"train\.eval_interval=-1"),
        (lambda: TrainConfig(compute_dtype="float16"), r"train\.compute_dtype"),
        (lambda: TrainConfig(seed=-1), r"train\.seed=-1: must be an int >= 0"),
        (lambda: DataConfig(seed=-2), r"data\.seed=-2: must be an int >= 0"),
        (lambda: MeshConfig(data=0), r"train\.mesh\.data=0"),
        (lambda: SpeedrunConfig(train=TrainConfig(seq_len=512)), r"train\.seq_len=512: longer than"),
        (lambda: SpeedrunConfig(resume=True, overwrite=True), "choose one"),
        (
            lambda: parse_config(SpeedrunConfig, ["--distributed.coordinator_address", "127.0.0.1:1"]),
            "num_processes",
        ),
    ],
)
def test_bad_values_fail_at_construction_naming_the_field(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_mesh_resolution():
    assert MeshConfig().resolve(8) == (8, 1)
    assert MeshConfig(model=2).resolve(8) == (4, 2)
    with pytest.raises(ConfigError, match="only 4 are available"):
        MeshConfig(data=4, model=2).resolve(4)


def test_resume_differences_list_computation_fields_only():
    a = SpeedrunConfig(optimizer=AdamWConfig(learning_rate=1e-3))
    b = a.replace(
        optimizer=AdamWConfig(learning_rate=2e-3),
        train=TrainConfig(batch_size=8, mesh=MeshConfig(data=2), eval_interval=7),
        output_dir="elsewhere",
        description="changed",
    )
    assert config_differences(a.to_dict(), b.to_dict(), ignore=RUN_CONTROL_FIELDS) == {
        "optimizer.learning_rate": (0.001, 0.002),
        "train.batch_size": (16, 8),
    }
    c = a.replace(optimizer=LionConfig())
    diffs = config_differences(a, c, ignore=RUN_CONTROL_FIELDS)
    assert diffs["optimizer.type"] == ("adamw", "lion")
