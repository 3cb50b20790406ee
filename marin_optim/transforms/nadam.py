"""NAdam with Dozat's momentum schedule (the form of ``torch.optim.NAdam``)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from marin_optim.transforms._tree import bias_correction, increment, zeros_like


class ScaleByNadamState(NamedTuple):
    """Step count, the running product of the momentum schedule, and Adam's two moments."""

    count: jax.Array
    mu_product: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def momentum_schedule(step: jax.Array, b1: float, momentum_decay: float | None) -> jax.Array:
    """``mu_t = b1 (1 - 0.5 * 0.96^(t * momentum_decay))``; constant ``b1`` if ``momentum_decay`` is None."""
    step = jnp.asarray(step, jnp.float32)
    if momentum_decay is None:
        return jnp.full_like(step, b1)
    return b1 * (1.0 - 0.5 * jnp.power(0.96, step * momentum_decay))


def scale_by_nadam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    momentum_decay: float | None = 0.004,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
    """Rescales updates by NAdam: Adam with Nesterov momentum and a warming momentum schedule.

    Update rule at step ``t = 1, 2, ...`` (Dozat, 2016, "Incorporating Nesterov Momentum into
    Adam", https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ, with the schedule
    ``mu_t = b1 (1 - 0.5 * 0.96^(t * psi))``, ``psi = momentum_decay``)::

        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2;   d = sqrt(v / (1 - b2^t)) + eps
        u = (1 - mu_t) / (1 - prod_{i<=t} mu_i) * g / d  +  mu_{t+1} / (1 - prod_{i<=t+1} mu_i) * m / d

    This is ``torch.optim.NAdam`` (the default ``momentum_decay=0.004`` is its ``psi``).
    ``momentum_decay=None`` holds ``mu_t = b1``, which gives the simplified rule of
    ``optax.nadam`` / ``scale_by_adam(nesterov=True)``.
    """

    def init_fn(params: optax.Params) -> ScaleByNadamState:
        return ScaleByNadamState(
            count=jnp.zeros([], jnp.int32),
            mu_product=jnp.ones([], jnp.float32),
            mu=zeros_like(params, mu_dtype),
            nu=zeros_like(params),
        )

    def update_fn(updates, state, params=None):
        del params
        count = increment(state.count)
        mu_t = momentum_schedule(count, b1, momentum_decay)
        mu_next = momentum_schedule(count + 1, b1, momentum_decay)
        mu_product = state.mu_product * mu_t
        grad_coef = (1.0 - mu_t) / (1.0 - mu_product)
        mom_coef = mu_next / (1.0 - mu_product * mu_next)
        bc2 = bias_correction(b2, count)

        mu = jax.tree.map(lambda g, m: b1 * m + (1.0 - b1) * g, updates, state.mu)
        nu = jax.tree.map(lambda g, v: b2 * v + (1.0 - b2) * jnp.square(g), updates, state.nu)

        def direction(g: jax.Array, m: jax.Array, v: jax.Array) -> jax.Array:
            d = jnp.sqrt(v / bc2) + eps
            return ((grad_coef * g + mom_coef * m) / d).astype(g.dtype)

        new_updates = jax.tree.map(direction, updates, mu, nu)
        mu = jax.tree.map(lambda m, ref: m.astype(mu_dtype or ref.dtype), mu, state.mu)
        return new_updates, ScaleByNadamState(count=count, mu_product=mu_product, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)
