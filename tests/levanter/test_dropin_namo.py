"""Levanter's ``namo``, ``namoD`` and ``grug_muon`` blocks, default and with fields away from their
defaults: our update is Levanter's within :data:`dropin.NEWTON_SCHULZ` (float32 Newton-Schulz on
both sides; measured <= 1.4e-6).

``grug_muon`` routes raw ``(fan_in, fan_out)`` arrays by path and ``ndim``; on the harness's
haliax Llama it would orthogonalise only the stacked norm gains (the ``Linear`` weights are 3-D
and 4-D named arrays, so AdamW), and Levanter's fails there without a device mesh. It is compared
here on a Grug-style dict of raw arrays instead, Levanter's on a one-device mesh (its update
re-shards to the parameters' mesh), ours without one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dropin import (
    NEWTON_SCHULZ,
    STEPS,
    TRAIN_STEPS,
    compare,
    levanter_block,
    load_levanter,
    load_ours,
    relative_difference,
)
from jax.sharding import AxisType, NamedSharding, PartitionSpec

VARIANTS = [
    pytest.param("namo", {}, id="namo-default"),
    pytest.param(
        "namo",
        dict(
            nesterov=False,
            coefficient_type="quintic",
            adam_weight_decay=0.0,
            max_grad_norm=0.0,
            learning_rate=2.0,
            weight_decay=0.5,
            mu2=0.95,
            scale_coeff=0.3,
        ),
        id="namo-no_nesterov-quintic-decay_matrices_only-no_clip-large_rate",
    ),
    pytest.param("namoD", {}, id="namoD-default"),
    pytest.param(
        "namoD",
        dict(
            col_state_clamp_c=0.5,
            nesterov=False,
            adam_weight_decay=0.05,
            backend_steps=4,
            coefficient_type="aol",
            learning_rate=0.5,
            weight_decay=0.5,
            adamnorm_eps=1e-3,
        ),
        id="namoD-clamp_0.5-no_nesterov-aol-large_rate",
    ),
]


@pytest.mark.parametrize(("name", "fields"), VARIANTS)
def test_our_update_is_levanters(name, fields):
    difference = compare(name, **fields)
    print(f"{name} {fields}: relative difference of the parameter change {difference:.1e}")
    assert difference <= NEWTON_SCHULZ


def grug_params() -> dict:
    """A Grug-style tree: raw (fan_in, fan_out) arrays, stacked MLP weights, an embedding, the head,
    an attention output (AdamW by name), a 3-D stack of another name (AdamW) and gains."""
    keys = iter(jax.random.split(jax.random.PRNGKey(0), 8))
    normal = lambda *shape: 0.02 * jax.random.normal(next(keys), shape)
    return {
        "token_embed": normal(128, 64),
        "blocks": {
            "attn": {"w_q": normal(64, 64), "w_kv": normal(64, 128), "w_output": normal(64, 64)},
            "mlp": {"w_up_gate": normal(2, 64, 256), "w_down": normal(2, 128, 64)},
            "w_other": normal(2, 64, 32),
            "norm": jnp.ones((64,)),
        },
        "lm_head": normal(64, 128),
    }


def grug_change(config, params) -> list[np.ndarray]:
    tx = config.build(TRAIN_STEPS)

    @jax.jit
    def step(p, state, g):
        updates, state = tx.update(g, state, p)
        return jax.tree.map(jnp.add, p, updates), state

    p, state = params, tx.init(params)
    leaves, treedef = jax.tree.flatten(params)
    for i in range(STEPS):
        keys = jax.random.split(jax.random.PRNGKey(1000 + i), len(leaves))
        noise = [0.01 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
        g = jax.tree.unflatten(treedef, noise)
        p, state = step(p, state, g)
    pairs = zip(jax.tree.leaves(p), leaves, strict=True)
    return [np.asarray(a, np.float64) - np.asarray(b, np.float64) for a, b in pairs]


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({}, id="default"),
        pytest.param(
            dict(
                weight_decay=0.1,
                adam_weight_decay=0.05,
                use_kimi_scaling=True,
                coefficient_type="simple",
                nesterov=False,
                max_grad_norm=0.0,
            ),
            id="decay-kimi-simple-no_nesterov-no_clip",
        ),
    ],
)
def test_grug_muon_on_raw_arrays_is_levanters(fields):
    block = levanter_block("grug_muon", **fields)
    params = grug_params()
    ours = grug_change(load_ours("grug_muon", block), params)
    mesh = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Explicit,))
    with jax.set_mesh(mesh):
        theirs = grug_change(
            load_levanter("grug_muon", block), jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
        )
    difference = relative_difference(ours, theirs)
    print(f"grug_muon {fields}: relative difference of the parameter change {difference:.1e}")
    assert difference <= NEWTON_SCHULZ
    # Muon moved the routed matrices, AdamW the rest: both kinds changed
    assert all(np.abs(c).max() > 0 for c in theirs)


def test_grug_routing_is_levanters_mask():
    """Our labels send exactly the leaves Levanter's mask sends to Muon to our Muon branch."""
    params = grug_params()
    cfg = load_ours("grug_muon", levanter_block("grug_muon"))
    ours = jax.tree.map(lambda kind: {"matrix": "muon"}.get(kind, "adamw"), cfg.labeler().kinds(params))
    assert ours == load_levanter("grug_muon", levanter_block("grug_muon")).create_mask(params)


def test_namo_matrix_decay_follows_the_mask_where_levanters_does_not():
    """The deliberate difference: with ``weight_decay_modules`` naming only ``q_proj``, Levanter's
    ``namo`` still decays every matrix it routes to NAMO (its mask reaches the AdamW branch only;
    its ``muon`` applies it to both), ours only ``q_proj`` (tests/test_namo.py checks the mask
    against the written rule). If this fails, Levanter follows the mask now: drop the difference."""
    fields = dict(weight_decay_modules="q_proj", weight_decay=0.5, learning_rate=0.1)
    assert compare("namo", **fields) > 0.1
    assert compare("muon", weight_decay_modules="q_proj", weight_decay=0.5) <= NEWTON_SCHULZ
