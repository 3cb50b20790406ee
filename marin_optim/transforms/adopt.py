"""ADOPT: Adam with the current gradient normalised by the *previous* second moment."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from marin_optim.transforms._tree import increment, zeros_like


class ScaleByAdoptState(NamedTuple):
    """Step count, the momentum of the normalised gradients and the second moment."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_adopt(
    b1: float = 0.9,
    b2: float = 0.9999,
    eps: float = 1e-6,
    *,
    clip: bool = True,
    nesterov: bool = False,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
    """Rescales updates by ADOPT.

    Update rule (Taniguchi et al., 2024, "ADOPT: Modified Adam Can Converge with Any beta2 with
    the Optimal Rate", https://arxiv.org/abs/2411.02853, Algorithm 2 with clipping). The first
    step only initialises ``v = g_0^2`` and returns a zero update; at later steps ``t = 1, 2, ...``::

        n = g / max(sqrt(v), eps)             (v from the *previous* step)
        n = clip(n, -t^(1/4), t^(1/4))        (if clip)
        m = b1 m + (1 - b1) n
        v = b2 v + (1 - b2) g^2
        u = m                                 (nesterov: b1 m + (1 - b1) n)

    No bias correction (``m`` starts at zero). The same rule as ``optax.contrib.scale_by_adopt``,
    which only exists from optax 0.2.6, hence this copy written from the paper.
    """

    def init_fn(params: optax.Params) -> ScaleByAdoptState:
        return ScaleByAdoptState(
            count=jnp.zeros([], jnp.int32), mu=zeros_like(params, mu_dtype), nu=zeros_like(params)
        )

    def update_fn(updates, state, params=None):
        del params
        first = state.count == 0
        t = state.count.astype(jnp.float32)
        bound = jnp.power(jnp.maximum(t, 1.0), 0.25)

        def normalised(g: jax.Array, v: jax.Array) -> jax.Array:
            n = g / jnp.maximum(jnp.sqrt(v), eps)
            return jnp.clip(n, -bound, bound) if clip else n

        n = jax.tree.map(normalised, updates, state.nu)
        mu = jax.tree.map(lambda x, m: jnp.where(first, m, b1 * m + (1.0 - b1) * x), n, state.mu)
        nu = jax.tree.map(
            lambda g, v: jnp.where(first, jnp.square(g), b2 * v + (1.0 - b2) * jnp.square(g)),
            updates,
            state.nu,
        )
        if nesterov:
            direction = jax.tree.map(lambda x, m: jnp.where(first, 0.0, b1 * m + (1.0 - b1) * x), n, mu)
        else:
            direction = mu
        new_updates = jax.tree.map(lambda g, u: u.astype(g.dtype), updates, direction)
        mu = jax.tree.map(lambda m, ref: m.astype(ref.dtype), mu, state.mu)
        return new_updates, ScaleByAdoptState(count=increment(state.count), mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)
