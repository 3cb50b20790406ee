"""Inside Levanter's real ``train_lm``: our adam and muon against Levanter's, and 8 simulated devices.

Levanter logs metrics from step 2 on; each test compares every logged step.
"""

from __future__ import annotations

import numpy as np
import pytest
from levanter_runs import ADAM, LEVANTER_MUON, OUR_MUON, series, train

# one worker runs the module: its tests share the module fixtures (pytest -n 2 --dist loadgroup)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("train_lm_parity")]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("compilation_cache")


@pytest.fixture(scope="module")
def our_muon(tmp_path_factory, cache):
    return train(tmp_path_factory.mktemp("our_muon"), OUR_MUON, cache=cache).metrics


def _rel(a: dict, b: dict, name: str) -> float:
    x, y = series(a, name), series(b, name)
    return float(np.max(np.abs(x - y) / np.abs(y)))


def test_our_adam_is_levanters_adam_from_yaml(tmp_path, cache):
    theirs = train(tmp_path / "levanter", {"type": "adam", **ADAM}, ours=False, cache=cache).metrics
    ours = train(tmp_path / "ours", {"type": "marin_optim.adam", **ADAM}, cache=cache).metrics
    assert len(series(ours, "train/loss")) == 18  # steps 2..19
    loss, lr = _rel(ours, theirs, "train/loss"), _rel(ours, theirs, "optim/learning_rate")
    print(f"adam vs Levanter's: largest relative difference of the loss {loss:.1e}, of the LR {lr:.1e}")
    # the same loss at every step, to float32 rounding
    np.testing.assert_allclose(series(ours, "train/loss"), series(theirs, "train/loss"), rtol=1e-6)
    # the same logged learning rate (our schedule arithmetic differs in the last bits)
    np.testing.assert_allclose(
        series(ours, "optim/learning_rate"), series(theirs, "optim/learning_rate"), rtol=1e-6
    )
    # what only our optimizer logs: the clip's norm and the guard's counters
    last = ours[max(ours)]
    assert last["optim/grad_norm"] > 0
    assert last["optim/skip/skipped_steps"] == 0 and last["optim/skip/nonfinite_steps"] == 0
    assert "optim/grad_norm" not in theirs[max(theirs)]


def test_our_muon_is_levanters_muon_with_the_same_settings(tmp_path, cache, our_muon):
    """The same block (ours is a drop-in: Levanter's defaults, its branch clip, float32 quintic
    Newton-Schulz): the losses agree to float32 rounding; bfloat16 iterations (ours only) to
    bfloat16 rounding."""
    theirs = train(tmp_path / "levanter", LEVANTER_MUON, ours=False, cache=cache).metrics
    bf16 = train(tmp_path / "bf16", {**OUR_MUON, "ns_dtype": "bfloat16"}, cache=cache).metrics
    f32, b16 = _rel(our_muon, theirs, "train/loss"), _rel(bf16, theirs, "train/loss")
    print(f"muon vs Levanter's: largest relative loss difference {f32:.1e} (float32 NS), {b16:.1e} (bf16 NS)")
    np.testing.assert_allclose(series(our_muon, "train/loss"), series(theirs, "train/loss"), rtol=5e-6)
    # bfloat16 iterations round each Newton-Schulz product to 8 bits of mantissa: close, not equal
    np.testing.assert_allclose(series(bf16, "train/loss"), series(theirs, "train/loss"), rtol=2e-4)
    np.testing.assert_allclose(
        series(our_muon, "optim/learning_rate"), series(theirs, "optim/learning_rate"), rtol=1e-6
    )
    # Levanter injects the AdamW branch's rate as `adam_lr`, ours as `adam_learning_rate`
    np.testing.assert_allclose(
        series(our_muon, "optim/adam_learning_rate"), series(theirs, "optim/adam_lr"), rtol=1e-6
    )


def test_eight_devices_data_by_model_give_the_one_device_trajectory(tmp_path, cache, our_muon):
    """Levanter's mesh, data 4 x model 2, parameters and optimizer state sharded over `data` (FSDP)."""
    sharded = train(
        tmp_path,
        OUR_MUON,
        cache=cache,
        mesh={"axes": {"data": 4, "model": 2}},
        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
    ).metrics
    losses = series(sharded, "train/loss")
    assert len(losses) == 18
    np.testing.assert_allclose(losses, series(our_muon, "train/loss"), rtol=1e-5)
