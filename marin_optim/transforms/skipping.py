"""Running a transform so that a skipped step keeps its old state without copying it.

:func:`marin_optim.transforms.guards.skip_step_guard` turns a bad step into a no-op: zero
updates and ``new_state = where(skipped, old_state, state_computed_this_step)``. Written around
the inner transform, that select costs a copy of the whole optimizer state on every step under
XLA:CPU (7-10x slower steps for Adam on a 2-core CPU, measured by
benchmarks/optimizer_step.py). The reason: the inner update (Adam's ``m / (sqrt(v) + eps)``)
is computed from the *unselected* new moments, which XLA recomputes from the old moments inside
the parameter update, while the selected moments overwrite those old moments in place; without
multi-output fusion (off on CPU) XLA can only honour both by copying the old moments first.

:func:`update_keeping_state_on_skip` computes the same result without the copy, for any
transform: it traces the inner update to a jaxpr and evaluates it with every new-state value
replaced, at the point where it is computed, by its selected value. Everything downstream (the
update itself) then reads the buffers being written, as in an unguarded step. On a step that is
not skipped the select returns the new value, so every result is what the plain update
gives (up to XLA contracting floating-point operations differently across fusions); on a
skipped step the update is computed from the old state and the guard discards it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from marin_optim.transforms._tree import tree_select


def materialize_on_cpu(x: jax.Array) -> jax.Array:
    """Asks XLA:CPU to read ``x`` from memory rather than fuse (recompute) its producers.

    XLA:CPU duplicates cheap elementwise producers into every consumer; for a selected state
    that would bring the select (and its read of the old state) back into the update. An
    optimization barrier stops the duplication; ``x`` is an output buffer anyway, so it costs
    nothing. GPU/TPU handle this with multi-output fusion, where a barrier would only split
    kernels, so it is CPU-only.
    """
    return jax.lax.platform_dependent(x, cpu=lambda y: jax.lax.optimization_barrier(y), default=lambda y: y)


def update_keeping_state_on_skip(
    update_fn: Callable[..., tuple[Any, Any]],
    skipped: jax.Array,
    updates: Any,
    state: Any,
    params: Any = None,
    **extra_args: Any,
) -> tuple[Any, Any]:
    """``update_fn(updates, state, params, **extra_args)`` with its new state kept at ``state``
    where ``skipped``, evaluated so that nothing downstream reads the pre-select state.

    Returns ``(updates, new_state)``; the updates are those of the un-skipped step (the caller
    zeroes them on a skipped step). A transform whose update reads the *old* state directly
    (Lion's ``sign(b1 m + (1 - b1) g)``) still needs XLA:CPU to copy that state; nothing is
    lost elsewhere. Falls back to the plain select if the update cannot be traced on its own
    (e.g. it reads concrete values).
    """
    flat_in, in_tree = jax.tree.flatten((updates, state, params))

    def flat_update(*leaves: Any) -> tuple[Any, Any]:
        u, s, p = jax.tree.unflatten(in_tree, leaves)
        return update_fn(u, s, p, **extra_args)

    old_leaves, state_tree = jax.tree.flatten(state)
    try:
        closed, (u_shape, s_shape) = jax.make_jaxpr(flat_update, return_shape=True)(*flat_in)
    except Exception:  # e.g. a transform that only runs eagerly: the plain select still works
        closed = None
    if closed is None or jax.tree.structure(s_shape) != state_tree:
        new_updates, new_state = update_fn(updates, state, params, **extra_args)
        return new_updates, tree_select(skipped, state, new_state)

    jaxpr = closed.jaxpr
    n_updates = len(jax.tree.leaves(u_shape))
    state_outvars = jaxpr.outvars[n_updates:]
    inputs = set(jaxpr.invars) | set(jaxpr.constvars)
    targets: dict[Any, int] = {}
    repeated: set[Any] = set()
    for i, v in enumerate(state_outvars):
        if isinstance(v, jcore.Literal) or v in inputs:
            continue
        if v in targets:
            repeated.add(v)
        targets[v] = i
    for v in repeated:  # one value stored in two state leaves: leave both to the plain select
        del targets[v]

    env: dict[Any, Any] = {}

    def read(v: Any) -> Any:
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for v, val in zip(jaxpr.constvars, closed.consts, strict=True):
        env[v] = val
    for v, val in zip(jaxpr.invars, flat_in, strict=True):
        env[v] = val
    for eqn in jaxpr.eqns:
        bind_params = eqn.primitive.get_bind_params(eqn.params)
        subfuns: tuple[Any, ...] = ()
        if isinstance(bind_params, tuple):  # older JAX: (subfuns, params)
            subfuns, bind_params = bind_params
        ctx = getattr(getattr(eqn, "ctx", None), "manager", None) or contextlib.nullcontext()
        with ctx:
            out = eqn.primitive.bind(*subfuns, *map(read, eqn.invars), **bind_params)
        outs = out if eqn.primitive.multiple_results else [out]
        for v, val in zip(eqn.outvars, outs, strict=True):
            if isinstance(v, jcore.DropVar):
                continue
            if v in targets:
                val = materialize_on_cpu(jnp.where(skipped, old_leaves[targets[v]], val))
            env[v] = val

    new_updates = jax.tree.unflatten(
        jax.tree.structure(u_shape), [read(v) for v in jaxpr.outvars[:n_updates]]
    )
    new_leaves = []
    for v, old in zip(state_outvars, old_leaves, strict=True):
        new = read(v)
        done = not isinstance(v, jcore.Literal) and v in targets
        new_leaves.append(new if done else jnp.where(skipped, old, new))
    return new_updates, jax.tree.unflatten(state_tree, new_leaves)
