"""AdEMAMix: Adam with a second, slow momentum (and its warmup schedules)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from marin_optim.transforms._tree import bias_correction, increment, zeros_like


class ScaleByAdemamixState(NamedTuple):
    """Step count, the fast and slow first moments and the second moment."""

    count: jax.Array
    m1: optax.Updates
    m2: optax.Updates
    nu: optax.Updates


def scale_by_ademamix(
    b1: float = 0.9,
    b2: float = 0.999,
    b3: float | jax.Array = 0.9999,
    alpha: float | jax.Array = 5.0,
    eps: float = 1e-8,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
    """Rescales updates by AdEMAMix.

    Update rule at step ``t = 1, 2, ...`` (Pagliardini, Ablin & Grangier, 2024, "The AdEMAMix
    Optimizer: Better, Faster, Older", https://arxiv.org/abs/2409.03300, Algorithm 1)::

        m1 = b1 m1 + (1 - b1) g;   m2 = b3 m2 + (1 - b3) g;   v = b2 v + (1 - b2) g^2
        u  = (m1 / (1 - b1^t) + alpha m2) / (sqrt(v / (1 - b2^t)) + eps)

    The slow momentum ``m2`` is deliberately not bias-corrected. ``b3`` and ``alpha`` may be
    traced scalars, so their warmup schedules (:func:`ademamix_alpha_schedule`,
    :func:`ademamix_beta3_schedule`) can be injected as hyperparameters.
    Written here because ``optax.contrib`` only has AdEMAMix from optax 0.2.6.
    """

    def init_fn(params: optax.Params) -> ScaleByAdemamixState:
        return ScaleByAdemamixState(
            count=jnp.zeros([], jnp.int32),
            m1=zeros_like(params, mu_dtype),
            m2=zeros_like(params, mu_dtype),
            nu=zeros_like(params),
        )

    def update_fn(updates, state, params=None):
        del params
        count = increment(state.count)
        t = count.astype(jnp.float32)
        bc1 = bias_correction(b1, t)
        bc2 = bias_correction(b2, t)
        m1 = jax.tree.map(lambda g, m: b1 * m + (1.0 - b1) * g, updates, state.m1)
        m2 = jax.tree.map(lambda g, m: b3 * m + (1.0 - b3) * g, updates, state.m2)
        nu = jax.tree.map(lambda g, v: b2 * v + (1.0 - b2) * jnp.square(g), updates, state.nu)
        new_updates = jax.tree.map(
            lambda g, a, s, v: ((a / bc1 + alpha * s) / (jnp.sqrt(v / bc2) + eps)).astype(g.dtype),
            updates,
            m1,
            m2,
            nu,
        )
        m1 = jax.tree.map(lambda m, ref: m.astype(ref.dtype), m1, state.m1)
        m2 = jax.tree.map(lambda m, ref: m.astype(ref.dtype), m2, state.m2)
        return new_updates, ScaleByAdemamixState(count=count, m1=m1, m2=m2, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def ademamix_alpha_schedule(alpha: float, warmup: int | None) -> optax.Schedule:
    """``alpha_t = min(t alpha / T, alpha)`` over ``T = warmup`` steps (constant without warmup).

    ``t`` is the step count before the update, from 0, as for every schedule here and optax's
    AdEMAMix; the paper's Algorithm 1 counts from 1, so its warmups run one step ahead of these
    (``alpha_1 = alpha / T`` there, 0 here)."""
    if not warmup:
        return optax.constant_schedule(alpha)
    return lambda step: jnp.minimum(jnp.asarray(step, jnp.float32) * alpha / warmup, alpha)


def ademamix_beta3_schedule(b1: float, b3: float, warmup: int | None) -> optax.Schedule:
    """The paper's beta3 warmup from ``b1`` to ``b3`` over ``T = warmup`` steps::

    b3_t = min(exp(ln(b1) ln(b3) / ((1 - t/T) ln(b3) + (t/T) ln(b1))), b3)

    which makes the half-life of the slow momentum grow linearly (constant ``b3`` without warmup).
    """
    if not warmup:
        return optax.constant_schedule(b3)
    lb1, lb3 = math.log(b1), math.log(b3)

    def schedule(step: Any) -> jax.Array:
        frac = jnp.minimum(jnp.asarray(step, jnp.float32) / warmup, 1.0)
        return jnp.minimum(jnp.exp(lb1 * lb3 / ((1.0 - frac) * lb3 + frac * lb1)), b3)

    return schedule
