"""Levanter's model averaging (``trainer.model_averaging``: ``ema``, ``ema_decay_sqrt``) and ours."""

from __future__ import annotations

import draccus
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from dropin import llama_params
from levanter.optim import EmaDecaySqrtConfig as LevanterEmaDecaySqrt
from levanter.optim import EmaModelAveragingConfig as LevanterEma
from levanter.trainer import TrainerConfig
from levanter_runs import ADAM, train

from marin_optim.averaging import EmaConfig, EmaDecaySqrtConfig
from marin_optim.levanter import field_differences


def _models(n: int) -> list:
    """The Llama's parameters, then ``n`` perturbed copies (a training run's iterates)."""
    params = llama_params()
    out = [params]
    for i in range(n):
        leaves, treedef = jax.tree.flatten(out[-1])
        keys = jax.random.split(jax.random.PRNGKey(i), len(leaves))
        out.append(
            jax.tree.unflatten(
                treedef, [x + 0.01 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
            )
        )
    return out


def _averaged(rule, models, jit: bool):
    average = rule.create(models[0])
    update = eqx.filter_jit(lambda a, m, s: a.update(m, s)) if jit else (lambda a, m, s: a.update(m, s))
    for step, model in enumerate(models[1:]):
        average = update(average, model, jnp.asarray(step) if jit else step)
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(average.model_params)]


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (EmaConfig(beta=0.8), LevanterEma(beta=0.8)),
        (
            EmaDecaySqrtConfig(beta=0.8, switch_step=3, decay_steps=4),
            LevanterEmaDecaySqrt(beta=0.8, switch_step=3, decay_steps=4),
        ),
    ],
)
def test_our_average_is_levanters(ours, theirs):
    """Same fields and defaults; over 10 updates of a Llama's parameters, the same average. Levanter's
    ``ema_decay_sqrt`` is run step by step in Python: in a jitted step it fails (below)."""
    assert field_differences(type(ours), type(theirs)) == ([], [], [])
    models = _models(10)
    for a, b in zip(_averaged(ours, models, jit=True), _averaged(theirs, models, jit=False), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_levanters_ema_decay_sqrt_fails_in_a_jitted_step_and_ours_does_not():
    models = _models(2)
    with pytest.raises(jax.errors.TracerBoolConversionError):
        _averaged(LevanterEmaDecaySqrt(switch_step=1, decay_steps=2), models, jit=True)
    _averaged(EmaDecaySqrtConfig(switch_step=1, decay_steps=2), models, jit=True)


def test_trainer_config_names_ours_and_loads_back():
    block = {"model_averaging": {"type": "marin_optim.ema_decay_sqrt", "switch_step": 5, "decay_steps": 10}}
    config = draccus.decode(TrainerConfig, block)
    assert config.model_averaging == EmaDecaySqrtConfig(switch_step=5, decay_steps=10)
    saved = yaml.safe_load(yaml.safe_dump(draccus.encode(config)))
    assert saved["model_averaging"]["type"] == "marin_optim.ema_decay_sqrt"
    assert draccus.decode(TrainerConfig, saved).model_averaging == config.model_averaging


@pytest.mark.extended
def test_ema_decay_sqrt_in_levanters_train_lm(tmp_path):
    """Levanter's trainer keeps our average beside its state, updates it in its jitted step and
    evaluates at it."""
    averaging = {"type": "marin_optim.ema_decay_sqrt", "beta": 0.9, "switch_step": 4, "decay_steps": 8}
    run = train(
        tmp_path,
        {"type": "adam", **ADAM},
        ours=True,
        steps=12,
        num_validation_sequences=8,
        trainer={"model_averaging": averaging},
    )
    last = run.metrics[max(run.metrics)]
    assert np.isfinite(last["train/loss"])
    assert any(k.startswith("eval/") and k.endswith("loss") for k in last), sorted(last)
