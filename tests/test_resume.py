"""Resume semantics for optimizer configs (Megatron's modes, OLMo-core's fixed fields)."""

from __future__ import annotations

import pytest

from marin_optim import AdamConfig, ConfigError, LionConfig
from marin_optim.config import resolve_resume


def test_strict_requires_equal_configs_and_names_every_difference():
    saved = AdamConfig(learning_rate=1e-3, warmup=10)
    assert resolve_resume(saved, AdamConfig(learning_rate=1e-3, warmup=10)) == (saved, False)
    with pytest.raises(ConfigError) as e:
        resolve_resume(saved, AdamConfig(learning_rate=2e-3, warmup=20, beta2=0.99))
    msg = str(e.value)
    for name in ("learning_rate", "warmup", "beta2", "override", "checkpoint"):
        assert name in msg


def test_override_takes_the_config_and_checkpoint_takes_the_checkpoint():
    saved = AdamConfig(learning_rate=1e-3, warmup=10)
    current = AdamConfig(learning_rate=2e-3, warmup=20)
    assert resolve_resume(saved, current, "override") == (current, False)
    assert resolve_resume(saved, current, "checkpoint") == (saved, False)


def test_fixed_fields_are_never_taken_from_the_checkpoint():
    saved = AdamConfig(learning_rate=1e-3, warmup=10)
    current = AdamConfig(learning_rate=2e-3, warmup=20, fixed_fields=["learning_rate"])
    resolved, _ = resolve_resume(saved, current, "checkpoint")
    assert resolved.learning_rate == 2e-3 and resolved.warmup == 10


def test_a_different_optimizer_type_needs_an_explicit_reset():
    with pytest.raises(ConfigError, match="reset_optimizer_state"):
        resolve_resume(AdamConfig(), LionConfig())
    resolved, reset = resolve_resume(AdamConfig(), LionConfig(), reset_optimizer_state=True)
    assert isinstance(resolved, LionConfig) and reset


def test_strict_tells_a_duration_in_steps_from_one_in_fractions():
    # warmup 1 is one step, 1.0 the whole run: equal as Python numbers, not as configs
    with pytest.raises(ConfigError, match=r"warmup \(checkpoint 1, config 1\.0\)"):
        resolve_resume(AdamConfig(warmup=1), AdamConfig(warmup=1.0))
    with pytest.raises(ConfigError, match="decay"):
        resolve_resume(AdamConfig(decay=0.5), AdamConfig(decay=1))
    assert resolve_resume(AdamConfig(warmup=0), AdamConfig(warmup=0.0))[1] is False  # none either way


def test_a_reset_state_still_takes_its_values_as_the_mode_says():
    saved, current = AdamConfig(learning_rate=1e-3), AdamConfig(learning_rate=3e-3)
    with pytest.raises(ConfigError, match="learning_rate"):
        resolve_resume(saved, current, "strict", reset_optimizer_state=True)
    assert resolve_resume(saved, current, "checkpoint", reset_optimizer_state=True) == (saved, True)
    assert resolve_resume(saved, current, "override", reset_optimizer_state=True) == (current, True)
    assert resolve_resume(saved, saved, "strict", reset_optimizer_state=True) == (saved, True)


def test_bad_mode_and_bad_fixed_field():
    with pytest.raises(ConfigError, match="optimizer_resume"):
        resolve_resume(AdamConfig(), AdamConfig(), "latest")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        AdamConfig(fixed_fields=["learning_rat"])


@pytest.mark.parametrize("cls", [AdamConfig, LionConfig])
def test_with_schedule_step_moves_the_schedule_and_nothing_else(cls):
    """A fresh state moved to step 40 takes step 41 at the schedule's value for count 40 (warmup
    20, cosine to 100), with moments that start from zero (Adam's bias correction at count 1)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from marin_optim import hyperparams
    from marin_optim.state import with_schedule_step

    cfg = cls(learning_rate=1e-2, warmup=20, weight_decay=0.0, max_grad_norm=None)
    tx = cfg.build(100)
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.full(3, 0.5)}
    moved = with_schedule_step(tx.init(params), 40)
    updates, state = tx.update(grads, moved, params)
    expected_lr = float(cfg.lr_scheduler(100)(40))
    assert float(hyperparams(state)["learning_rate"]) == pytest.approx(expected_lr, rel=1e-6)
    # The direction is that of a first step: Adam's bias-corrected first step is sign(g), Lion's too.
    np.testing.assert_allclose(np.asarray(updates["w"]), -expected_lr * np.ones(3), rtol=1e-5)
    with pytest.raises(ValueError, match="inject_hyperparams"):
        with_schedule_step(optax.sgd(0.1).init(params), 40)
    assert jax.tree.structure(moved) == jax.tree.structure(tx.init(params))
