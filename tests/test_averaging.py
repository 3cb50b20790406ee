"""Model averaging (``model_averaging: {type: ema | ema_decay_sqrt}``) against the written rule."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marin_optim import ConfigError, OptimizerConfig, SGDConfig, eval_params
from marin_optim.averaging import EmaConfig, EmaDecaySqrtConfig, ModelAveragingConfig


def _written(kind: str, params: list[np.ndarray], beta: float, switch: int = 0, decay: int = 1) -> np.ndarray:
    """The average after each of ``params[1:]`` (``params[0]`` the initial parameters), in float64."""
    avg, total = params[0].astype(np.float64), 0.0
    for t, p in enumerate(params[1:]):
        if kind == "ema":
            alpha = 1 - beta
        else:
            w = 1 - beta if t < switch else 1 - math.sqrt(min(1.0, (t - switch) / decay))
            total += w
            alpha = w / total if total > 0 else 0.0
        avg = alpha * p + (1 - alpha) * avg
    return avg


def _run(cfg: OptimizerConfig, grads: list[np.ndarray]) -> tuple[list[np.ndarray], jax.Array]:
    tx = cfg.build(100)
    params = {"w": jnp.linspace(-1.0, 1.0, 6)}
    state = tx.init(params)
    seen = [np.asarray(params["w"])]
    step = jax.jit(tx.update)
    for g in grads:
        updates, state = step({"w": jnp.asarray(g)}, state, params)
        params = {"w": params["w"] + updates["w"]}
        seen.append(np.asarray(params["w"]))
    return seen, eval_params(state, params)["w"]


GRADS = [np.sin(np.arange(6.0) * (k + 1)) for k in range(12)]


@pytest.mark.parametrize(
    ("averaging", "written"),
    [
        ({"type": "ema", "beta": 0.7}, {"kind": "ema", "beta": 0.7}),
        (
            {"type": "ema_decay_sqrt", "beta": 0.8, "switch_step": 3, "decay_steps": 5},
            {"kind": "sqrt", "beta": 0.8, "switch": 3, "decay": 5},
        ),
    ],
)
def test_the_average_in_the_optimizer_state_is_the_written_rule(averaging, written):
    cfg = SGDConfig(learning_rate=0.1, warmup=0, weight_decay=0.0, model_averaging=averaging)
    seen, averaged = _run(cfg, GRADS)
    np.testing.assert_allclose(averaged, _written(params=seen, **written), rtol=1e-5, atol=1e-6)
    plain, _ = _run(SGDConfig(learning_rate=0.1, warmup=0, weight_decay=0.0), GRADS)
    np.testing.assert_array_equal(np.stack(seen), np.stack(plain))  # the training itself is unchanged
    assert not np.allclose(averaged, seen[-1])


def test_ema_decay_sqrt_freezes_after_its_decay():
    cfg = SGDConfig(
        learning_rate=0.1,
        warmup=0,
        model_averaging={"type": "ema_decay_sqrt", "beta": 0.5, "switch_step": 2, "decay_steps": 3},
    )
    _, after_decay = _run(cfg, GRADS[:6])  # updates 0..5: the weight reaches 0 at update 5
    _, later = _run(cfg, GRADS)
    np.testing.assert_allclose(later, after_decay, rtol=1e-6)


def test_a_skipped_step_leaves_the_average_alone():
    cfg = SGDConfig(learning_rate=0.1, warmup=0, model_averaging={"type": "ema", "beta": 0.5})
    nan = np.full(6, np.nan)
    _, averaged = _run(cfg, [GRADS[0], nan, GRADS[1]])
    _, unbroken = _run(cfg, [GRADS[0], GRADS[1]])
    np.testing.assert_allclose(averaged, unbroken, rtol=1e-6)


def test_fields_yaml_and_the_update_path():
    cfg = OptimizerConfig.from_yaml("type: adamw\nmodel_averaging: {type: ema_decay_sqrt, switch_step: 10}")
    assert cfg.model_averaging == EmaDecaySqrtConfig(switch_step=10)
    assert OptimizerConfig.from_yaml(cfg.to_yaml()) == cfg
    assert cfg.update_path_plan() == ("chain", "model_averaging")
    assert EmaConfig().beta == EmaDecaySqrtConfig().beta == 0.999  # Levanter's defaults
    assert set(ModelAveragingConfig.registered()) >= {"ema", "ema_decay_sqrt"}
    with pytest.raises(ConfigError, match=r"model_averaging.beta=1.0: must be in \[0, 1\)"):
        EmaConfig(beta=1.0)
    with pytest.raises(ConfigError, match=r"model_averaging\.decay_steps=0"):
        EmaDecaySqrtConfig(decay_steps=0)
    with pytest.raises(ConfigError, match="ema_sqrt"):
        OptimizerConfig.from_yaml("type: adamw\nmodel_averaging: {type: ema_sqrt}")


def test_levanters_interface_takes_its_step_and_is_jit_safe():
    """``create(model).update(model, step)`` with a traced step (Levanter's jitted train step)."""
    rule = EmaDecaySqrtConfig(beta=0.5, switch_step=2, decay_steps=3)
    model = {"w": jnp.zeros(3)}
    average = rule.create(model)
    update = jax.jit(lambda a, m, s: a.update(m, s))
    seen = [np.zeros(3)]
    for t in range(6):
        model = {"w": jnp.full(3, float(t + 1))}
        average = update(average, model, jnp.asarray(t))
        seen.append(np.asarray(model["w"]))
    np.testing.assert_allclose(average.model_params["w"], _written("sqrt", seen, 0.5, 2, 3), rtol=1e-6)


def test_a_bfloat16_parameters_average_moves_and_is_kept_in_float32():
    # 1,000 updates toward 2.0 from 1.0 with beta 0.999: 2 - exp(-1) = 1.632 (in bfloat16 the
    # average would round back to 1.0 at every step)
    from marin_optim.averaging import ParameterAverage

    start = ParameterAverage.start({"w": jnp.ones(4, jnp.bfloat16)})
    assert start.params["w"].dtype == jnp.float32
    target = {"w": jnp.full(4, 2.0, jnp.bfloat16)}
    step = jax.jit(lambda avg: EmaConfig(beta=0.999).step(avg, target))
    avg = jax.lax.fori_loop(0, 1000, lambda _, a: step(a), start)
    np.testing.assert_allclose(np.asarray(avg.params["w"]), 2.0 - 0.999**1000, rtol=1e-4)
    assert avg.eval_params(target)["w"].dtype == jnp.bfloat16
