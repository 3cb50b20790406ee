"""Every registered optimizer, at its defaults, trains a tiny model: finite, and the loss falls.

A two-layer tanh MLP (``layer1.weight``/``layer1.bias``/... so that the default decay mask has
biases to exempt) fits a fixed random regression for 30 steps, jitted as one ``lax.scan``. The
trainer contract is the speedrun's: ``update(grads, state, params, loss=loss, obj_fn=obj_fn)``,
so SAM, Polyak-type and Sophia-type optimizers get what they need. ``noop`` must leave the
parameters unchanged instead. A second test traces one update with bfloat16 parameters and
checks that the state keeps its structure and dtypes. The list of names is read from the
registry, so a new optimizer (ours, a user's, or one optax adds) is covered without editing
this file.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import marin_optim  # noqa: F401  (registers every optimizer)
from marin_optim.config import OptimizerConfig
from marin_optim.optimizers.noop import NoOpConfig
from marin_optim.optimizers.schedule_free import eval_params

STEPS = 30
_rng = np.random.default_rng(0)
X = jnp.asarray(_rng.normal(size=(64, 8)), jnp.float32)
Y = jnp.asarray(np.tanh(np.asarray(X) @ _rng.normal(size=(8, 4))), jnp.float32)


def init_params():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return {
        "layer1": {"weight": jax.random.normal(k1, (8, 16)) * 0.3, "bias": jnp.zeros((16,))},
        "layer2": {"weight": jax.random.normal(k2, (16, 4)) * 0.3, "bias": jnp.zeros((4,))},
    }


def loss_fn(params):
    hidden = jnp.tanh(X @ params["layer1"]["weight"] + params["layer1"]["bias"])
    return jnp.mean((hidden @ params["layer2"]["weight"] + params["layer2"]["bias"] - Y) ** 2)


def train(cfg):
    tx = cfg.build(STEPS)
    params = init_params()

    @jax.jit
    def run(params, state):
        def body(carry, _):
            params, state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, state = tx.update(grads, state, params, loss=loss, obj_fn=loss_fn)
            return (optax.apply_updates(params, updates), state), loss

        (params, state), losses = jax.lax.scan(body, (params, state), None, length=STEPS)
        return params, losses, loss_fn(eval_params(state, params))

    return run(params, tx.init(params))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OptimizerConfig.registered()))
def test_short_run_is_finite_and_learns(name):
    cfg = OptimizerConfig.get_choice_class(name)()
    params, losses, eval_loss = train(cfg)
    losses = np.asarray(losses)
    assert np.all(np.isfinite(losses)), losses
    assert np.isfinite(float(eval_loss))
    for leaf in jax.tree.leaves(params):
        assert np.all(np.isfinite(np.asarray(leaf)))
    if isinstance(cfg, NoOpConfig):
        for new, old in zip(jax.tree.leaves(params), jax.tree.leaves(init_params()), strict=True):
            np.testing.assert_array_equal(np.asarray(new), np.asarray(old))
        return
    assert losses[-1] < losses[0], f"{name}: loss went from {losses[0]:.5f} to {losses[-1]:.5f}"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OptimizerConfig.registered()))
def test_state_keeps_its_dtypes_with_bfloat16_params(name):
    """A jitted train loop carries the state (scan, donation): its dtypes must not drift, e.g.
    when a float32 learning rate meets bfloat16 parameters. Checked by tracing only."""
    cfg = OptimizerConfig.get_choice_class(name)()
    tx = cfg.build(STEPS)
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), init_params())
    state = tx.init(params)

    def objective(p):
        return loss_fn(jax.tree.map(lambda x: x.astype(jnp.float32), p))

    def one_step(state, params):
        loss, grads = jax.value_and_grad(objective)(params)
        return tx.update(grads, state, params, loss=loss, obj_fn=objective)[1]

    new_state = jax.eval_shape(one_step, state, params)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    for new, old in zip(jax.tree.leaves(new_state), jax.tree.leaves(state), strict=True):
        assert (new.shape, new.dtype) == (old.shape, old.dtype)
