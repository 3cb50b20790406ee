"""MARS: Adam on a variance-reduced gradient built from the previous step's gradient."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from marin_optim.transforms._tree import global_norm, increment, zeros_like


class ScaleByMarsState(NamedTuple):
    """Step count, Adam's moments of the corrected gradient and the previous raw gradient."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    prev_grad: optax.Updates


def scale_by_mars(
    b1: float = 0.95,
    b2: float = 0.99,
    gamma: float = 0.025,
    eps: float = 1e-8,
    c_max_norm: float | None = 1.0,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
    """Rescales updates by MARS-AdamW (the approximate variant, with the previous gradient).

    Update rule at step ``t = 1, 2, ...`` (Yuan et al., 2024, "MARS: Unleashing the Power of
    Variance Reduction for Training Large Models", https://arxiv.org/abs/2411.10438; the
    practical "MARS-approx" form that reuses the previous step's gradient, with ``g_0 = 0``)::

        c = g_t + gamma * b1 / (1 - b1) * (g_t - g_{t-1})
        c = c * min(1, c_max_norm / ||c||)          (global norm over all leaves; skipped if None)
        m = b1 m + (1 - b1) c;   v = b2 v + (1 - b2) c^2
        u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    The paper clips ``c`` to norm 1 per tensor; like Levanter's ``mars`` this clips the global
    norm, so the relative size of the layers' corrections is kept. The raw gradient ``g`` is
    not clipped here (MARS's clip is this one), and ``g_{t-1}`` is stored as it came in.
    """

    def init_fn(params: optax.Params) -> ScaleByMarsState:
        return ScaleByMarsState(
            count=jnp.zeros([], jnp.int32),
            mu=zeros_like(params, mu_dtype),
            nu=zeros_like(params),
            prev_grad=zeros_like(params),
        )

    def update_fn(updates, state, params=None):
        del params
        count = increment(state.count)
        t = count.astype(jnp.float32)
        coef = gamma * b1 / (1.0 - b1)
        c = jax.tree.map(lambda g, pg: g + coef * (g - pg), updates, state.prev_grad)
        if c_max_norm is not None:
            scale = jnp.minimum(1.0, c_max_norm / global_norm(c))
            c = jax.tree.map(lambda x: x * scale.astype(x.dtype), c)
        # In float32 with the betas rounded to float32, as Levanter (and optax's Adam) compute it.
        bc1 = 1.0 - jnp.float32(b1) ** t
        bc2 = 1.0 - jnp.float32(b2) ** t
        mu = jax.tree.map(lambda x, m: b1 * m + (1.0 - b1) * x, c, state.mu)
        nu = jax.tree.map(lambda x, v: b2 * v + (1.0 - b2) * jnp.square(x), c, state.nu)
        new_updates = jax.tree.map(
            lambda g, m, v: ((m / bc1) / (jnp.sqrt(v / bc2) + eps)).astype(g.dtype), updates, mu, nu
        )
        mu = jax.tree.map(lambda m, ref: m.astype(ref.dtype), mu, state.mu)
        prev = jax.tree.map(lambda g, ref: g.astype(ref.dtype), updates, state.prev_grad)
        return new_updates, ScaleByMarsState(count=count, mu=mu, nu=nu, prev_grad=prev)

    return optax.GradientTransformation(init_fn, update_fn)
