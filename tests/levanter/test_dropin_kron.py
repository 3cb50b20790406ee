"""Levanter's ``kron`` block loaded into ours: the same update (10 steps on the tiny Llama).

Built from the harness's pieces (``dropin.compare`` would jit Levanter's side) because Levanter's
Kron calls batched triangular solves under ``vmap``; jaxlib's CPU solver splits a batch over the
XLA thread pool and waits for it there, so concurrent batched solves deadlock (every jitted run
of Levanter's Kron on the Llama hung on 2 cores, as its SOAP does). Its side runs eagerly here
(``jax.disable_jit``); ours solves one block at a time on a CPU and runs jitted as usual. It also
asks haliax for a mesh at ``init``. Levanter's block goes in as plain values (draccus can neither
encode nor decode Levanter's KronConfig; ``dropin.levanter_block``).

Both probes come from the same stream (the state's key, ``PRNGKey(0)``, split once per step and
once per leaf), so the comparison is exact up to float32 rounding (``dropin.KRON``).
"""

from __future__ import annotations

import haliax as hax
import jax
import numpy as np
import pytest
from dropin import KRON, levanter_block, load_levanter, load_ours, parameter_change, relative_difference
from jax.sharding import Mesh

# Levanter's side runs eagerly: ~1 min per test on 2 cores, so the extended tier's (pytest --extended);
# the default tier checks our Kron against its written rule (tests/test_kron.py)
pytestmark = [pytest.mark.slow, pytest.mark.extended]


def _difference(**fields):
    block = levanter_block("kron", **fields)
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    with hax.partitioning.set_mesh(mesh), hax.axis_mapping({}):
        with jax.disable_jit():
            theirs = parameter_change(load_levanter("kron", block))
        ours = parameter_change(load_ours("kron", block))
    return relative_difference(ours, theirs)


def test_kron_default_block_matches_levanter():
    """Levanter's defaults: merged axes, blocks of 256, a fit at every one of the 10 steps."""
    difference = _difference()
    print(f"kron: relative difference of the parameter change {difference:.1e} (<= {KRON:.0e})")
    assert difference <= KRON


def test_kron_blocks_diagonals_and_annealed_fits_match_levanter():
    """Unmerged axes cut into blocks of 32, the largest axis of each tensor diagonal, normalised
    gradients (so no global clip), no momentum, a non-unit initial scale, and the anneal from
    step 0 (fits on every second step)."""
    fields = dict(
        merge_small_dims=False,
        block_size=32,
        memory_save_mode="one_diag",
        normalize_grads=True,
        beta1=0.0,
        preconditioner_init_scale=2.0,
        update_prob_flat_start=0,
        preconditioner_update_probability=0.3,
    )
    assert _difference(**fields) <= KRON
