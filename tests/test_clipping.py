"""The multiplicative global-norm clip against optax's and against the written rule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from marin_optim.transforms.clipping import clip_by_global_norm, unfused_global_norm


def _tree(scale: float, dtype=jnp.float32):
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return {
        "a": (scale * jax.random.normal(k1, (7, 5))).astype(dtype),
        "b": [(scale * jax.random.normal(k2, (3,))).astype(dtype)],
    }


@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
def test_matches_optax_and_the_formula(scale):
    g = _tree(scale)
    ours, state = clip_by_global_norm(1.0).update(g, clip_by_global_norm(1.0).init(g))
    ref, _ = optax.clip_by_global_norm(1.0).update(g, optax.clip_by_global_norm(1.0).init(g))
    for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6)
    flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]).astype(np.float64)
    norm = np.linalg.norm(flat)
    assert float(state.grad_norm) == pytest.approx(norm, rel=1e-6)
    clipped = np.concatenate([np.ravel(x) for x in jax.tree.leaves(ours)])
    np.testing.assert_allclose(clipped, flat * min(1.0, 1.0 / norm), rtol=1e-5)


def test_zero_gradients_stay_zero_and_finite():
    g = {"a": jnp.zeros((4,))}
    out, state = clip_by_global_norm(1.0).update(g, clip_by_global_norm(1.0).init(g))
    assert np.all(np.asarray(out["a"]) == 0.0) and float(state.grad_norm) == 0.0


def test_bf16_norm_is_accumulated_in_float32():
    g = {"a": jnp.full((4096,), 0.01, jnp.bfloat16)}
    exact = np.sqrt(4096 * float(jnp.bfloat16(0.01)) ** 2)
    assert float(unfused_global_norm(g)) == pytest.approx(exact, rel=1e-5)
    out, _ = clip_by_global_norm(0.1).update(g, clip_by_global_norm(0.1).init(g))
    assert out["a"].dtype == jnp.bfloat16


def test_rejects_non_positive_max_norm():
    with pytest.raises(ValueError, match="max_norm"):
        clip_by_global_norm(0.0)
