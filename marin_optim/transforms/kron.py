"""PSGD Kron: SGD preconditioned by a Kronecker product of per-axis triangular (or diagonal) factors.

Li, 2018, "Preconditioner on Matrix Lie Group for SGD" (https://arxiv.org/abs/1809.10232) and
Li, 2015, "Preconditioned Stochastic Gradient Descent" (https://arxiv.org/abs/1512.04202); the
Kron variant of ``psgd_torch`` (X.-L. Li, 2018-2024) as Levanter ships it. For one block ``G`` of
a tensor (its bias-corrected momentum, after the axes are merged and cut into blocks, see
:mod:`marin_optim.transforms.blocks`) the preconditioner is ``P = Q^T Q`` with
``Q = Q_1 (x) ... (x) Q_k``, one factor per axis: an upper-triangular ``d_i x d_i`` matrix, or a
diagonal. ``x_i M`` below applies a matrix along axis ``i`` (``(x_i M)[..a..] = sum_b M[a,b] x[..b..]``).

Fit of ``Q`` (on preconditioner-update steps), with a fresh probe ``V ~ N(0, I)`` per step::

    G~ = G + sqrt(eps_f32) mean|G| V                   (damping, eps_f32 = 2^-23)
    A  = G~ x_1 Q_1 ... x_k Q_k                          (= Q G~)
    B  = V  x_1 Q_1^-T ... x_k Q_k^-T                    (= Q^-T V, by triangular solves)
    per axis i:  T1 = A_(i) A_(i)^T,   T2 = B_(i) B_(i)^T   (unfoldings along i; diagonals for a diagonal Q_i)
        triangular:  Q_i <- Q_i - lr_P / lb(T1 + T2) * triu(T1 - T2) Q_i     (lb: a spectral-norm lower bound)
        diagonal:    Q_i <- Q_i - lr_P / max|T1 + T2| * (T1 - T2) * Q_i

a step of relative gradient descent on the Lie group of such ``Q`` towards
``P E[G G^T] P = E[V V^T]``. Every 100 fits the factors of a block are rebalanced to equal
max-norms (their product unchanged). The direction is ``P G = G x_1 Q_1^T Q_1 ... x_k Q_k^T Q_k``.

The fit runs on step ``t`` when ``update_counter`` reaches ``1 / p(t)``, with
``p(t) = clip(exp(-0.001 (t - flat_start)), p_min, 1)`` (:func:`update_probability`): every step
for ``flat_start`` steps, then an exponential anneal to every ``1 / p_min``-th step (a
deterministic schedule, as in Levanter; the name "probability" is psgd_torch's). The probes
draw from a PRNG key kept in the state and split once per step, so a run is reproducible and a
resumed run continues the same stream. Levanter's conventions kept here: a scalar is a ``(1,)``
tensor; blocks are zero-padded and the damping's mean includes the padding; the fit sees the
momentum, not the raw gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from marin_optim.errors import ConfigError
from marin_optim.transforms.blocks import (
    BlockLayout,
    batched,
    block_layout,
    from_stack,
    layout_error,
    padding_problem,
    per_matrix,
    stacked_leaves,
    to_stack,
)
from marin_optim.transforms.distributed import shard_state, spread_blocks

MEMORY_SAVE_MODES = (None, "one_diag", "all_diag")
PRECISIONS = (None, "bfloat16", "tensorfloat32", "float32")
BALANCE_EVERY = 100
"""Fits between rebalancings of a block's factors."""

Factors = tuple[jax.Array, ...]


def update_probability(
    count: jax.Array, min_prob: float, flat_start: int, max_prob: float = 1.0, decay: float = 0.001
) -> jax.Array:
    """``clip(max_prob exp(-decay (count - flat_start)), min_prob, max_prob)``: flat, then an
    exponential anneal (psgd_torch's ``precond_update_prob_schedule``; float32, as Levanter's)."""
    return jnp.clip(max_prob * jnp.exp(-decay * (count - flat_start)), min_prob, max_prob)


def diagonal_axes(
    shape: Sequence[int], max_size_triangular: int, min_ndim_triangular: int, memory_save_mode: str | None
) -> tuple[bool, ...]:
    """Per axis, whether its factor is diagonal: all (``all_diag``), the largest (``one_diag``; the
    last of equal ones), and every axis of size 1 or above ``max_size_triangular``, and all of a
    tensor with fewer than ``min_ndim_triangular`` axes."""
    if memory_save_mode not in MEMORY_SAVE_MODES:
        raise ConfigError(f"memory_save_mode={memory_save_mode!r}: must be one of {list(MEMORY_SAVE_MODES)}")
    n = len(shape)
    diag = [memory_save_mode == "all_diag"] * n
    if memory_save_mode == "one_diag" and n:
        diag[max(range(n), key=lambda i: (shape[i], i))] = True
    return tuple(
        d or s == 1 or s > max_size_triangular or n < min_ndim_triangular
        for d, s in zip(diag, shape, strict=True)
    )


# -- one block ----------------------------------------------------------------------------------


def _along(x: jax.Array, m: jax.Array, axis: int) -> jax.Array:
    """``x x_axis m``: ``m`` (``d x d``, or a diagonal ``d``) applied along ``axis``."""
    if m.ndim == 1:
        return x * jnp.expand_dims(m, [j for j in range(x.ndim) if j != axis])
    return jnp.moveaxis(jnp.tensordot(m, x, axes=((1,), (axis,))), 0, axis)


def _solve_along(x: jax.Array, q: jax.Array, axis: int) -> jax.Array:
    """``x x_axis q^-T`` (``x`` along ``axis`` times ``q^-1`` from the right; ``q`` upper triangular)."""
    if q.ndim == 1:
        return x / jnp.expand_dims(q, [j for j in range(x.ndim) if j != axis])
    moved = jnp.moveaxis(x, axis, -1)
    flat = moved.reshape(-1, moved.shape[-1]).astype(jnp.promote_types(q.dtype, x.dtype))
    solved = jax.lax.linalg.triangular_solve(q.astype(flat.dtype), flat, left_side=False, lower=False)
    return jnp.moveaxis(solved.reshape(moved.shape), -1, axis)


def _second_moment(x: jax.Array, axis: int, diagonal: bool) -> jax.Array:
    """``X_(axis) X_(axis)^T`` (its diagonal when ``diagonal``), the unfolding along ``axis``."""
    others = [j for j in range(x.ndim) if j != axis]
    if diagonal:
        return jnp.sum(x * x, axis=others)
    return jnp.tensordot(x, x, axes=(others, others))


def norm_lower_bound(a: jax.Array) -> jax.Array:
    """A cheap lower bound of the spectral norm of a symmetric ``a`` (psgd_torch's): one power
    step from its largest column, ``||a (a c / ||a c||)||`` with ``a`` scaled by ``max|a|``. In
    practice within a factor sqrt(2) of the norm."""
    scale = jnp.max(jnp.abs(a))

    def bound(a: jax.Array) -> jax.Array:
        a = a / scale
        column = jnp.argmax(jnp.sum(a * a, axis=0))
        x = jax.lax.dynamic_index_in_dim(a, column, 1, keepdims=False) @ a
        return scale * jnp.linalg.norm((x / jnp.linalg.norm(x)) @ a.T)

    return jnp.where(scale > 0, bound(a), scale)


def _tiny(x: jax.Array) -> jax.Array:
    return x + jnp.finfo(x.dtype).tiny


def conjugate_probe(qs: Factors, v: jax.Array) -> jax.Array:
    """``B = V x_1 Q_1^-T ... x_k Q_k^-T`` for one block (triangular solves, no inverse formed)."""
    for i, q in enumerate(qs):
        v = _solve_along(v, q, i)
    return v


def fit_factors(qs: Factors, g: jax.Array, b: jax.Array, lr: float) -> Factors:
    """One fit of the factors of one block (module docstring) for the damped momentum ``g`` and
    the conjugate probe ``b`` (:func:`conjugate_probe`); every factor is updated from the same
    ``A`` and ``B``."""
    a = g
    for i, q in enumerate(qs):
        a = _along(a, q, i)
    new = []
    for i, q in enumerate(qs):
        t1, t2 = _second_moment(a, i, q.ndim == 1), _second_moment(b, i, q.ndim == 1)
        if q.ndim == 1:
            new.append(q - lr / _tiny(jnp.max(jnp.abs(t1 + t2))) * (t1 - t2) * q)
        else:
            new.append(q - lr / _tiny(norm_lower_bound(t1 + t2)) * jnp.triu(t1 - t2) @ q)
    return tuple(new)


def balance(qs: Factors) -> Factors:
    """The factors rescaled to the geometric mean of their max-norms (their product unchanged)."""
    norms = jnp.stack([jnp.max(jnp.abs(q)).astype(jnp.float32) for q in qs])
    target = jnp.exp(jnp.mean(jnp.log(norms)))
    return tuple(q * (target / n).astype(q.dtype) for q, n in zip(qs, norms, strict=True))


def precondition(qs: Factors, g: jax.Array) -> jax.Array:
    """``P G = G x_1 Q_1^T Q_1 ... x_k Q_k^T Q_k`` for one block."""
    for i, q in enumerate(qs):
        g = _along(_along(g, q, i), q.T, i) if q.ndim == 2 else _along(g, q * q, i)
    return g


# -- the transformation -------------------------------------------------------------------------


class ScaleByKronState(NamedTuple):
    count: jax.Array
    key: jax.Array
    """The probes' PRNG key (raw ``uint32[2]``), split once per step."""
    mu: optax.Updates | None
    """The momentum (``None`` when ``b1 == 0``)."""
    preconditioners: list[Factors]
    """Per leaf (``jax.tree.leaves`` order): per block axis, ``Q_i`` as ``[layers, blocks, d, d]``
    (triangular) or ``[layers, blocks, d]`` (diagonal); no layer axis outside stacked modules."""
    update_counter: jax.Array
    """Steps since the last fit."""
    balance_counter: jax.Array
    """Fits since the last rebalancing."""


def scale_by_kron(
    b1: float = 0.9,
    normalize_grads: bool = False,
    preconditioner_update_probability: float = 0.05,
    update_prob_flat_start: int = 500,
    max_size_triangular: int = 25000,
    min_ndim_triangular: int = 2,
    memory_save_mode: str | None = None,
    preconditioner_lr: float = 0.1,
    preconditioner_init_scale: float = 1.0,
    mu_dtype: Any = None,
    precond_dtype: Any = None,
    precond_update_precision: str | None = "tensorfloat32",
    precond_grads_precision: str | None = None,
    lax_map_scanned_layers: bool = False,
    lax_map_batch_size: int = 8,
    merge_dims: bool = True,
    target_merged_dim_size: int = 8192,
    block_size: int | None = 256,
    seed: int = 0,
) -> optax.GradientTransformation:
    """PSGD Kron's direction (module docstring) for every leaf; ``block_size=None`` blocks nothing.

    Per leaf, in order: ``normalize_grads`` divides the gradient by its norm; the momentum
    ``m <- b1 m + (1 - b1) g`` is bias-corrected (``b1 = 0``: none, the gradient itself); on a fit
    step the factors are fitted to it; the output is ``P m``. ``init`` and ``update`` need the
    parameters' structure (a haliax ``Stacked`` module's leaves are preconditioned layer by
    layer; ``lax_map_scanned_layers`` maps over the blocks ``lax_map_batch_size`` at a time
    instead of all at once). On several devices every leaf's blocks of one shape are shared out
    over the mesh (:func:`~marin_optim.transforms.distributed.spread_blocks`). A triangular
    factor larger than ``max_size_triangular`` (possible only without blocks, after merging) is a
    ``ConfigError`` naming the parameter.
    """
    mu_dtype = optax._src.utils.canonicalize_dtype(mu_dtype)
    precond_dtype = optax._src.utils.canonicalize_dtype(precond_dtype) or jnp.float32

    def layouts(tree: Any) -> tuple[list[BlockLayout], list[int]]:
        leaves = jax.tree.leaves(tree)
        batch = [int(s) for s in stacked_leaves(tree)]
        out = []
        for i, (x, nb) in enumerate(zip(leaves, batch, strict=True)):
            shape = tuple(x.shape[nb:]) or (1,)
            diag = diagonal_axes(shape, max_size_triangular, min_ndim_triangular, memory_save_mode)
            layout = block_layout(
                shape,
                diag,
                merge_dims=merge_dims,
                target_merged_dim_size=target_merged_dim_size,
                block_size=block_size,
            )
            problem = padding_problem(layout, block_size)
            if problem:
                raise layout_error("kron", tree, i, problem)
            shapes = zip(layout.block_shape, layout.rotated, strict=True)
            big = [s for s, r in shapes if r and s > max_size_triangular]
            if big:
                raise layout_error(
                    "kron",
                    tree,
                    i,
                    f"would get a {big[0]}x{big[0]} triangular preconditioner (its axes merged to "
                    f"{layout.merged}), over max_size_triangular={max_size_triangular}; "
                    "set partition_grads_into_blocks: true",
                )
            out.append(layout)
        return out, batch

    def per_block(fn: Callable) -> Callable:
        """``fn`` of one block over one batch axis of blocks (every leaf's blocks of one shape,
        gathered by :func:`spread_blocks`); ``lax_map_scanned_layers`` maps them
        ``lax_map_batch_size`` at a time instead of all at once (Levanter maps a stacked leaf's
        layers; either way only the peak memory changes)."""
        if lax_map_scanned_layers:  # lax.map applies fn to one block (vmapping a batch of them)
            size = lax_map_batch_size if lax_map_batch_size > 1 else None
            return lambda *xs: jax.lax.map(lambda a: fn(*a), xs, batch_size=size)
        return jax.vmap(fn)

    def init_fn(params):
        ls, batch = layouts(params)
        factors = []
        for x, lay, nb in zip(jax.tree.leaves(params), ls, batch, strict=True):
            lead = (*x.shape[:nb], lay.num_blocks)
            scale = preconditioner_init_scale ** (1 / len(lay.block_shape))
            shapes = zip(lay.block_shape, lay.rotated, strict=True)
            one = [scale * (jnp.eye(s) if r else jnp.ones(s)) for s, r in shapes]
            factors.append(tuple(jnp.broadcast_to(q, (*lead, *q.shape)).astype(precond_dtype) for q in one))
        return ScaleByKronState(
            count=jnp.zeros([], jnp.int32),
            key=jax.random.PRNGKey(seed),
            mu=otu.tree_zeros_like(params, dtype=mu_dtype) if b1 > 0 else None,
            preconditioners=shard_state(factors),
            update_counter=jnp.zeros([], jnp.int32),
            balance_counter=jnp.zeros([], jnp.int32),
        )

    def update_fn(updates, state, params=None):
        del params
        ls, batch = layouts(updates)
        count = optax.safe_int32_increment(state.count)
        key, probe_key = jax.random.split(state.key)
        if normalize_grads:
            updates = jax.tree.map(lambda g: g / (jnp.linalg.norm(g) + 1e-16), updates)
        mu, momentum = None, updates
        if b1 > 0:
            mu = otu.tree_update_moment(updates, state.mu, b1, 1)
            momentum = otu.tree_bias_correction(mu, b1, count)
        leaves, treedef = jax.tree.flatten(momentum)
        blocks = [to_stack(g, lay, nb) for g, lay, nb in zip(leaves, ls, batch, strict=True)]
        leads = [nb + 1 for nb in batch]
        fit = functools.partial(fit_factors, lr=preconditioner_lr)

        def fit_all(qs_all: list[Factors], balance_counter: jax.Array) -> tuple[list[Factors], jax.Array]:
            with jax.default_matmul_precision(precond_update_precision):
                balance_counter = optax.safe_int32_increment(balance_counter)
                rebalance = balance_counter >= BALANCE_EVERY
                qs_all = jax.lax.cond(
                    rebalance,
                    lambda qs: [batched(balance, nb + 1)(q) for q, nb in zip(qs, batch, strict=True)],
                    lambda qs: qs,
                    qs_all,
                )
                keys = jax.random.split(probe_key, len(blocks))
                damp = jnp.sqrt(jnp.finfo(jnp.float32).eps)
                items = []
                for g, q, k in zip(blocks, qs_all, keys, strict=True):
                    v = jax.random.normal(k, g.shape, g.dtype)
                    items.append((q, g + damp.astype(g.dtype) * jnp.mean(jnp.abs(g)) * v, v))
                fit_blocks = lambda item: per_block(fit)(
                    item[0], item[1], per_matrix(conjugate_probe, item[0], item[2])
                )
                new = spread_blocks(fit_blocks, items, leads)
            return shard_state(otu.tree_cast(new, precond_dtype)), jnp.where(rebalance, 0, balance_counter)

        update_counter = optax.safe_int32_increment(state.update_counter)
        prob = update_probability(count, preconditioner_update_probability, update_prob_flat_start)
        do_fit = update_counter >= 1 / prob
        qs_all, balance_counter = jax.lax.cond(
            do_fit, fit_all, lambda qs, bc: (qs, bc), state.preconditioners, state.balance_counter
        )
        outs = []
        with jax.default_matmul_precision(precond_grads_precision):
            preconditioned = spread_blocks(
                lambda item: per_block(precondition)(*item), list(zip(qs_all, blocks, strict=True)), leads
            )
            for x, out, lay, nb in zip(jax.tree.leaves(updates), preconditioned, ls, batch, strict=True):
                out = from_stack(out, lay, nb)
                outs.append(out.reshape(x.shape).astype(x.dtype))
        return jax.tree.unflatten(treedef, outs), ScaleByKronState(
            count=count,
            key=key,
            mu=otu.tree_cast(mu, mu_dtype),
            preconditioners=qs_all,
            update_counter=jnp.where(do_fit, 0, update_counter),
            balance_counter=balance_counter,
        )

    return optax.GradientTransformation(init_fn, update_fn)
