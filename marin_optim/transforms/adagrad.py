"""Adagrad in the form of ``torch.optim.Adagrad`` (epsilon outside the square root)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from marin_optim.transforms._tree import full_like, increment


class ScaleByAdagradState(NamedTuple):
    """Step count and the running sum of squared gradients."""

    count: jax.Array
    sum_of_squares: optax.Updates


def scale_by_adagrad(
    initial_accumulator_value: float = 0.0, eps: float = 1e-10, lr_decay: float = 0.0
) -> optax.GradientTransformation:
    """Rescales updates by the root of the sum of all past squared gradients.

    Update rule at step ``t = 1, 2, ...`` (Duchi, Hazan & Singer, 2011, "Adaptive Subgradient
    Methods for Online Learning and Stochastic Optimization",
    https://jmlr.org/papers/v12/duchi11a.html)::

        s = s + g^2       (s starts at initial_accumulator_value)
        u = g / (sqrt(s) + eps) / (1 + (t - 1) lr_decay)

    This is ``torch.optim.Adagrad`` (same defaults). ``optax.scale_by_rss`` puts ``eps`` inside
    the square root (``g / sqrt(s + eps)``) and defaults to ``initial_accumulator_value=0.1``,
    so its trajectories differ unless both are adjusted.
    """

    def init_fn(params: optax.Params) -> ScaleByAdagradState:
        return ScaleByAdagradState(
            count=jnp.zeros([], jnp.int32), sum_of_squares=full_like(params, initial_accumulator_value)
        )

    def update_fn(updates, state, params=None):
        del params
        count = increment(state.count)
        decay = 1.0 / (1.0 + (count.astype(jnp.float32) - 1.0) * lr_decay)
        sums = jax.tree.map(lambda g, s: s + jnp.square(g), updates, state.sum_of_squares)
        new_updates = jax.tree.map(
            lambda g, s: (decay * g / (jnp.sqrt(s) + eps)).astype(g.dtype), updates, sums
        )
        return new_updates, ScaleByAdagradState(count=count, sum_of_squares=sums)

    return optax.GradientTransformation(init_fn, update_fn)
