"""Levanter's ``muon`` and ``scion`` blocks with fields away from their defaults: our update is
Levanter's (the default blocks are in test_dropin.py), except where Levanter cycles a table that
is not meant to cycle (the deliberate difference, checked at its source below).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from dropin import NEWTON_SCHULZ, compare, levanter_block, load_ours
from levanter.optim.util import zeropower_via_newtonschulz5

from marin_optim.errors import config_error_in
from marin_optim.transforms.newton_schulz import newton_schulz

VARIANTS = [
    pytest.param(
        "muon",
        dict(
            use_kimi_scaling=True,
            coefficient_type="simple",
            nesterov=False,
            weight_decay=0.1,
            adam_weight_decay=0.0,
        ),
        id="muon-kimi-simple-no_nesterov-decay_matrices_only",
    ),
    pytest.param(
        "muon",
        dict(coefficient_type="polar_express", backend_steps=8, adam_weight_decay=0.05, max_grad_norm=0.0),
        id="muon-polar_express-decay_adamw_only-no_clip",
    ),
    pytest.param(
        "muon",
        dict(coefficient_type="aol", backend_steps=4, weight_decay=0.1, momentum=0.9),
        id="muon-aol-decay_both",
    ),
    pytest.param(
        "scion",
        dict(
            coefficient_type="polar_express",
            backend_steps=8,
            weight_decay=0.1,
            max_grad_norm=0.0,
            scion_to_signum_lr=0.5,
            momentum=0.9,
            beta1=0.8,
        ),
        id="scion-polar_express-decay-no_clip-rates",
    ),
]


@pytest.mark.parametrize(("name", "fields"), VARIANTS)
def test_our_update_is_levanters(name, fields):
    difference = compare(name, **fields)
    print(f"{name} {fields}: relative difference of the parameter change {difference:.1e}")
    assert difference <= NEWTON_SCHULZ


@pytest.mark.parametrize("name", ["muon", "scion"])
def test_levanters_unread_lr_is_refused_away_from_its_default(name):
    """Levanter declares ``lr: 0.02`` on both and never reads it: another value would change
    nothing there, so ours says which field is the rate instead of ignoring it."""
    with pytest.raises(Exception) as info:
        load_ours(name, levanter_block(name, lr=0.05))
    error = config_error_in(info.value)
    assert error is not None and f"{name}.lr=0.05" in str(error) and "learning_rate" in str(error)


@pytest.mark.parametrize(("coefficient_type", "steps"), [("aol", 5), ("polar_express", 10)])
def test_where_levanter_cycles_the_table_ours_repeats_its_last_row(coefficient_type, steps):
    """The deliberate difference, at its source: Levanter's Newton-Schulz at muon's default 5 steps
    with ``aol`` gives the negated polar factor (an ascent step), at scion's default 10 steps with
    ``polar_express`` a third of it; ours gives the polar factor. Up to 4 and 8 steps the two are
    the same (the variants above). If this fails, Levanter has changed: drop the difference."""
    g = np.random.default_rng(0).standard_normal((96, 64))
    u, _, vt = np.linalg.svd(g, full_matrices=False)
    x = jnp.asarray(g, jnp.float32)
    theirs = np.asarray(
        zeropower_via_newtonschulz5(x, steps=steps, eps=1e-8, coefficient_type=coefficient_type)
    )
    ours = np.asarray(newton_schulz(x, coefficients=coefficient_type, steps=steps, dtype=jnp.float32))
    signed = lambda o: np.diag(u.T @ o @ vt.T)  # the result's singular values, with their signs
    assert np.all(np.abs(signed(theirs) - 1.0) > 0.4)
    np.testing.assert_allclose(signed(ours), 1.0, atol=0.05)
    same_steps = 4 if coefficient_type == "aol" else 8
    theirs = np.asarray(
        zeropower_via_newtonschulz5(x, steps=same_steps, eps=1e-8, coefficient_type=coefficient_type)
    )
    ours = np.asarray(newton_schulz(x, coefficients=coefficient_type, steps=same_steps, dtype=jnp.float32))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
