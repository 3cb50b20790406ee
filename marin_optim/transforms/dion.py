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
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from marin_optim.labels import MatrixAxes, ParamLabeler, raw_array, restore_layout
from marin_optim.transforms.blocks import per_matrix
from marin_optim.transforms.distributed import shard_state
from marin_optim.transforms.newton_schulz import map_orthogonalized, map_with_axes, require_matrix

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
    qr_method: str = "rcqr",
    rcqr_oversample: float = 1.25,
) -> optax.GradientTransformation:
    """Dion's update direction (Ahn et al., 2025, Algorithm 1), per matrix ``X`` of shape ``m x n``
    (``m = fan_out``, ``n = fan_in``), on its tall orientation (``B^T`` when ``m < n``)::

        B = M + G                                   (momentum buffer plus the new gradient)
        P = orthonormalize(B Q)                     (float32; Q: n x r from the last step)
        R = B^T P
        M <- B - (1 - mu) P R^T                     (error feedback)
        Q <- R / (||R_{:, j}|| + eps)               (column-normalised, kept for the next step)
        u  = sqrt(m / n) P Q^T

    ``r`` is :func:`dion_rank` of ``rank_fraction`` and ``rank_multiple_of``; ``Q`` starts as a
    standard normal draw (``seed``, one stream per leaf). ``orthonormalize`` is
    :func:`orthonormal_columns` by ``qr_method``: ``"rcqr"`` (randomized Cholesky QR with a sketch
    of ``ceil(rcqr_oversample r)`` rows, as Dion's reference orthonormalises; a matrix it cannot
    orthonormalise is redone by Householder QR) or ``"qr"`` (Householder QR). Both give the same
    ``P`` up to column signs, which the update does not see. A step whose ``R`` is all zero (a zero
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
    if qr_method not in QR_METHODS:
        raise ValueError(f"qr_method must be one of {QR_METHODS}, got {qr_method!r}")
    if not rcqr_oversample >= 1.0:
        raise ValueError(f"rcqr_oversample must be >= 1, got {rcqr_oversample!r}")
    orthonormalize = partial(orthonormal_columns, method=qr_method, oversample=rcqr_oversample, seed=seed)
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
            q=shard_state(map_with_axes(q0, axes_fn(params), params)),
        )

    def update_fn(updates, state, params=None):
        del params

        def item(view: MatrixAxes, g: Any, buf: Any, q: jax.Array) -> tuple[jax.Array, ...]:
            m, n = view.fan_out_size, view.fan_in_size
            b = view.to_matrices(raw_array(buf).astype(jnp.float32) + raw_array(g).astype(jnp.float32))
            scale = jnp.full((b.shape[0],), math.sqrt(m / n), jnp.float32)
            return b if m >= n else b.mT, q, scale

        def one(view: MatrixAxes, result: tuple[jax.Array, ...], g: Any, buf: Any, q: jax.Array) -> _Triple:
            direction, new_buf, q_next = result
            if view.fan_out_size < view.fan_in_size:
                direction, new_buf = direction.mT, new_buf.mT
            return _Triple(
                restore_layout(direction.astype(raw_array(g).dtype), view, like=g),
                restore_layout(new_buf.astype(raw_array(buf).dtype), view, like=buf),
                q_next,
            )

        step = lambda item: dion_step(*item, momentum=momentum, eps=eps, orthonormalize=orthonormalize)
        triples = map_orthogonalized(
            one,
            step,
            axes_fn(updates),
            updates,
            state.momentum,
            state.q,
            who="scale_by_dion",
            item=item,
            transposable=False,
        )
        is_triple = lambda x: isinstance(x, _Triple)
        pick = lambda i: jax.tree.map(lambda t: t[i] if is_triple(t) else t, triples, is_leaf=is_triple)
        return pick(0), ScaleByDionState(momentum=pick(1), q=shard_state(pick(2)))

    return optax.GradientTransformation(init_fn, update_fn)


def dion_step(
    b: jax.Array,
    q: jax.Array,
    scale: jax.Array,
    *,
    momentum: float,
    eps: float,
    orthonormalize: Callable[[jax.Array], jax.Array],
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One Dion step on a batch of tall buffers ``b`` (momentum plus gradient) with their
    ``n x r`` factors ``q`` and per-matrix ``scale`` (``sqrt(fan_out / fan_in)``):
    ``(scale P Q_new^T, B - (1 - mu) P R^T, Q_next)``, the direction, the new buffer and the
    kept factor, in the tall orientation, with ``P = orthonormalize(B Q)`` (see
    :func:`orthonormal_columns`); see :func:`scale_by_dion`."""
    p_mat = orthonormalize(b @ q)
    r_mat = b.mT @ p_mat
    new_buf = b - (1.0 - momentum) * (p_mat @ r_mat.mT)
    q_new = r_mat / (jnp.sqrt(jnp.sum(jnp.square(r_mat), axis=-2, keepdims=True)) + eps)
    degenerate = jnp.all(r_mat == 0, axis=(-2, -1), keepdims=True)
    return scale[:, None, None] * (p_mat @ q_new.mT), new_buf, jnp.where(degenerate, q, q_new)


QR_METHODS = ("rcqr", "qr")
"""How Dion orthonormalises ``B Q``: randomized Cholesky QR, or Householder QR."""

ORTHONORMALITY_TOLERANCE = 1e-3
"""Largest entry of ``(P^T P - I) v``, over :data:`ORTHONORMALITY_PROBES` random sign vectors
``v``, accepted from Cholesky QR before Householder QR redoes the matrix."""

ORTHONORMALITY_PROBES = 4
"""Random sign vectors that check each Cholesky QR result: ``8 k r`` multiply-adds for a
``k x r`` matrix, where the whole ``P^T P`` would take ``k r^2``."""


def orthonormal_columns(
    p: jax.Array, *, method: str = "rcqr", oversample: float = 1.25, seed: int = 0
) -> jax.Array:
    """Orthonormal bases of the columns of tall ``(batch, k, r)`` matrices ``P``, in float32: the
    ``Q`` of ``P = Q R``, up to the sign of each column (Dion's update ``P Q^T`` and its error
    feedback do not see those signs).

    ``method="qr"``: Householder QR (``jnp.linalg.qr``). ``method="rcqr"``: randomized Cholesky QR
    (:func:`randomized_cholesky_qr`; ``P`` sketched down to ``ceil(oversample r)`` rows by
    :func:`sign_sketch` where it has more), the orthonormalisation of Dion's reference
    implementation (Ahn et al., 2025): matrix products, a QR of the sketched ``P`` (its ``R``
    only) and a Cholesky factorisation, in place of a Householder QR of ``P`` and its explicit
    ``Q``, which GPUs run slowly. Cholesky QR breaks down where ``P`` is rank deficient (a zero
    column: ``B Q`` when a column of ``Q`` is zero); a result that is not finite, or not
    orthonormal to :data:`ORTHONORMALITY_TOLERANCE` on random probes, is redone by Householder QR
    (one ``lax.cond`` for the batch: the Householder QR runs only when some matrix needs it). An
    all-zero ``P`` gives zeros. The factorisations go through
    :func:`~marin_optim.transforms.blocks.per_matrix`."""
    p = p.astype(jnp.float32)
    householder = lambda: per_matrix(lambda x: jnp.linalg.qr(x, mode="reduced")[0], p)
    if method == "qr":
        return householder()
    if method != "rcqr":
        raise ValueError(f"method must be one of {QR_METHODS}, got {method!r}")
    k, r = p.shape[-2:]
    rows = math.ceil(oversample * r)
    sketch_key, probe_key = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), k))
    # a sketch with as many rows as P (or more) saves nothing: P's own R preconditions it then
    sketch = sign_sketch(sketch_key, rows, k) if rows < k else None
    fast = randomized_cholesky_qr(p, sketch)
    zero = jnp.all(p == 0, axis=(-2, -1))
    fast = jnp.where(zero[:, None, None], 0.0, fast)
    probes = sign_sketch(probe_key, r, ORTHONORMALITY_PROBES) * math.sqrt(r)  # entries +-1
    error = jnp.max(jnp.abs(fast.mT @ (fast @ probes) - probes), axis=(-2, -1))  # NaN fails too
    ok = zero | (error <= ORTHONORMALITY_TOLERANCE)
    redo = lambda: jnp.where(ok[:, None, None], fast, householder())
    return jax.lax.cond(jnp.all(ok), lambda: fast, redo)


def sign_sketch(key: jax.Array, rows: int, cols: int) -> jax.Array:
    """A ``rows x cols`` matrix of independent random signs ``+-1 / sqrt(rows)``: a subspace
    embedding as a Gaussian sketch is (Achlioptas, 2003, "Database-friendly random projections"),
    drawn 32 signs to a random word, a tenth of a Gaussian draw's work (XLA's cost analysis)."""
    words = jax.random.bits(key, (rows, -(-cols // 32)), jnp.uint32)
    bits = (words[..., None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
    return (2.0 * bits.reshape(rows, -1)[:, :cols].astype(jnp.float32) - 1.0) / math.sqrt(rows)


def randomized_cholesky_qr(p: jax.Array, sketch: jax.Array | None) -> jax.Array:
    """The orthonormal factors of tall ``(batch, k, r)`` matrices ``P`` by randomized Cholesky QR::

        R_1 = R of QR(S P)          (S: an l x k random sketch; P itself without one)
        P_1 = P R_1^{-1}            (well conditioned: S P's R carries P's column scaling)
        R_2 = chol(P_1^T P_1)^T     (upper triangular)
        Q   = P_1 R_2^{-1}

    Fan, Guo and Lin (2021), "A novel randomized XR-based preconditioned CholeskyQR algorithm";
    Balabanov (2022), "Randomized Cholesky QR factorizations". Dion's reference sketches with a
    Gaussian ``S`` of ``128 ceil(1.25 r / 128)`` rows; :func:`orthonormal_columns` uses
    :func:`sign_sketch` with ``ceil(1.25 r)``. ``Q`` spans ``P``'s columns and
    ``P = Q (R_2 R_1)``, so it is Householder QR's ``Q`` up to column signs; where ``P`` is rank
    deficient it may be neither finite nor orthonormal. The products are batched; the
    factorisations and solves go through :func:`~marin_optim.transforms.blocks.per_matrix`."""
    solve = lambda upper, x: jax.lax.linalg.triangular_solve(upper, x, left_side=False, lower=False)
    r1 = per_matrix(lambda x: jnp.linalg.qr(x, mode="r"), p if sketch is None else sketch @ p)
    p1 = per_matrix(solve, r1, p)
    r2 = per_matrix(jnp.linalg.cholesky, p1.mT @ p1).mT
    return per_matrix(solve, r2, p1)


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
