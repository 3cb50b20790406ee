"""Our optimizers in Levanter's registry: names, YAML/CLI/Python forms, saved configs, take-over, errors."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import textwrap
from pathlib import Path

import draccus
import levanter.optim as lo
import pytest
import yaml
from levanter.main.train_lm import TrainLmConfig

import marin_optim
import marin_optim.levanter as plugin
from marin_optim import ConfigError, OptimizerConfig
from marin_optim.cli import main as cli_main
from marin_optim.levanter.__main__ import check_optimizer
from marin_optim.levanter.__main__ import main as launcher_main

LEVANTER_NAMES = {
    "adam",
    "adamH",
    "adopt",
    "cautious",
    "grug_muon",
    "kron",
    "lion",
    "mars",
    "mini",
    "muon",
    "muonH",
    "namo",
    "namoD",
    "rmsprop",
    "scion",
    "soap",
}


def _levanter_registry() -> dict[str, type]:
    return lo.OptimizerConfig.get_known_choices()


def test_every_optimizer_of_ours_is_in_levanters_registry_and_levanters_names_stay():
    registry = _levanter_registry()
    for name, cls in OptimizerConfig.registered().items():
        assert registry["marin_optim." + name] is cls
    for name in LEVANTER_NAMES & set(registry):
        assert not issubclass(registry[name], OptimizerConfig), name
    assert LEVANTER_NAMES <= set(registry)


def test_a_class_registered_later_follows_and_registering_again_is_a_no_op():
    @OptimizerConfig.register_subclass("test_plugin_later")
    @dataclasses.dataclass(frozen=True)
    class Later(marin_optim.AdamConfig):
        """An optimizer a user registers after marin_optim.levanter was imported."""

    assert _levanter_registry()["marin_optim.test_plugin_later"] is Later
    OptimizerConfig.register_subclass("test_plugin_later", Later)
    assert sum(c is Later for c in _levanter_registry().values()) == 1


def test_yaml_cli_and_python_forms_choose_our_optimizer():
    cfg = draccus.decode(TrainLmConfig, {"optimizer": {"type": "marin_optim.muon", "adam_lr": 3e-3}})
    assert type(cfg.optimizer) is marin_optim.MuonConfig and cfg.optimizer.adam_lr == 3e-3
    cfg = draccus.parse(
        TrainLmConfig, args=["--optimizer.type", "marin_optim.lion", "--optimizer.beta2", "0.98"]
    )
    assert type(cfg.optimizer) is marin_optim.LionConfig and cfg.optimizer.beta2 == 0.98
    # Levanter's own names still mean Levanter's optimizers.
    assert type(draccus.decode(TrainLmConfig, {"optimizer": {"type": "muon"}}).optimizer) is lo.MuonConfig


def _saved_and_loaded(config):
    """What Levanter's tracker does with a run's config (draccus.dump), then loading it back."""
    text = draccus.dump(config)
    # Levanter's own model config dumps an enum with a Python tag, so its config.yaml needs the
    # full loader; the optimizer part is plain YAML.
    return text, draccus.decode(type(config), yaml.unsafe_load(text))


def test_a_saved_config_loads_back_to_our_optimizer_not_levanters_of_the_same_short_name():
    ours = marin_optim.MuonConfig(learning_rate=0.01, adam_lr=3e-3, coefficient_type="quintic")
    text, loaded = _saved_and_loaded(TrainLmConfig(optimizer=ours))
    assert yaml.unsafe_load(text)["optimizer"]["type"] == "marin_optim.muon"
    assert loaded.optimizer == ours and type(loaded.optimizer) is marin_optim.MuonConfig
    # Marin's train configs declare `optimizer_config: OptimizerConfig | None`.

    @dataclasses.dataclass
    class MarinLike:
        optimizer_config: lo.OptimizerConfig | None = None

    _, loaded = _saved_and_loaded(MarinLike(optimizer_config=ours))
    assert loaded.optimizer_config == ours
    # Our own configs keep our own names.
    assert ours.to_dict()["type"] == "muon"
    assert draccus.encode(lo.AdamConfig(), lo.OptimizerConfig)["type"] == "adam"


def test_a_wrapper_keeps_its_nested_base_in_our_namespace():
    sam = OptimizerConfig.from_dict({"type": "sam", "base": {"type": "adamw", "learning_rate": 3e-3}})
    _, loaded = _saved_and_loaded(TrainLmConfig(optimizer=sam))
    assert loaded.optimizer == sam


def test_take_over_is_explicit_reversible_and_keeps_levanters_class_reachable(caplog):
    try:
        plugin.take_over("adam")
        # a drop-in: every field of Levanter's adam is ours, with its default; nothing to warn about
        assert "takes over Levanter's" not in caplog.text
        assert type(draccus.decode(TrainLmConfig, {"optimizer": {"type": "adam"}}).optimizer) is (
            marin_optim.AdamConfig
        )
        # a block without `type` gets the default choice, adam: ours now
        assert type(draccus.decode(TrainLmConfig, {"optimizer": {"beta2": 0.99}}).optimizer) is (
            marin_optim.AdamConfig
        )
        levanters = draccus.decode(TrainLmConfig, {"optimizer": {"type": "levanter.adam"}}).optimizer
        assert type(levanters) is lo.AdamConfig
        # saved configs say which implementation: ours by our uniform name, Levanter's by its own
        text, _loaded = _saved_and_loaded(TrainLmConfig(optimizer=marin_optim.AdamConfig()))
        assert yaml.unsafe_load(text)["optimizer"]["type"] == "marin_optim.adam"
        assert draccus.encode(lo.AdamConfig(), lo.OptimizerConfig)["type"] == "levanter.adam"
        assert plugin.taken_over() == ("adam",)
    finally:
        plugin.give_back("adam")
    assert _levanter_registry()["adam"] is lo.AdamConfig
    assert "levanter.adam" not in _levanter_registry()
    with pytest.raises(ConfigError, match="marin_optim has no optimizer of that name"):
        plugin.take_over("kronn")  # a typo: every Levanter name is ours now
    with pytest.raises(ConfigError, match="Levanter has no optimizer of that name"):
        plugin.take_over("normuon")


def test_field_differences_compare_schedules_by_meaning():
    @dataclasses.dataclass(frozen=True)
    class NewerLevanterAdam(lo.AdamConfig):  # a Levanter release with a new field and default
        beta2: float = 0.99
        new_option: bool = False

    only_levanter, only_ours, defaults = plugin.field_differences(marin_optim.AdamConfig, NewerLevanterAdam)
    assert only_levanter == ["new_option"] and "skip_window" in only_ours
    assert defaults == ["beta2: 0.95 vs 0.99"]  # Levanter's "cosine" is our CosineSchedule()
    assert plugin.field_differences(marin_optim.LionConfig, lo.LionConfig)[::2] == ([], [])


def _yaml(tmp_path: Path, optimizer: dict) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"optimizer": optimizer}))
    return str(path)


def test_launcher_rejects_unknown_names_and_fields_with_close_matches(tmp_path):
    with pytest.raises(ConfigError, match=r"'muom'.*did you mean 'muon' or .*'marin_optim\.muon'"):
        check_optimizer(["--config_path", _yaml(tmp_path, {"type": "muom"})])
    with pytest.raises(ConfigError, match=r"did you mean 'marin_optim\.normuon'"):
        check_optimizer(["--optimizer.type", "marin_optim.normuom"])
    # a field of another optimizer, asked of ours
    with pytest.raises(ConfigError, match=r"optimizer.backend_steps: not a field of 'marin_optim.adam'"):
        path = _yaml(tmp_path, {"type": "marin_optim.adam"})
        check_optimizer(["--config_path", path, "--optimizer.backend_steps", "5"])
    # a field only ours has, asked of Levanter's
    with pytest.raises(
        ConfigError, match=r"skip_window.*marin_optim's 'adam' has it \(type: marin_optim.adam\)"
    ):
        check_optimizer(["--config_path", _yaml(tmp_path, {"type": "adam", "skip_window": 64})])
    with pytest.raises(ConfigError, match="did you mean 'beta2'"):
        check_optimizer(["--optimizer.type=marin_optim.lion", "--optimizer.beta_2=0.9"])
    # nested fields of ours are checked too
    with pytest.raises(ConfigError, match=r"lr_schedule\.type='cosin'"):
        check_optimizer(["--optimizer.type", "marin_optim.adam", "--optimizer.lr_schedule.type", "cosin"])
    check_optimizer(["--config_path", _yaml(tmp_path, {"type": "marin_optim.adam", "beta2": 0.99})])
    check_optimizer(["--config_path", _yaml(tmp_path, {"type": "adam", "update_rms_clipping": 1.0})])


def test_launcher_reads_the_configs_levanter_reads_and_leaves_it_the_others(tmp_path):
    muon = tmp_path / "muon.yaml"
    muon.write_text(yaml.safe_dump({"optimizer": {"type": "marin_optim.muon"}}))
    (tmp_path / "steps.yaml").write_text(yaml.safe_dump({"trainer": {"num_train_steps": 10}}))
    # a name Levanter completes with .yaml; several files, concatenated
    check_optimizer(["--config_path", str(tmp_path / "muon"), "--optimizer.adam_lr", "3e-3"])
    check_optimizer(["--configs", str(muon), str(tmp_path / "steps.yaml"), "--optimizer.adam_lr", "3e-3"])
    with pytest.raises(ConfigError, match=r"optimizer\.adam_lr: not a field of 'marin_optim\.lion'"):
        check_optimizer(
            ["--config", str(muon), "--optimizer.type", "marin_optim.lion", "--optimizer.adam_lr", "1"]
        )
    # a config only Levanter reads (a URL, its own config folder): its optimizer is Levanter's to check
    check_optimizer(["--config_path", "gs://bucket/run.yaml", "--optimizer.adam_lr", "3e-3"])
    with pytest.raises(ConfigError, match="did you mean 'beta2'"):  # unless the type is given here
        check_optimizer(
            [
                "--config_path",
                "gs://b/run.yaml",
                "--optimizer.type=marin_optim.lion",
                "--optimizer.beta_2=0.9",
            ]
        )


def test_launcher_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert launcher_main(["--config_path", _yaml(tmp_path, {})]) == 2  # no ENTRY, or a flag as ENTRY
    assert launcher_main(["train_lmm"]) == 2
    assert "did you mean 'train_lm'" in capsys.readouterr().err
    assert launcher_main(["--take-over", "nope", "train_lm"]) == 2
    assert launcher_main(["train_lm", "--config_path", _yaml(tmp_path, {"type": "marin_optim.lino"})]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("python -m marin_optim.levanter: error:") for line in err)
    assert "'marin_optim.lion'?)" in err[-1]
    # a value our validation refuses, found while Levanter itself parses the config
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"optimizer": {"type": "marin_optim.adam", "beta2": 1.5}}))
    assert launcher_main(["train_lm", "--config_path", str(cfg)]) == 2
    assert "beta2=1.5: must be in [0, 1)" in capsys.readouterr().err


def test_list_levanter_shows_which_name_reaches_which_implementation(capsys):
    assert cli_main(["list", "--levanter"]) == 0
    out = capsys.readouterr().out
    assert "marin_optim.muon" in out and "marin_optim.optimizers.muon.MuonConfig" in out
    assert any(line.split()[:2] == ["muon", "levanter"] for line in out.splitlines())


def test_an_entry_point_plugin_is_choosable_in_levanter(tmp_path):
    """A package that registers through the `marin_optim.plugins` entry point, seen from Levanter."""
    (tmp_path / "my_plugin.py").write_text(
        textwrap.dedent(
            '''
            from dataclasses import dataclass
            from marin_optim import AdamConfig, OptimizerConfig

            @OptimizerConfig.register_subclass("plugged")
            @dataclass(frozen=True)
            class Plugged(AdamConfig):
                """An optimizer from an installed plugin."""
            '''
        )
    )
    dist = tmp_path / "my_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[marin_optim.plugins]\nplugged = my_plugin\n")
    script = (
        "import marin_optim.levanter, levanter.optim as lo;"
        "print(lo.OptimizerConfig.get_choice_class('marin_optim.plugged').__qualname__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**_env(), "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().endswith("Plugged")


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_matrix_optimizers_label_levanters_llama(capsys):
    """Muon, NorMuon, Dion and Scion on Levanter's own Llama: which rule updates each parameter."""
    import equinox as eqx
    import haliax as hax
    import jax
    from levanter.models.llama import LlamaConfig

    llama = LlamaConfig(
        hidden_dim=64, intermediate_dim=128, num_layers=2, num_heads=2, num_kv_heads=2, max_seq_len=64
    )
    model = eqx.filter_eval_shape(lambda: llama.build(hax.Axis("vocab", 128), key=jax.random.PRNGKey(0)))
    expected = {
        "q_proj": "matrix",
        "k_proj": "matrix",
        "v_proj": "matrix",
        "o_proj": "matrix",
        "gate_proj": "matrix",
        "up_proj": "matrix",
        "down_proj": "matrix",
        "input_layernorm": "vector",
        "post_attention_layernorm": "vector",
        "transformer.norm": "vector",
        "token_embeddings": "embedding",
        "lm_head": "head",
    }
    for cfg in (
        marin_optim.MuonConfig(),
        marin_optim.NorMuonConfig(),
        marin_optim.DionConfig(),
        marin_optim.ScionConfig(),
    ):
        table = cfg.describe_labels(model)
        print(f"{type(cfg).__name__}:\n{table}\n")
        rows = {line.split()[0]: line.split()[2] for line in table.splitlines()[1:] if "." in line.split()[0]}
        assert len(rows) == 12
        for path, kind in rows.items():
            wanted = [k for part, k in expected.items() if part in path]
            assert wanted == [kind], (type(cfg).__name__, path, kind)
    assert "transformer.layers.stacked.self_attn.q_proj.weight" in capsys.readouterr().out


def test_loaded_yaml_text_round_trip_of_the_optimizer_block():
    """The optimizer block alone, as a user copies it from a saved config.yaml into a new one."""
    block = draccus.encode(marin_optim.NorMuonConfig(muon_beta2=0.9), lo.OptimizerConfig)
    text = yaml.safe_dump({"optimizer": block})
    loaded = draccus.load(TrainLmConfig, io.StringIO(text))
    assert loaded.optimizer == marin_optim.NorMuonConfig(muon_beta2=0.9)


def test_trainer_fixes_refuse_a_levanter_whose_trainer_changed(monkeypatch):
    # the guard and the loss fix read these arguments; a Trainer without them must not pass silently
    import levanter.trainer

    from marin_optim.levanter.trainer import install_trainer_fixes

    class Renamed:
        def __init__(self, config, optimizer, loss):  # loss_fn renamed
            pass

    monkeypatch.setattr(levanter.trainer, "Trainer", Renamed)
    with pytest.raises(ImportError, match=r"lacks loss_fn, which marin_optim's fixes read"):
        install_trainer_fixes()
    assert not hasattr(Renamed.__init__, "__marin_optim_original__")
