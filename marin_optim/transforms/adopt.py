"""ADOPT: Adam with the current gradient normalised by the *previous* second moment."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from marin_optim.transforms._tree import increment, zeros_like

AdoptForm = Literal["levanter", "paper"]
ADOPT_FORMS = ("levanter", "paper")


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
    form: AdoptForm = "paper",
    clip: bool = True,
    nesterov: bool = False,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
    """Rescales updates by ADOPT.

    ADOPT (Taniguchi et al., 2024, "ADOPT: Modified Adam Can Converge with Any beta2 with the
    Optimal Rate", https://arxiv.org/abs/2411.02853) normalises the gradient by the second
    moment of the *previous* steps, then takes its momentum. The first step (``k = 0``) only
    feeds the second moment and returns a zero update. At step ``k = 1, 2, ...`` (``k`` counts
    the updates before this one), with ``v`` the second moment left by step ``k - 1``:

    ``form="paper"`` (the paper's algorithm with clipping; ``optax.contrib.scale_by_adopt``)::

        v_0 = g_0^2
        n = g / max(sqrt(v), eps)
        m = b1 m + (1 - b1) n;   v = b2 v + (1 - b2) g^2;   u = m

    ``form="levanter"`` (Levanter's ``adopt``: Adam-style zero-initialised averages with bias
    corrections computed in float32 as Levanter does, the first step counted in ``m``'s)::

        v_0 = (1 - b2) g_0^2
        n = g / (sqrt(v / (1 - b2^k)) + eps)
        m = b1 m + (1 - b1) n;   v = b2 v + (1 - b2) g^2;   u = m / (1 - b1^(k + 1))

    ``clip`` bounds ``n`` to ``[-k^(1/4), k^(1/4)]`` before the momentum (the paper's
    stabiliser, its default). ``nesterov`` uses ``b1 m + (1 - b1) n`` in place of ``m`` in ``u``.
    """
    if form not in ADOPT_FORMS:
        raise ValueError(f"form={form!r}: must be one of {ADOPT_FORMS}")
    levanter = form == "levanter"

    def init_fn(params: optax.Params) -> ScaleByAdoptState:
        return ScaleByAdoptState(
            count=jnp.zeros([], jnp.int32), mu=zeros_like(params, mu_dtype), nu=zeros_like(params)
        )

    def update_fn(updates, state, params=None):
        del params
        first = state.count == 0
        k = state.count.astype(jnp.float32)
        bound = jnp.power(jnp.maximum(k, 1.0), 0.25)
        # 1 - b2^k is 0 at the first step, whose n is zero anyway: divide by 1 there instead.
        v_scale = jnp.where(first, 1.0, _float32_bias_correction(b2, k)) if levanter else None

        def normalised(g: jax.Array, v: jax.Array) -> jax.Array:
            if levanter:
                n = g / (jnp.sqrt(v / v_scale) + eps)
            else:
                n = g / jnp.maximum(jnp.sqrt(v), eps)
            if clip:
                n = jnp.clip(n, -bound, bound)
            return jnp.where(first, 0.0, n)

        def second_moment(g: jax.Array, v: jax.Array) -> jax.Array:
            ema = b2 * v + (1.0 - b2) * jnp.square(g)
            return ema if levanter else jnp.where(first, jnp.square(g), ema)

        n = jax.tree.map(normalised, updates, state.nu)
        mu = jax.tree.map(lambda x, m: b1 * m + (1.0 - b1) * x, n, state.mu)
        nu = jax.tree.map(second_moment, updates, state.nu)
        direction = jax.tree.map(lambda x, m: b1 * m + (1.0 - b1) * x, n, mu) if nesterov else mu
        if levanter:
            bc1 = _float32_bias_correction(b1, k + 1.0)
            direction = jax.tree.map(lambda u: u / bc1, direction)
        new_updates = jax.tree.map(lambda g, u: u.astype(g.dtype), updates, direction)
        mu = jax.tree.map(lambda m, ref: m.astype(ref.dtype), mu, state.mu)
        return new_updates, ScaleByAdoptState(count=increment(state.count), mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def _float32_bias_correction(beta: float, k: jax.Array) -> jax.Array:
    """``1 - beta^k`` in float32, as Levanter (and optax) compute it: with ``beta`` rounded to
    float32, which is off by up to ~2e-4 relative for ``beta = 0.9999`` (float32 cannot hold it);
    the levanter form keeps that rounding so that its numbers are Levanter's."""
    return 1.0 - jnp.float32(beta) ** k
