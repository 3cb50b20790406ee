"""Cautious (sign-aligned) decoupled weight decay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

PyTree = Any


def add_cautious_decayed_weights(
    weight_decay: float | jax.Array = 0.0,
    mask: PyTree | Callable[[PyTree], PyTree] | None = None,
) -> optax.GradientTransformation:
    """``u <- u + weight_decay * p * [p * u >= 0]``: decay only where it agrees with the update.

    With ``p <- p - lr * u`` afterwards, a coordinate is decayed only when the update already
    moves it towards zero (parameter and update of the same sign, or either zero), so weight
    decay never fights the optimizer's direction (Chen et al., 2025, "Cautious Weight Decay",
    https://arxiv.org/abs/2510.12402; OLMo-core's ``cautious_wd``). ``mask`` works as in
    ``optax.add_decayed_weights``.
    """

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("add_cautious_decayed_weights needs params: call update(updates, state, params)")

        def one(u: jax.Array, p: jax.Array) -> jax.Array:
            agree = (p * u >= 0).astype(u.dtype)
            return u + (weight_decay * agree * p).astype(u.dtype)

        return jax.tree.map(one, updates, params), state

    tx = optax.GradientTransformation(_empty_state, update_fn)
    return optax.masked(tx, mask) if mask is not None else tx


def add_decayed_weights(
    weight_decay: float | jax.Array,
    mask: PyTree | Callable[[PyTree], PyTree] | None,
    *,
    cautious: bool,
) -> optax.GradientTransformation:
    """``optax.add_decayed_weights`` (``u + wd p``), or its cautious form when ``cautious``."""
    if cautious:
        return add_cautious_decayed_weights(weight_decay, mask)
    return optax.add_decayed_weights(weight_decay, mask)


__all__ = ["add_cautious_decayed_weights", "add_decayed_weights"]


def _empty_state(params: Any) -> optax.EmptyState:
    # optax.init_empty_state only exists from optax 0.2.6 on.
    del params
    return optax.EmptyState()
