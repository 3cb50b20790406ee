"""Levanter's ``adam``, ``lion`` and ``rmsprop`` as drop-ins: every option, Levanter's numbers.

Each variant is a Levanter block (``dropin.levanter_block``) loaded into both implementations and
run for 10 steps on a tiny Levanter Llama (tests/levanter/dropin.py); the relative difference of
the parameter change must be within :data:`ELEMENTWISE`. The harness's gradients do not make
every option act: Levanter's suggested ``update_rms_clipping: 1.0`` never binds on them and
``clip_update_norm`` (half a window of history first) never clips in 10 steps, so those run
with settings whose effect is checked to be far above the tolerance, or as transforms against
Levanter's own on inputs that make them act.
"""

from __future__ import annotations

import functools

import equinox as eqx
import haliax as hax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from dropin import (
    ELEMENTWISE,
    TRAIN_STEPS,
    compare,
    gradients,
    levanter_block,
    levanter_class,
    llama_params,
    load_ours,
    parameter_change,
    relative_difference,
)
from levanter.optim.clip_update_norm import clip_update_by_historical_norm
from levanter.optim.util import scan_aware_clip_by_block_rms

from marin_optim.transforms.clipping import clip_by_block_rms, clip_by_historical_norm

STRONG_DECAY = {"weight_decay": 1.0, "warmup": 0.05}
"""A decay large enough, and an LR moving enough over 10 steps (5 warmup steps), for AdamC to show."""

VARIANTS = {
    "adam-nesterov": ("adam", {"nesterov": True}),
    "adam-rms-clip-0.5": ("adam", {"update_rms_clipping": 0.5}),
    "adam-adamc": ("adam", {"adamc_weight_decay": True, **STRONG_DECAY}),
    "lion": ("lion", {"beta2": 0.99, **STRONG_DECAY}),
    "rmsprop": ("rmsprop", {"beta1": 0.5, "beta2": 0.9, "eps": 1e-8}),
}
"""Non-default fields; the default blocks are test_dropin.py's."""


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_our_update_is_levanters(variant):
    name, fields = VARIANTS[variant]
    difference = compare(name, **fields)
    print(f"{variant}: {difference:.1e}")
    assert difference <= ELEMENTWISE


@functools.cache
def _ours(name: str, fields: str) -> list[np.ndarray]:
    return parameter_change(load_ours(name, levanter_block(name, **yaml.safe_load(fields))))


@pytest.mark.parametrize(
    ("option", "reference"),
    [
        ({"update_rms_clipping": 0.5}, {}),
        ({"adamc_weight_decay": True, **STRONG_DECAY}, STRONG_DECAY),
    ],
)
def test_the_options_compared_change_the_update(option, reference):
    """The variants above are not vacuous: each changes the update far beyond the tolerance."""
    changed = _ours("adam", yaml.safe_dump(option)), _ours("adam", yaml.safe_dump(reference))
    assert relative_difference(*changed) > 1e3 * ELEMENTWISE


def test_block_rms_clip_is_levanters_per_layer_clip():
    """Per leaf, and per layer of the Llama's scan-stacked blocks, as Levanter's; per leaf only
    (optax's ``clip_by_block_rms``) would differ."""
    params = llama_params()
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
    # each leaf's values spread over three orders of magnitude along its first axis (for the
    # stacked blocks: the layer axis), so that some blocks are clipped and others are not
    updates = jax.tree.unflatten(
        treedef,
        [
            jax.random.normal(k, x.shape)
            * jnp.logspace(-2, 1, x.shape[0]).reshape((-1,) + (1,) * (x.ndim - 1))
            for k, x in zip(keys, leaves, strict=True)
        ],
    )
    ours, _ = clip_by_block_rms(1.0).update(updates, None)
    theirs, _ = scan_aware_clip_by_block_rms(1.0).update(updates, None)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert hax.is_named_array(jax.tree.leaves(ours, is_leaf=hax.is_named_array)[0])


def test_historical_norm_clip_is_levanters_clip_update_norm():
    rng = np.random.default_rng(0)
    norms = np.abs(1.0 + 0.1 * rng.standard_normal(40))
    norms[[12, 13, 30]] = [6.0, 4.0, 3.0]
    ours_tx, theirs_tx = clip_by_historical_norm(8, 2.0), clip_update_by_historical_norm(8, 2.0)
    ours_state, theirs_state = ours_tx.init(None), theirs_tx.init(None)
    clipped = 0
    for t, norm in enumerate(norms):
        u = {"w": jnp.asarray(rng.standard_normal(5) * norm / np.sqrt(5), jnp.float32)}
        ours, ours_state = ours_tx.update(u, ours_state)
        theirs, theirs_state = theirs_tx.update(u, theirs_state)
        np.testing.assert_allclose(ours["w"], theirs["w"], rtol=1e-6, err_msg=f"step {t}")
        clipped += not np.allclose(ours["w"], u["w"])
    assert clipped >= 3


def test_skipped_spikes_match_levanters_when_the_schedule_advances():
    """Levanter's skip_bad_steps (window 4) skips the loss spike at step 6 as ours does; its
    schedule advances on a skipped step, as ours does with ``skip_advances_schedule: true``."""
    losses = 3.0 + 0.01 * np.random.default_rng(0).standard_normal(10)
    losses[6] = 30.0
    block = {**levanter_block("adam"), "skip_bad_steps": 4}

    def change(cfg):
        tx = cfg.build(TRAIN_STEPS)
        p0 = p = llama_params()
        state = tx.init(p)

        @eqx.filter_jit
        def step(p, state, g, loss):
            u, state = tx.update(g, state, p, loss=loss)
            return eqx.apply_updates(p, u), state

        for i, loss in enumerate(losses):
            p, state = step(p, state, gradients(i), jnp.float32(loss))
        return [
            np.asarray(a, np.float64) - np.asarray(b, np.float64)
            for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(p0), strict=True)
        ]

    theirs = change(levanter_class("adam")(skip_bad_steps=4))
    ours = change(load_ours("adam", {**block, "skip_advances_schedule": True}))
    unguarded = change(load_ours("adam", {**block, "skip_bad_steps": False}))
    assert relative_difference(ours, theirs) <= ELEMENTWISE
    assert relative_difference(unguarded, theirs) > 1e3 * ELEMENTWISE  # the spike was skipped
