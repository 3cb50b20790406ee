"""Levanter's ``muonH``: its default block and blocks with fields away from their defaults give
our update.

The default block is held to :data:`dropin.HYPERBALL`, and to float64: at the default learning
rate of 6e-4 Levanter's float32 hyperball step loses digits that ours keeps (as adamH's does, see
test_dropin_new.py), so the two differ by Levanter's rounding. At a learning rate of 0.02 that
cancellation is gone and what is left is Newton-Schulz's float32 rounding
(:data:`dropin.NEWTON_SCHULZ`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from dropin import (
    HYPERBALL,
    NEWTON_SCHULZ,
    compare,
    levanter_block,
    levanter_class,
    llama_params,
    load_levanter,
    load_ours,
    parameter_change,
    relative_difference,
)


def test_every_parameter_takes_levanters_branch():
    """Hidden matrices Muon on the hyperball, the LM head Adam on the hyperball, the rest Adam."""
    params = llama_params()
    theirs = jax.tree.leaves(levanter_class("muonH")().create_mask(params))
    ours = load_ours("muonH", levanter_block("muonH"))
    labels = jax.tree.leaves(ours.labeler().branch_labels(ours.branches)(params))
    assert labels == theirs
    assert set(theirs) == {"muonh", "adamh", "adam"}


def test_default_block_differs_from_levanter_by_levanters_rounding():
    block = levanter_block("muonH")
    ours = parameter_change(load_ours("muonH", block), dtype=jnp.float32)
    theirs = parameter_change(load_levanter("muonH", block), dtype=jnp.float32)
    exact = parameter_change(load_levanter("muonH", block), dtype=jnp.float64)
    difference = relative_difference(ours, theirs)
    ours_error, their_error = relative_difference(ours, exact), relative_difference(theirs, exact)
    print(
        f"muonH: ours vs Levanter {difference:.1e}; "
        f"vs float64: ours {ours_error:.1e}, Levanter {their_error:.1e}"
    )
    assert difference <= HYPERBALL
    assert ours_error < their_error


VARIANTS = [
    pytest.param(
        dict(learning_rate=0.02, adam_lr=3e-3, max_grad_norm=0.0, weight_decay=0.3),
        id="rates-no_clip-weight_decay_unread",
    ),
    pytest.param(
        dict(
            learning_rate=0.02,
            coefficient_type="simple",
            nesterov=False,
            momentum=0.9,
            backend_steps=6,
            muon_epsilon=1e-6,
            beta1=0.8,
            beta2=0.99,
            epsilon=1e-6,
            max_grad_norm=0.05,  # below every branch's gradient norm (2.9, 0.91, 0.92): all clip
        ),
        id="simple-no_nesterov-momentum-steps-eps-betas-active_clips",
    ),
]


@pytest.mark.parametrize("fields", VARIANTS)
def test_our_update_is_levanters(fields):
    difference = compare("muonH", **fields)
    print(f"muonH {fields}: relative difference of the parameter change {difference:.1e}")
    assert difference <= NEWTON_SCHULZ
