"""SAM around any optimizer config, against steps computed by hand on a quadratic.

``L(w) = 0.5 w^T A w - b^T w`` has gradient ``A w - b``, so the perturbed gradient is known in
closed form: ``g' = A (w + e) - b`` with ``e = rho g / ||g||`` (adaptive: ``rho w^2 g / ||w g||``).
"""

from __future__ import annotations

import dataclasses

import draccus
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError
from marin_optim.state import hyperparams

A = np.array([[3.0, 0.5, 0.0], [0.5, 2.0, -0.3], [0.0, -0.3, 1.0]])
B = np.array([1.0, -2.0, 0.5])
W0 = np.array([0.7, -1.2, 2.0])


def objective(p):
    w = p["w"]
    return 0.5 * w @ jnp.asarray(A, jnp.float32) @ w - jnp.asarray(B, jnp.float32) @ w


def grad64(w):
    return A @ w - B


def _cls(name):
    return OptimizerConfig.get_choice_class(name)


def _sgd(lr=0.1, **kw):
    base = dict(
        learning_rate=lr, momentum=0.0, lr_schedule="constant", warmup=0, max_grad_norm=None, weight_decay=0.0
    )
    base.update(kw)
    return _cls("sgd")(**base)


def run(cfg, steps, jit=True):
    params = {"w": jnp.asarray(W0, jnp.float32)}
    tx = cfg.build(10)
    state = tx.init(params)

    def step(p, s):
        g = jax.grad(objective)(p)
        u, s = tx.update(g, s, p, obj_fn=objective, loss=objective(p))
        return optax.apply_updates(p, u), s

    step = jax.jit(step) if jit else step
    out = []
    for _ in range(steps):
        params, state = step(params, state)
        out.append(np.asarray(params["w"], np.float64))
    return out, state


def sam_gradient64(w, rho, adaptive=False):
    g = grad64(w)
    if adaptive:
        e = rho * w**2 * g / np.linalg.norm(np.abs(w) * g)
    else:
        e = rho * g / np.linalg.norm(g)
    return grad64(w + e)


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_sgd_step_by_hand(adaptive):
    rho, lr = 0.3, 0.1
    cfg = _cls("sam")(base=_sgd(lr), rho=rho, adaptive=adaptive)
    trajectory, _ = run(cfg, 3)
    w = W0.copy()
    for got in trajectory:
        w = w - lr * sam_gradient64(w, rho, adaptive)
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)
    # and it is not plain SGD
    assert np.max(np.abs(trajectory[0] - (W0 - lr * grad64(W0)))) > 1e-3


def test_sam_adamw_steps_by_hand():
    rho, lr, b1, b2, eps, wd = 0.05, 0.01, 0.9, 0.95, 1e-8, 0.1
    base = _cls("adamw")(
        learning_rate=lr,
        beta1=b1,
        beta2=b2,
        epsilon=eps,
        weight_decay=wd,
        lr_schedule="constant",
        warmup=0,
        max_grad_norm=None,
        default_weight_decay_mask=False,
    )
    trajectory, state = run(_cls("sam")(base=base, rho=rho), 4)
    w, m, v = W0.copy(), np.zeros(3), np.zeros(3)
    for t, got in enumerate(trajectory, start=1):
        g = sam_gradient64(w, rho)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - lr * ((m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps) + wd * w)
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)
    logged = hyperparams(state)
    assert float(logged["learning_rate"]) == pytest.approx(lr)
    assert float(logged["sam_perturbed_grad_norm"]) > 0


def test_the_base_clip_applies_to_the_perturbed_gradient():
    rho, lr, clip = 0.3, 0.1, 0.5
    cfg = _cls("sam")(base=_sgd(lr, max_grad_norm=clip), rho=rho)
    trajectory, state = run(cfg, 1)
    g = sam_gradient64(W0, rho)
    assert np.linalg.norm(g) > clip
    np.testing.assert_allclose(trajectory[0], W0 - lr * g * clip / np.linalg.norm(g), rtol=1e-5)
    logged = hyperparams(state)
    assert float(logged["grad_norm"]) == pytest.approx(np.linalg.norm(grad64(W0)), rel=1e-5)
    assert float(logged["sam_perturbed_grad_norm"]) == pytest.approx(np.linalg.norm(g), rel=1e-5)


@pytest.mark.parametrize("jit", [False, True])
def test_without_obj_fn_the_first_update_says_what_to_pass(jit):
    tx = _cls("sam")(base=_sgd()).build(10)
    params = {"w": jnp.asarray(W0, jnp.float32)}
    state = tx.init(params)  # building and initialising need no objective
    update = jax.jit(tx.update) if jit else tx.update
    with pytest.raises(ValueError, match=r"obj_fn=obj_fn"):
        update(jax.grad(objective)(params), state, params)


def test_sam_keeps_the_injected_state_outermost_and_the_base_schedule():
    base = _sgd(0.1, lr_schedule="linear", warmup=2, min_lr_ratio=0.5)
    cfg = _cls("sam")(base=base)
    _, state = run(cfg, 3)
    assert hasattr(state, "hyperparams")
    assert float(hyperparams(state)["learning_rate"]) == pytest.approx(float(base.lr_scheduler(10)(2)))
    assert float(cfg.lr_scheduler(10)(5)) == pytest.approx(float(base.lr_scheduler(10)(5)))


def test_sam_around_cautious_wrapper_around_adamw_composes():
    cfg = draccus.decode(
        OptimizerConfig,
        {
            "type": "sam",
            "rho": 0.1,
            "base": {"type": "cautious_wrapper", "base": {"type": "adamw", "learning_rate": 0.01}},
        },
    )
    assert type(cfg.base.base).__name__ == "AdamWConfig"
    trajectory, state = run(cfg, 3)
    assert np.all(np.isfinite(trajectory[-1]))
    assert objective({"w": jnp.asarray(trajectory[-1], jnp.float32)}) < objective(
        {"w": jnp.asarray(W0, jnp.float32)}
    )
    assert "sam_perturbed_grad_norm" in hyperparams(state)


def test_yaml_round_trip():
    cfg = _cls("sam")(base=_cls("lion")(learning_rate=3e-4, beta2=0.98), rho=0.02, adaptive=True)
    encoded = draccus.encode(cfg, OptimizerConfig)
    assert encoded["type"] == "sam" and encoded["base"]["type"] == "lion"
    assert draccus.decode(OptimizerConfig, encoded) == cfg


def test_common_fields_belong_to_the_base():
    with pytest.raises(ConfigError, match=r"sam.learning_rate=0.001: set it on the base optimizer"):
        _cls("sam")(learning_rate=1e-3)
    with pytest.raises(ConfigError, match=r"base.max_grad_norm"):
        _cls("sam")(max_grad_norm=0.5)


def test_a_perturbed_gradient_that_is_not_finite_falls_back_to_the_plain_one():
    # the loss overflows at w + e (which the guard, seeing only g, cannot know): a plain step
    from marin_optim.transforms.sam import sam_gradient

    def overflowing(p):
        return jnp.sum(p["w"] ** 2 * jnp.where(p["w"] > 0.5, jnp.inf, 1.0))  # an inf gradient there

    params = {"w": jnp.asarray([0.4, 0.1])}
    grads = jax.grad(overflowing)(params)
    tx = sam_gradient(rho=0.2)  # e = 0.2 g / ||g||: w[0] + e[0] > 0.5
    updates, state = tx.update(grads, tx.init(params), params, obj_fn=overflowing)
    np.testing.assert_array_equal(np.asarray(updates["w"]), np.asarray(grads["w"]))
    assert not np.isfinite(float(state.perturbed_grad_norm))  # logged as it was


def test_invalid_values_are_rejected():
    with pytest.raises(ConfigError, match="rho"):
        _cls("sam")(rho=0.0)
    grouped = dataclasses.replace(_sgd(), group_overrides=[{"params": ["w"], "learning_rate": 0.01}])
    with pytest.raises(ConfigError, match="group_overrides"):
        _cls("sam")(base=grouped)


def test_derived_configs_stack_and_survive_replace():
    """``derive_config``: base's values in a subclass overriding methods; nesting stacks the
    overrides (outer first) and ``dataclasses.replace`` (parameter groups) keeps them."""
    from marin_optim.optimizers._wrapper import derive_config

    calls: list[str] = []

    def tagged(tag):
        def update_rule(parent, self_, hp):
            calls.append(tag)
            return parent(hp)

        return {"update_rule": update_rule}

    base = _sgd(lr=0.1, weight_decay=0.01)
    inner = derive_config(base, "Inner", tagged("inner"))
    outer = derive_config(inner, "Outer", tagged("outer"))
    assert type(outer).__name__ == "OuterInnerSGDConfig" and isinstance(outer, type(base))
    assert {f.name: getattr(outer, f.name) for f in dataclasses.fields(base)} == {
        f.name: getattr(base, f.name) for f in dataclasses.fields(base)
    }
    replaced = dataclasses.replace(outer, learning_rate=0.2)
    assert type(replaced) is type(outer) and replaced.learning_rate == 0.2
    replaced.update_rule({"learning_rate": 0.2, "weight_decay": 0.01})
    assert calls == ["outer", "inner"]
