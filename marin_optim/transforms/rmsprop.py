"""RMSprop followed by a bias-corrected momentum average (Levanter's ``rmsprop``)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from marin_optim.transforms._tree import bias_correction, increment, zeros_like


class ScaleByRmspropMomentumState(NamedTuple):
    """Step count, the average of squared gradients and the momentum of the scaled gradients."""

    count: jax.Array
    mean_square: optax.Updates
    momentum: optax.Updates


def scale_by_rmsprop_momentum(
    beta1: float = 0.9, beta2: float = 0.99, eps: float = 1e-30
) -> optax.GradientTransformation:
    """RMSprop whose scaled gradients are averaged by a bias-corrected momentum.

    Update rule at step ``t = 1, 2, ...`` (RMSprop: Tieleman & Hinton, 2012, Lecture 6.5,
    "Divide the gradient by a running average of its recent magnitude"; this bias-corrected
    momentum form is Levanter's ``rmsprop`` optimizer)::

        s = beta2 s + (1 - beta2) g^2
        r = g / (sqrt(s / (1 - beta2^t)) + eps)
        m = beta1 m + (1 - beta1) r
        u = m / (1 - beta1^t)

    Unlike Adam, the momentum averages the *already normalised* gradients, so each step's
    contribution is scaled by the second moment of its own time.
    """

    def init_fn(params: optax.Params) -> ScaleByRmspropMomentumState:
        return ScaleByRmspropMomentumState(
            count=jnp.zeros([], jnp.int32), mean_square=zeros_like(params), momentum=zeros_like(params)
        )

    def update_fn(updates, state, params=None):
        del params
        count = increment(state.count)
        t = count.astype(jnp.float32)
        bc1 = bias_correction(beta1, t)
        bc2 = bias_correction(beta2, t)
        mean_square = jax.tree.map(
            lambda g, s: beta2 * s + (1.0 - beta2) * jnp.square(g), updates, state.mean_square
        )
        scaled = jax.tree.map(lambda g, s: g / (jnp.sqrt(s / bc2) + eps), updates, mean_square)
        momentum = jax.tree.map(lambda r, m: beta1 * m + (1.0 - beta1) * r, scaled, state.momentum)
        new_updates = jax.tree.map(lambda g, m: (m / bc1).astype(g.dtype), updates, momentum)
        momentum = jax.tree.map(lambda m, ref: m.astype(ref.dtype), momentum, state.momentum)
        return new_updates, ScaleByRmspropMomentumState(
            count=count, mean_square=mean_square, momentum=momentum
        )

    return optax.GradientTransformation(init_fn, update_fn)
