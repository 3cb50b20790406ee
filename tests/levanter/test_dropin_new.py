"""Levanter's ``mini`` and ``adamH`` with fields away from their defaults: our update is Levanter's
(the default blocks are in test_dropin.py). AdamH's default block is also held to float64 here:
at its learning rate of 6e-4 Levanter's float32 step loses digits that ours keeps, and the
difference between the two is Levanter's rounding, not a difference of meaning.
"""

from __future__ import annotations

import inspect

import jax.numpy as jnp
import pytest
from dropin import (
    compare,
    levanter_block,
    levanter_class,
    load_levanter,
    load_ours,
    parameter_change,
    relative_difference,
)

ELEMENTWISE = 1e-5

HYPERBALL_AT_6E4 = 1e-4
"""AdamH's step is ``R normalize(W - lr R normalize(u)) - W``, ``lr`` times smaller than ``W``:
float32 rounding of ``W`` itself (0.5 ulp a step, which no implementation avoids) is ~1e-4 of a
step at lr = 6e-4, and Levanter's formula adds its own cancellation (~6e-5 of a step). Measured
on this Llama: ours vs Levanter 2.9e-5 (4-6e-5 per matrix); against float64, ours 1.3e-5 and
Levanter's 2.8e-5. At lr = 0.02 the same comparison is 1.5e-6, within :data:`ELEMENTWISE`."""

VARIANTS = [
    pytest.param(
        "mini",
        dict(
            learning_rate=3e-3,
            weight_decay=0.1,
            beta1=0.8,
            beta2=0.99,
            epsilon=1e-6,
            max_grad_norm=0.01,  # below the norms' gradient norm (0.18): Levanter's clip is on
        ),
        id="mini-decay-rates-eps-active_clip",
    ),
    pytest.param(
        "mini",
        dict(max_grad_norm=0.0, default_weight_decay_mask=False, weight_decay=0.05),
        id="mini-no_clip-decay_all",
    ),
    pytest.param(
        "adamH",
        dict(
            learning_rate=0.02,
            adam_lr=3e-3,
            beta1=0.8,
            beta2=0.99,
            epsilon=1e-6,
            max_grad_norm=0.05,  # below both branches' gradient norms (3.0, 0.92): both clip
        ),
        id="adamH-rates-eps-active_clips",
    ),
]


@pytest.mark.parametrize(("name", "fields"), VARIANTS)
def test_our_update_is_levanters(name, fields):
    difference = compare(name, **fields)
    print(f"{name} {fields}: relative difference of the parameter change {difference:.1e}")
    assert difference <= ELEMENTWISE


def test_adamh_default_block_differs_from_levanter_by_levanters_rounding():
    block = levanter_block("adamH")
    ours = parameter_change(load_ours("adamH", block), dtype=jnp.float32)
    theirs = parameter_change(load_levanter("adamH", block), dtype=jnp.float32)
    exact = parameter_change(load_levanter("adamH", block), dtype=jnp.float64)
    difference = relative_difference(ours, theirs)
    ours_error, their_error = relative_difference(ours, exact), relative_difference(theirs, exact)
    print(
        f"adamH: ours vs Levanter {difference:.1e}; "
        f"vs float64: ours {ours_error:.1e}, Levanter {their_error:.1e}"
    )
    assert difference <= HYPERBALL_AT_6E4
    assert ours_error < their_error


def test_levanter_never_reads_nesterov():
    """Our deliberate difference: ``nesterov: true`` is Nesterov momentum in ours; Levanter's
    ``mini`` and ``adamH`` declare the field and never read it."""
    for name in ("mini", "adamH"):
        cls = levanter_class(name)
        assert cls().nesterov is False
        assert "nesterov" not in inspect.getsource(cls.build), name
