"""Dion: orthonormalised low-rank updates by amortised power iteration with error feedback.

Ahn et al., 2025, "Dion: Distributed Orthonormalized Updates", https://arxiv.org/abs/2504.05295
(Algorithm 1). Instead of Newton–Schulz on the whole momentum matrix, Dion keeps a right factor
``Q`` between steps and does one power-iteration step per update; the part of the momentum that
the rank-``r`` approximation captured is removed from the buffer (error feedback), so what the
low-rank update missed is applied later.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from marin_optim.labels import MatrixAxes, ParamLabeler, raw_array, restore_layout
from marin_optim.transforms.newton_schulz import map_with_axes, require_matrix

PyTree = Any


class ScaleByDionState(NamedTuple):
    """Momentum buffer ``M`` (shaped like the parameter) and the power-iteration factor ``Q``.

    ``Q`` has shape ``(num_matrices, min(m, n), r)`` per leaf: the short side of the matrix
    (``n`` when ``m >= n``, else ``m``, since Dion works on the tall orientation).
    """

    momentum: optax.Updates
    q: optax.Updates


def dion_rank(fan_out: int, fan_in: int, rank_fraction: float, rank_multiple_of: int) -> int:
    """Dion's rank: ``rank_multiple_of * ceil(rank_fraction * min(m, n) / rank_multiple_of)``,
    capped at ``min(m, n)``."""
    small = min(fan_out, fan_in)
    r = rank_multiple_of * math.ceil(rank_fraction * small / rank_multiple_of)
    return max(1, min(r, small))


def scale_by_dion(
    axes: Callable[[PyTree], PyTree] | None = None,
    *,
    momentum: float = 0.95,
    rank_fraction: float = 1.0,
    rank_multiple_of: int = 1,
    eps: float = 1e-8,
    seed: int = 0,
) -> optax.GradientTransformation:
    """Dion's update direction (Ahn et al., 2025, Algorithm 1), per matrix ``X`` of shape ``m x n``
    (``m = fan_out``, ``n = fan_in``), on its tall orientation (``B^T`` when ``m < n``)::

        B = M + G                                   (momentum buffer plus the new gradient)
        P = orthonormalize(B Q)                     (QR, float32; Q: n x r from the last step)
        R = B^T P
        M <- B - (1 - mu) P R^T                     (error feedback)
        Q <- R / (||R_{:, j}|| + eps)               (column-normalised, kept for the next step)
        u  = sqrt(m / n) P Q^T

    ``r`` is :func:`dion_rank` of ``rank_fraction`` and ``rank_multiple_of``; ``Q`` starts as a
    standard normal draw (``seed``, one stream per leaf). A step whose ``R`` is all zero (a zero
    gradient and buffer) keeps the old ``Q``, so the factor never collapses to zero. At full rank,
    repeated on a fixed gradient, ``P Q^T`` converges to the polar factor ``U V^T`` (as Muon's
    Newton–Schulz approximates it). Chain with weight decay and ``scale_by_learning_rate``.
    Leaves are viewed through ``axes`` as in :func:`~marin_optim.transforms.muon.scale_by_muon`.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if not 0.0 < rank_fraction <= 1.0:
        raise ValueError(f"rank_fraction must be in (0, 1], got {rank_fraction!r}")
    if not isinstance(rank_multiple_of, int) or rank_multiple_of < 1:
        raise ValueError(f"rank_multiple_of must be an int >= 1, got {rank_multiple_of!r}")
    axes_fn = axes or ParamLabeler().matrix_axes

    def init_fn(params):
        counter = iter(range(1 << 30))

        def q0(view: MatrixAxes | None, p: Any) -> jax.Array:
            view = require_matrix(view, "scale_by_dion")
            m, n = view.fan_out_size, view.fan_in_size
            r = dion_rank(m, n, rank_fraction, rank_multiple_of)
            key = jax.random.fold_in(jax.random.PRNGKey(seed), next(counter))
            return jax.random.normal(key, (view.num_matrices, min(m, n), r), jnp.float32)

        return ScaleByDionState(
            momentum=jax.tree.map(jnp.zeros_like, params),
            q=map_with_axes(q0, axes_fn(params), params),
        )

    def update_fn(updates, state, params=None):
        del params
        views = axes_fn(updates)
        orthonormalize = _Orthonormalizer()

        def one(view: MatrixAxes | None, g: Any, buf: Any, q: jax.Array) -> _Triple:
            view = require_matrix(view, "scale_by_dion")
            m, n = view.fan_out_size, view.fan_in_size
            b = view.to_matrices(raw_array(buf).astype(jnp.float32) + raw_array(g).astype(jnp.float32))
            tall = b if m >= n else jnp.swapaxes(b, -1, -2)
            p_mat = orthonormalize(tall @ q)
            r_mat = jnp.swapaxes(tall, -1, -2) @ p_mat
            approx = p_mat @ jnp.swapaxes(r_mat, -1, -2)
            if m < n:
                approx = jnp.swapaxes(approx, -1, -2)
            new_buf = b - (1.0 - momentum) * approx
            col_norm = jnp.sqrt(jnp.sum(jnp.square(r_mat), axis=-2, keepdims=True))
            q_new = r_mat / (col_norm + eps)
            degenerate = jnp.all(r_mat == 0, axis=(-2, -1), keepdims=True)
            q_next = jnp.where(degenerate, q, q_new)
            direction = p_mat @ jnp.swapaxes(q_new, -1, -2)
            if m < n:
                direction = jnp.swapaxes(direction, -1, -2)
            direction = math.sqrt(m / n) * direction
            dtype = raw_array(g).dtype
            return _Triple(
                restore_layout(direction.astype(dtype), view, like=g),
                restore_layout(new_buf.astype(raw_array(buf).dtype), view, like=buf),
                q_next,
            )

        triples = map_with_axes(one, views, updates, state.momentum, state.q)
        is_triple = lambda x: isinstance(x, _Triple)
        pick = lambda i: jax.tree.map(lambda t: t[i] if is_triple(t) else t, triples, is_leaf=is_triple)
        return pick(0), ScaleByDionState(momentum=pick(1), q=pick(2))

    return optax.GradientTransformation(init_fn, update_fn)


class _Orthonormalizer:
    """Orthonormal bases of the columns of ``(batch, k, r)`` matrices by reduced QR, in float32.

    On CPU, jaxlib's LAPACK QR kernel waits inside an XLA thread-pool worker for batch tasks
    queued on the same pool; several such calls running at once can take every worker and
    deadlock (seen on a 2-core machine with a handful of stacked layers). There, the QRs of one
    update are therefore issued one matrix at a time and chained with
    ``optimization_barrier`` so that at most one runs at a time. Accelerators take one batched
    QR per leaf.
    """

    def __init__(self) -> None:
        self.serial = jax.default_backend() == "cpu"
        self.last: jax.Array | None = None

    def _qr(self, x: jax.Array) -> jax.Array:
        if self.last is not None:
            x, _ = jax.lax.optimization_barrier((x, self.last))
        q = jnp.linalg.qr(x, mode="reduced")[0]
        self.last = q
        return q

    def __call__(self, p: jax.Array) -> jax.Array:
        p = p.astype(jnp.float32)
        if not self.serial:
            return jnp.linalg.qr(p, mode="reduced")[0]
        return jnp.stack([self._qr(p[i]) for i in range(p.shape[0])])


class _Triple:
    """Three results for one leaf (not a pytree, so tree maps stop at it)."""

    def __init__(self, *items: Any) -> None:
        self.items = items

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


class ScaleByFanInLearningRateState(NamedTuple):
    """The learning rate actually applied (``learning_rate / sqrt(fan_in)``), for logging."""

    learning_rate: jax.Array

    def log_values(self) -> dict[str, jax.Array]:
        return {"learning_rate": self.learning_rate}


def scale_by_inverse_sqrt_fan_in_learning_rate(
    learning_rate: float | jax.Array,
    axes: Callable[[PyTree], PyTree] | None = None,
) -> optax.GradientTransformation:
    """``u <- -learning_rate / sqrt(fan_in) * u``: Dion's output-head rule.

    Dion (Ahn et al., 2025, App. D.2) and OLMo-core scale the LM head's learning rate by
    ``1 / sqrt(d_in)`` (``d_in`` = the model width). ``fan_in`` comes from each leaf's
    :class:`~marin_optim.labels.MatrixAxes` (via ``axes``); the applied rate of the first leaf
    is kept in the state so that ``hyperparams(state)`` shows it.
    """
    axes_fn = axes or ParamLabeler().matrix_axes

    def rate(tree: PyTree) -> tuple[PyTree, jax.Array]:
        def one(view: MatrixAxes | None, leaf: Any) -> jax.Array:
            view = require_matrix(view, "scale_by_inverse_sqrt_fan_in_learning_rate")
            return jnp.asarray(learning_rate, jnp.float32) / math.sqrt(view.fan_in_size)

        rates = map_with_axes(one, axes_fn(tree), tree)
        leaves = jax.tree.leaves(rates)
        return rates, leaves[0] if leaves else jnp.zeros((), jnp.float32)

    def init_fn(params):
        return ScaleByFanInLearningRateState(rate(params)[1])

    def update_fn(updates, state, params=None):
        del params, state
        rates, first = rate(updates)

        def apply(view: Any, u: Any, lr: jax.Array) -> Any:
            return jax.tree.map(lambda x: (-lr * x).astype(x.dtype), u)

        return map_with_axes(apply, axes_fn(updates), updates, rates), ScaleByFanInLearningRateState(first)

    return optax.GradientTransformation(init_fn, update_fn)
