"""SOAP: Adam in the eigenbasis of Shampoo's preconditioner (Vyas et al., 2024, arXiv:2409.11321).

For a gradient ``G`` (one matrix, or one block of it) SOAP keeps Shampoo's two factors

    L <- beta_s L + (1 - beta_s) G G^T,        R <- beta_s R + (1 - beta_s) G^T G

and their eigenbases ``Q_L``, ``Q_R`` (refreshed every ``precondition_frequency`` steps), and runs
Adam in the rotated coordinates:

    m <- b1 m + (1 - b1) G                              (the first moment stays unrotated)
    G' = Q_L^T G Q_R,   v <- b2 v + (1 - b2) G'^2       (the second moment lives in the eigenbasis)
    u  = Q_L (Q_L^T m Q_R / (sqrt(v) + eps)) Q_R^T * sqrt(1 - b2^t) / (1 - b1^t)

A tensor of any rank gets one factor per axis (``G`` contracted over every other axis). The first
step only fills the factors and takes the bases by ``eigh`` (descending eigenvalues); each refresh
after that is one step of the QR power iteration (the paper's Algorithm 4): sort the current basis
by its estimated eigenvalues ``diag(Q^T L Q)`` (permuting ``v`` alike), then ``Q <- qr(L Q).Q``.

Levanter's conventions, which these transforms keep (``marin_optim.optimizers.soap`` is a drop-in):
the step counter counts the first (filling) step, whose update is zero, so bias correction uses
``t = count``; a refresh at step ``t`` uses the factors as they were before step ``t``'s
gradient; 1-D tensors get a full ``d x d`` rotation; an axis of ``max_precond_dim`` or more gets
none. Before all that a tensor's axes may be merged and cut into blocks zero-padded to
``block_size`` (:mod:`marin_optim.transforms.blocks`; :func:`soap_layout`), each block with its
own factors.
The transforms are pure functions of one block (:func:`accumulate_factors`, :func:`rotate`,
:func:`rotate_back`, :func:`eigenbases`, :func:`power_iteration`), batched with ``vmap``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from marin_optim.transforms.blocks import (
    BlockLayout,
    block_layout,
    from_stack,
    layout_error,
    padding_problem,
    per_matrix,
    stacked_leaves,
    to_stack,
)
from marin_optim.transforms.distributed import shard_state, spread_blocks

HIGHEST = jax.lax.Precision.HIGHEST
Factors = tuple[jax.Array | None, ...]


# -- layout: which axes are rotated --------------------------------------------------------------


def unrotated_axes(shape: Sequence[int], max_precond_dim: int, one_diag: bool) -> tuple[bool, ...]:
    """Per axis of an (at least 2-D) tensor, whether it gets no rotation: ``max_precond_dim`` or
    larger, or (``one_diag``) any axis after the first that could have one."""
    if len(shape) < 2:
        return (False,) * max(len(shape), 1)
    big = [s >= max_precond_dim for s in shape]
    if not one_diag:
        return tuple(big)
    first = next((i for i, b in enumerate(big) if not b), None)
    return tuple(i != first for i in range(len(shape)))


def soap_layout(
    shape: Sequence[int],
    *,
    max_precond_dim: int,
    one_diag: bool,
    merge_dims: bool,
    target_merged_dim_size: int,
    block_size: int | None,
) -> BlockLayout:
    """The layout of a tensor of ``shape``: merge small axes, cut each rotated axis longer than
    ``block_size`` into blocks, zero-pad every block axis to a multiple of ``block_size``.

    A 1-D block is always rotated (Levanter's rule); an N-D block axis is when it is shorter than
    ``max_precond_dim`` (with ``one_diag``, only the first such axis). ``block_size=None``: no
    blocks and no padding.
    """
    shape = tuple(int(s) for s in shape)
    layout = block_layout(
        shape,
        unrotated_axes(shape, max_precond_dim, one_diag),
        merge_dims=merge_dims,
        target_merged_dim_size=target_merged_dim_size,
        block_size=block_size,
    )
    if len(layout.block_shape) == 1:
        return layout._replace(rotated=(True,))
    rotated, first = [], True
    for s in layout.block_shape:
        rotated.append(s < max_precond_dim and (first or not one_diag))
        first = first and not rotated[-1]
    return layout._replace(rotated=tuple(rotated))


# -- one block ----------------------------------------------------------------------------------


def accumulate_factors(g: jax.Array, factors: Factors, beta: float) -> Factors:
    """``F_i <- F_i + (1 - beta) (G_(i) G_(i)^T - F_i)``, ``G_(i)`` the unfolding along axis ``i``."""
    out = []
    for i, f in enumerate(factors):
        if f is None:
            out.append(None)
            continue
        others = [j for j in range(g.ndim) if j != i]
        outer = jnp.tensordot(g, g, axes=(others, others), precision=HIGHEST)
        out.append(f + (1 - beta) * (outer - f))
    return tuple(out)


def rotate(x: jax.Array, bases: Factors) -> jax.Array:
    """``x`` in the eigenbasis: ``x x_i Q_i^T`` over every rotated axis ``i`` (``Q_L^T X Q_R``)."""
    for q in bases:  # each step consumes the leading axis and appends the rotated one last
        x = jnp.moveaxis(x, 0, -1) if q is None else jnp.tensordot(x, q, axes=((0,), (0,)), precision=HIGHEST)
    return x


def rotate_back(x: jax.Array, bases: Factors) -> jax.Array:
    """The inverse of :func:`rotate` (``Q_L X Q_R^T``)."""
    for q in bases:
        x = jnp.moveaxis(x, 0, -1) if q is None else jnp.tensordot(x, q, axes=((0,), (1,)), precision=HIGHEST)
    return x


def eigenbases(factors: Factors, eps: float) -> Factors:
    """Each factor's eigenvectors, by decreasing eigenvalue (``eigh(F + eps I)``)."""
    return tuple(
        None if f is None else jnp.flip(jnp.linalg.eigh(f + eps * jnp.eye(f.shape[0]))[1], axis=1)
        for f in factors
    )


def power_iteration(factors: Factors, bases: Factors, nu: jax.Array) -> tuple[Factors, jax.Array]:
    """One QR power-iteration step per factor (Algorithm 4): order the basis by ``diag(Q^T F Q)``
    (decreasing; ``nu``, which lives in that basis, is permuted alike), then ``Q <- qr(F Q).Q``."""
    new = []
    for axis, (f, q) in enumerate(zip(factors, bases, strict=True)):
        if f is None or q is None:
            new.append(None)
            continue
        estimate = jnp.diag(jnp.matmul(jnp.matmul(q.T, f, precision=HIGHEST), q, precision=HIGHEST))
        order = jnp.argsort(estimate, descending=True)
        nu = jnp.take(nu, order, axis=axis)
        new.append(jnp.linalg.qr(jnp.matmul(f, q[:, order], precision=HIGHEST))[0])
    return tuple(new), nu


# -- the transformation -------------------------------------------------------------------------


class ScaleBySoapState(NamedTuple):
    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    factors: list[Factors]
    """Per leaf (in ``jax.tree.leaves`` order): per block axis, the factor ``[layers, blocks, d, d]``."""
    bases: list[Factors]
    """Per leaf: per block axis, the eigenbasis (same shapes as the factors)."""


def scale_by_soap(
    b1: float = 0.95,
    b2: float = 0.95,
    shampoo_beta: float = 0.95,
    eps: float = 1e-8,
    precondition_frequency: int = 10,
    max_precond_dim: int = 10000,
    merge_dims: bool = True,
    target_merged_dim_size: int = 2048,
    block_size: int | None = 256,
    one_diag: bool = False,
    mu_dtype: Any = None,
    precond_dtype: Any = None,
) -> optax.GradientTransformation:
    """SOAP's direction (module docstring), for every leaf; ``block_size=None`` blocks nothing.

    ``init`` and ``update`` need the parameters (a haliax ``Stacked`` module's leaves are rotated
    layer by layer). A tensor whose 1-D rotation would be ``max_precond_dim`` or larger (only
    without blocks) is a ``ConfigError`` naming it.
    """
    mu_dtype = optax._src.utils.canonicalize_dtype(mu_dtype)
    precond_dtype = optax._src.utils.canonicalize_dtype(precond_dtype)

    def layouts(params: Any) -> tuple[list[BlockLayout], list[int]]:
        if params is None:
            raise ValueError("scale_by_soap needs the parameters (update(grads, state, params))")
        leaves = jax.tree.leaves(params)
        batch = [int(s) for s in stacked_leaves(params)]
        out = []
        for i, (x, nb) in enumerate(zip(leaves, batch, strict=True)):
            layout = soap_layout(
                tuple(x.shape[nb:]) or (1,),  # a scalar as a 1-vector
                max_precond_dim=max_precond_dim,
                one_diag=one_diag,
                merge_dims=merge_dims,
                target_merged_dim_size=target_merged_dim_size,
                block_size=block_size,
            )
            problem = padding_problem(layout, block_size)
            if problem:
                raise layout_error("soap", params, i, problem)
            if len(layout.block_shape) == 1 and layout.block_shape[0] >= max_precond_dim:
                raise layout_error(
                    "soap",
                    params,
                    i,
                    f"would get a {layout.block_shape[0]}x{layout.block_shape[0]} rotation, over "
                    f"max_precond_dim={max_precond_dim}; set partition_grads_into_blocks: true",
                )
            out.append(layout)
        return out, batch

    def empty(layout: BlockLayout, nb: int, lead: tuple[int, ...]) -> Factors:
        return tuple(
            jnp.zeros((*lead, layout.num_blocks, s, s), precond_dtype) if r else None
            for s, r in zip(layout.block_shape, layout.rotated, strict=True)
        )

    def init_fn(params):
        ls, batch = layouts(params)
        leads = [tuple(x.shape[:nb]) for x, nb in zip(jax.tree.leaves(params), batch, strict=True)]
        factors = [empty(lay, nb, lead) for lay, nb, lead in zip(ls, batch, leads, strict=True)]
        return ScaleBySoapState(
            count=jnp.zeros([], jnp.int32),
            mu=otu.tree_zeros_like(params, dtype=mu_dtype),
            nu=otu.tree_zeros_like(params, dtype=mu_dtype),
            factors=shard_state(factors),
            bases=shard_state(
                [tuple(None if f is None else jnp.zeros_like(f) for f in fs) for fs in factors]
            ),
        )

    def update_fn(updates, state, params=None):
        ls, batch = layouts(params)
        count = optax.safe_int32_increment(state.count)
        grads, treedef = jax.tree.flatten(updates)

        def fill(item):  # one batch axis of blocks: the first factors and their bases
            b, fs = item
            fs = jax.vmap(lambda b, f: accumulate_factors(b, f, shampoo_beta))(b, fs)
            return fs, per_matrix(lambda f: eigenbases(f, eps), fs)

        leads = [nb + 1 for nb in batch]

        def first_step():
            items = [
                (to_stack(g, lay, nb), fs)
                for lay, nb, g, fs in zip(ls, batch, grads, state.factors, strict=True)
            ]
            factors, bases = zip(*spread_blocks(fill, items, leads), strict=True) if items else ((), ())
            return otu.tree_zeros_like(updates), state._replace(
                count=count,
                factors=shard_state(otu.tree_cast_like(list(factors), state.factors)),
                bases=shard_state(otu.tree_cast_like(list(bases), state.bases)),
            )

        def later_step():
            mu = otu.tree_update_moment(updates, state.mu, b1, 1)
            refresh = count % precondition_frequency == 0
            bc = jnp.sqrt(1 - b2**count) / (1 - b1**count)

            def block_step(g, m, v, qs):
                v = (1 - b2) * rotate(g, qs) ** 2 + b2 * v
                return rotate_back(rotate(m, qs) / (jnp.sqrt(v) + eps), qs), v

            def step(item):  # one batch axis of blocks
                g, m, v, fs, qs, refresh = item
                u, v = jax.vmap(block_step)(g, m, v, qs)
                new_fs = jax.vmap(lambda b, f: accumulate_factors(b, f, shampoo_beta))(g, fs)
                if any(f is not None for f in fs):  # the refresh uses the factors from before g
                    qs, v = jax.lax.cond(
                        refresh[0],
                        lambda: per_matrix(power_iteration, fs, qs, v),
                        lambda: (qs, v),
                    )
                return u, v, new_fs, qs

            items = []
            for lay, nb, g, m, v, fs, qs in zip(
                ls,
                batch,
                grads,
                jax.tree.leaves(mu),
                jax.tree.leaves(state.nu),
                state.factors,
                state.bases,
                strict=True,
            ):
                g, m, v = (to_stack(x, lay, nb) for x in (g, m, v))
                items.append((g, m, v, fs, qs, jnp.broadcast_to(refresh, g.shape[: nb + 1])))
            outs, new_nu, new_f, new_q = [], [], [], []
            for (u, v, fs, qs), lay, nb, g in zip(
                spread_blocks(step, items, leads), ls, batch, grads, strict=True
            ):
                outs.append((from_stack(u, lay, nb) * bc).reshape(g.shape).astype(g.dtype))
                new_nu.append(from_stack(v, lay, nb).reshape(g.shape))
                new_f.append(fs)
                new_q.append(qs)
            return jax.tree.unflatten(treedef, outs), ScaleBySoapState(
                count=count,
                mu=otu.tree_cast_like(mu, state.mu),
                nu=otu.tree_cast_like(jax.tree.unflatten(treedef, new_nu), state.nu),
                factors=shard_state(otu.tree_cast_like(new_f, state.factors)),
                bases=shard_state(otu.tree_cast_like(new_q, state.bases)),
            )

        return jax.lax.cond(count == 1, first_step, later_step)

    return optax.GradientTransformation(init_fn, update_fn)
