"""Small tree helpers shared by the transforms (they work on optax >= 0.2.4)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

PyTree = Any


def zeros_like(tree: PyTree, dtype: Any = None) -> PyTree:
    """Zeros shaped like every leaf, in ``dtype`` (default: the leaf's own dtype)."""
    return jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), dtype or jnp.result_type(p)), tree)


def full_like(tree: PyTree, value: float, dtype: Any = None) -> PyTree:
    return jax.tree.map(lambda p: jnp.full(jnp.shape(p), value, dtype or jnp.result_type(p)), tree)


def global_norm(tree: PyTree) -> jax.Array:
    """``sqrt(sum_i ||x_i||^2)`` over every leaf, accumulated in float32."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.float32)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def tree_select(pred: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    """``on_true`` where the scalar ``pred`` holds, else ``on_false``, leaf by leaf (fusable)."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def increment(count: jax.Array) -> jax.Array:
    """``count + 1`` that saturates instead of wrapping at the int32 maximum."""
    return optax.safe_int32_increment(count)


def resolve_mask(mask: PyTree | Callable[[PyTree], PyTree] | None, params: PyTree) -> PyTree | None:
    """The boolean tree of a mask given as a tree, a ``params -> tree`` callable, or ``None`` (all)."""
    if mask is None:
        return None
    return mask(params) if callable(mask) else mask


def where_mask(mask: PyTree | None, on: PyTree, off: PyTree) -> PyTree:
    """Per leaf: ``on`` where the mask leaf is truthy, else ``off`` (``on`` everywhere without a mask)."""
    if mask is None:
        return on

    def pick(m: Any, a: Any, b: Any) -> Any:
        if isinstance(m, (bool, type(None))):
            return a if m else b
        return jnp.where(m, a, b)

    return jax.tree.map(pick, mask, on, off)


def bias_correction(beta: Any, t: jax.Array) -> jax.Array:
    """``1 - beta^t`` in float32, accurate to rounding even when ``beta^t`` is close to 1.

    Computed as ``-expm1(t * log(beta))`` with ``log(beta)`` taken in float64 on the host when
    ``beta`` is a Python number: ``1 - beta**t`` in float32 loses up to ~1e-5 relative accuracy
    for ``beta = 0.999`` (float32 cannot even hold 0.999), which torch, computing in float64,
    does not. Traced ``beta`` falls back to ``1 - beta**t``.
    """
    t = jnp.asarray(t, jnp.float32)
    if isinstance(beta, (int, float)):
        if beta <= 0.0:
            return jnp.ones_like(t)
        return -jnp.expm1(t * jnp.float32(math.log(beta)))
    return 1.0 - jnp.power(jnp.asarray(beta, jnp.float32), t)


def keep_state_dtypes(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``tx`` whose new state always has the dtypes of the state it was given.

    Some optax states mix the parameters' dtype with the injected float32 learning rate (e.g.
    schedule-free's ``max_lr`` with bfloat16 parameters) and would change dtype after the first
    step, which breaks ``lax.scan`` carries and buffer donation.
    """
    tx = optax.with_extra_args_support(tx)

    def update_fn(updates, state, params=None, **extra_args):
        new_updates, new_state = tx.update(updates, state, params, **extra_args)
        new_state = jax.tree.map(
            lambda new, old: (
                new.astype(old.dtype) if hasattr(new, "astype") and hasattr(old, "dtype") else new
            ),
            new_state,
            state,
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)
