"""RAdam in the form of the reference implementation and ``torch.optim.RAdam``."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from marin_optim.transforms._tree import bias_correction, increment, zeros_like


class ScaleByRadamState(NamedTuple):
    """Step count and Adam's two moments."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_radam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, threshold: float = 5.0, mu_dtype: Any = None
) -> optax.GradientTransformation:
    """Rescales updates by RAdam: Adam whose adaptive step is rectified while its variance is large.

    Update rule at step ``t = 1, 2, ...`` (Liu et al., 2020, "On the Variance of the Adaptive
    Learning Rate and Beyond", https://arxiv.org/abs/1908.03265, Algorithm 2), with
    ``rho_inf = 2 / (1 - b2) - 1`` and ``rho_t = rho_inf - 2 t b2^t / (1 - b2^t)``::

        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2;   m_hat = m / (1 - b1^t)
        r = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
        u = r m_hat sqrt(1 - b2^t) / (sqrt(v) + eps)     if rho_t > threshold
        u = m_hat                                        otherwise

    ``eps`` is added to ``sqrt(v)`` *before* the bias correction, as in the authors' code and
    ``torch.optim.RAdam``; ``optax.scale_by_radam`` adds it to ``sqrt(v_hat)`` and switches at
    ``rho_t >= threshold``, which differs visibly while ``1 - b2^t`` is small.

    ``rho_t`` is a small difference of two numbers near ``rho_inf`` (2000 for ``b2 = 0.999``), so
    in float32 it is computed as ``K + (2 / c) h(t c)`` with ``c = -ln b2``, the host constant
    ``K = 2 / (1 - b2) - 2 / c - 1`` and ``h(x) = 1 - x / (e^x - 1)`` (a series for small ``x``):
    accurate to float32 rounding where the direct formula loses three digits (torch computes it
    in float64).

    ``threshold`` must be at least 4: ``r`` is the square root of a negative number while
    ``2 < rho_t < 4`` (and ``rho_1 = 1``, so every ``b2`` passes through there).
    """
    if not threshold >= 4.0:
        raise ValueError(f"threshold={threshold!r}: must be >= 4 (r is NaN while 2 < rho_t < 4)")
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    # rho_t < rho_inf, so with rho_inf <= 4 the rectified branch is never taken.
    r_scale = rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0)) if rho_inf > 4.0 else 0.0

    def rho_at(t: jax.Array) -> jax.Array:
        if b2 <= 0.0:
            return jnp.ones_like(t)
        c = -math.log(b2)
        k = 2.0 / (1.0 - b2) - 2.0 / c - 1.0
        x = t * jnp.float32(c)
        series = x / 2.0 - x**2 / 12.0 + x**4 / 720.0 - x**6 / 30240.0
        direct = 1.0 - x / jnp.expm1(jnp.maximum(x, 0.5))
        h = jnp.where(x < 0.5, series, direct)
        return jnp.float32(k) + jnp.float32(2.0 / c) * h

    def init_fn(params: optax.Params) -> ScaleByRadamState:
        return ScaleByRadamState(
            count=jnp.zeros([], jnp.int32), mu=zeros_like(params, mu_dtype), nu=zeros_like(params)
        )

    def update_fn(updates, state, params=None):
        del params
        count = increment(state.count)
        t = count.astype(jnp.float32)
        bc1, bc2 = bias_correction(b1, t), bias_correction(b2, t)
        rho = rho_at(t)
        rectify = rho > threshold
        safe_rho = jnp.where(rectify, rho, rho_inf)  # keeps the unused branch finite
        r = jnp.sqrt((safe_rho - 4.0) * (safe_rho - 2.0) * jnp.float32(r_scale) / safe_rho)
        mu = jax.tree.map(lambda g, m: b1 * m + (1.0 - b1) * g, updates, state.mu)
        nu = jax.tree.map(lambda g, v: b2 * v + (1.0 - b2) * jnp.square(g), updates, state.nu)

        def direction(g: jax.Array, m: jax.Array, v: jax.Array) -> jax.Array:
            m_hat = m / bc1
            adaptive = r * m_hat * jnp.sqrt(bc2) / (jnp.sqrt(v) + eps)
            return jnp.where(rectify, adaptive, m_hat).astype(g.dtype)

        new_updates = jax.tree.map(direction, updates, mu, nu)
        mu = jax.tree.map(lambda m, ref: m.astype(ref.dtype), mu, state.mu)
        return new_updates, ScaleByRadamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)
