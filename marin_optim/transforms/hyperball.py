"""The Hyperball step: every weight matrix keeps its Frobenius norm, and moves by a fixed fraction of it.

Wen, Dang, Lyu, Ma & Liang, 2026, "Fantastic Pretraining Optimizers and Where to Find Them II:
Hyperball Optimization", https://arxiv.org/abs/2606.16899 (Levanter's ``adamH`` and ``muonH``).
Weight decay only controls a matrix's norm, and through it the angle each update turns the
matrix by; Hyperball fixes both explicitly: the norm ``R`` of every matrix stays what it was
at initialisation and every step moves it by ``lr * R`` before projecting back onto the sphere
of radius ``R``. Any direction (Adam's, Muon's) can be wrapped: :func:`hyperball` is the last
step of a chain, after the base direction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import haliax
import jax
import jax.numpy as jnp
import optax

from marin_optim.labels import MatrixAxes, ParamLabeler, raw_array
from marin_optim.transforms.newton_schulz import map_with_axes, require_matrix

PyTree = Any


def hyperball_delta(
    p: jax.Array, u: jax.Array, learning_rate: Any, axes: tuple[int, ...], eps: float
) -> jax.Array:
    """``W' - W`` of :func:`hyperball` for one leaf; the norms are over ``axes`` (one matrix),
    any other axis is a batch of matrices.

    With ``s = lr R / max(||u||, eps)``, ``M = W - s u`` and ``n = ||M||``, the step is
    ``(R / n) M - W``. Computed like that in float32, it loses about four digits (``W' - W`` is
    ``lr`` times smaller than ``W``). Expanding ``n^2 = R^2 - d`` with
    ``d = 2 s <W, u> - s^2 ||u||^2`` gives the same step with no cancellation::

        W' - W = d / (n (R + n)) W - (R s / n) u
    """

    def total(x: jax.Array) -> jax.Array:
        return jnp.sum(x, axis=axes, keepdims=True)

    radius_sq = total(p * p)
    radius = jnp.sqrt(radius_sq)
    u_sq = total(u * u)
    s = learning_rate * radius / jnp.maximum(jnp.sqrt(u_sq), eps)
    d = 2 * s * total(p * u) - s * s * u_sq
    n = jnp.maximum(jnp.sqrt(jnp.maximum(radius_sq - d, 0.0)), eps)
    return d / (n * (radius + n)) * p - (radius * s / n) * u


def hyperball(
    learning_rate: float | jax.Array,
    axes: Callable[[PyTree], PyTree] | None = None,
    *,
    eps: float = 1e-10,
) -> optax.GradientTransformation:
    """Hyperball's step for matrices (Wen et al., 2026, https://arxiv.org/abs/2606.16899).

    For each matrix ``W`` (one per batch element of a scan-stacked or expert leaf) and incoming
    direction ``u`` (e.g. Adam's ``m_hat / (sqrt(v_hat) + eps)``), with ``R = ||W||_F``::

        W' = R * normalize(W - lr * R * normalize(u)),   normalize(x) = x / max(||x||_F, eps)

    and the update returned is ``W' - W``, so ``optax.apply_updates`` lands on ``W'``: the norm
    of every matrix never changes (up to float rounding; ``R`` is re-read every step, as in
    Levanter's ``adamH``, not stored), and each step turns it by an angle of about ``lr``
    radians whatever the size of ``u``. A zero matrix stays zero. This is the last step of a
    chain: it needs ``params``, applies the learning rate itself, and replaces weight decay.

    ``axes(updates)`` gives each leaf's :class:`~marin_optim.labels.MatrixAxes` (default: the
    :class:`~marin_optim.labels.ParamLabeler` rules); a leaf without one is an error, so route
    vectors and embeddings elsewhere with ``optax.multi_transform``. The norms are sums over
    the leaf's fan-in and fan-out axes in place (no transposes), so sharded leaves stay sharded.
    """
    axes_fn = axes or ParamLabeler().matrix_axes

    def init_fn(params: optax.Params) -> optax.EmptyState:
        map_with_axes(lambda v, p: require_matrix(v, "hyperball"), axes_fn(params), params)
        return optax.EmptyState()

    def update_fn(
        updates: optax.Updates, state: optax.EmptyState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.EmptyState]:
        if params is None:
            raise ValueError("hyperball needs params (the step keeps each matrix's norm)")

        def one(view: MatrixAxes | None, u: Any, p: Any) -> Any:
            view = require_matrix(view, "hyperball")
            core = tuple(sorted(view.fan_in + view.fan_out))
            p_raw = raw_array(p)
            c = jnp.promote_types(p_raw.dtype, jnp.float32)  # norms of bfloat16 weights in float32
            delta = hyperball_delta(p_raw.astype(c), raw_array(u).astype(c), learning_rate, core, eps)
            delta = delta.astype(p_raw.dtype)
            return haliax.named(delta, u.axes) if haliax.is_named_array(u) else delta

        return map_with_axes(one, axes_fn(updates), updates, params), state

    return optax.GradientTransformation(init_fn, update_fn)
