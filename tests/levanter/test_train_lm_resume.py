"""Levanter's checkpointer saves and restores our optimizer state: a run killed (SIGKILL) and resumed
through Levanter ends with the parameters of the uninterrupted run, bitwise."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from levanter_runs import OUR_MUON

from marin_optim.levanter import offline

pytestmark = pytest.mark.slow

# Muon's momentum, the AdamW branch's moments, the injected step count and the spike guard's
# rolling windows all have to come back for the resumed steps to match.
OPTIMIZER = {**OUR_MUON, "skip_bad_steps": True, "skip_window": 8}
STEPS, EVERY, KILL_AFTER = 20, 5, 10


def _config(tmp, cache):
    return offline.train_lm_config(
        tmp, optimizer=OPTIMIZER, num_train_steps=STEPS, checkpoint_every=EVERY, compilation_cache_dir=cache
    )


def _final_model(config: dict):
    import equinox as eqx
    import haliax as hax
    import jax
    from levanter.checkpoint import load_checkpoint
    from levanter.models.llama import LlamaConfig

    model = config["model"]
    llama = LlamaConfig(
        max_seq_len=model["max_seq_len"],
        hidden_dim=model["hidden_dim"],
        intermediate_dim=model["intermediate_dim"],
        num_layers=model["num_layers"],
        num_heads=model["num_heads"],
        num_kv_heads=model["num_kv_heads"],
        gradient_checkpointing=False,
    )
    vocab = hax.Axis("vocab", config["data"]["vocab_size"])
    template = eqx.filter_eval_shape(lambda: llama.build(vocab, key=jax.random.PRNGKey(0)))
    last = offline.list_checkpoints(config)[STEPS - 1]
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    return load_checkpoint(template, last, subpath="model", mesh=mesh, axis_mapping={})


def test_kill_and_resume_through_levanters_checkpointer(tmp_path):
    cache = tmp_path / "cache"
    whole = _config(tmp_path / "whole", cache)
    proc = offline.run_train_lm(whole, launcher=[])
    assert proc.returncode == 0, proc.stderr[-3000:]

    broken = _config(tmp_path / "broken", cache)
    run = offline.start_train_lm(broken, launcher=[], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while KILL_AFTER not in offline.list_checkpoints(broken):
        assert run.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    run.send_signal(signal.SIGKILL)
    run.wait()
    last = max(offline.list_checkpoints(broken))
    assert last < STEPS - 1  # killed before the end
    # as if the kill had come while the next checkpoint's metadata.json was written: Levanter's
    # checkpointer cannot parse it and would fail every resume; the plugin sets it aside
    torn = Path(broken["trainer"]["checkpointer"]["base_path"]) / broken["trainer"]["id"] / f"step-{last + 1}"
    torn.mkdir(parents=True, exist_ok=True)
    (torn / "metadata.json").write_text('{"step": ')

    resumed = offline.run_train_lm(broken, launcher=[])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming training from step" in resumed.stderr
    assert (torn / "metadata.json.torn").read_text() == '{"step": '  # set aside, not deleted

    # The resumed launch logs the same losses, learning rates and guard statistics as the
    # uninterrupted run, step by step...
    reference = offline.read_metrics(tmp_path / "whole")
    after = offline.read_metrics(tmp_path / "broken", launch=-1)
    steps = [s for s in after if s > KILL_AFTER]
    assert steps and max(steps) == STEPS - 1
    for step in steps:
        for name in (
            "train/loss",
            "optim/learning_rate",
            "optim/adam_learning_rate",
            "optim/skip/loss_zscore",
        ):
            assert after[step][name] == reference[step][name], (step, name)
    # ... and ends with the same parameters, bitwise.
    import jax

    whole_params = jax.tree.leaves(_final_model(whole))
    broken_params = jax.tree.leaves(_final_model(broken))
    assert len(whole_params) == 12
    for a, b in zip(whole_params, broken_params, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_torn_checkpoints_are_set_aside(tmp_path):
    from marin_optim.levanter.trainer import set_aside_torn_checkpoints

    run = tmp_path / "run"
    for name, text in {"step-4": '{"step": 4}', "step-9": "", "step-12": '{"st', "step-13": None}.items():
        (run / name).mkdir(parents=True)
        if text is not None:
            (run / name / "metadata.json").write_text(text)
    assert set_aside_torn_checkpoints([str(run), str(tmp_path / "absent")]) == ["step-12", "step-9"]
    assert (run / "step-4" / "metadata.json").read_text() == '{"step": 4}'
    assert sorted(p.parent.name for p in run.glob("*/metadata.json.torn")) == ["step-12", "step-9"]
    assert not (run / "step-13" / "metadata.json.torn").exists()
    assert set_aside_torn_checkpoints([str(run)]) == []  # idempotent

    # a checkpoint the run was told to load (trainer.load_checkpoint_path) is refused when torn,
    # not set aside (the run would start afresh); a folder of them is cleaned like the run's own
    from marin_optim.errors import ConfigError

    (run / "step-14").mkdir()
    (run / "step-14" / "metadata.json").write_text('{"st')
    asked = str(run / "step-14")
    with pytest.raises(ConfigError, match=r"trainer\.load_checkpoint_path=.*step-14.*cut off"):
        set_aside_torn_checkpoints([asked], asked=asked)
    assert (run / "step-14" / "metadata.json").exists()
    assert set_aside_torn_checkpoints([str(run)], asked=str(run)) == ["step-14"]
