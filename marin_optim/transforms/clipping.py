"""Global-norm gradient clipping in multiplicative form, exposing the norm for logging."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from marin_optim.transforms import _tree
from marin_optim.transforms.skipping import materialize_on_cpu


class ClipByGlobalNormState(NamedTuple):
    """Holds the global gradient norm seen by the latest update (before clipping)."""

    grad_norm: jax.Array

    def log_values(self) -> dict[str, jax.Array]:
        return {"grad_norm": self.grad_norm}


def unfused_global_norm(tree: optax.Updates) -> jax.Array:
    """``sqrt(sum_i ||g_i||^2)`` over every leaf, accumulated in float32, for an optimizer's input.

    :func:`marin_optim.transforms.global_norm` of the leaves, each read behind a (CPU-only,
    free) barrier so that XLA cannot merge this g^2 / float32 cast with the same expression in
    the optimizer (Adam's g * g) and write it to a temporary buffer.
    """
    return _tree.global_norm(jax.tree.map(materialize_on_cpu, tree))


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """Rescales the whole gradient tree so that its global L2 norm is at most ``max_norm``.

    Update rule: ``g <- g * min(1, max_norm / ||g||)`` with ``||g|| = sqrt(sum_i ||g_i||^2)``
    over all leaves (Pascanu et al., 2013, "On the difficulty of training recurrent neural
    networks", https://arxiv.org/abs/1211.5063).

    Same result as ``optax.clip_by_global_norm``, but written as one scalar reduction and a
    multiply that XLA fuses into the optimizer's elementwise pass, instead of a ``select`` over
    the whole tree (which costs a separate memory pass per leaf). The pre-clip norm is kept in
    the state so trainers can log it (``hyperparams(state)["grad_norm"]``). A non-finite norm
    propagates into the updates; guards upstream decide what to do with such a step.

    >>> import jax.numpy as jnp
    >>> tx = clip_by_global_norm(1.0)
    >>> g = {"a": jnp.array([3.0, 4.0])}
    >>> clipped, state = tx.update(g, tx.init(g))
    >>> clipped["a"].tolist(), float(state.grad_norm)
    ([0.6000000238418579, 0.800000011920929], 5.0)
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm!r}")

    def init_fn(params: optax.Params) -> ClipByGlobalNormState:
        del params
        return ClipByGlobalNormState(grad_norm=jnp.zeros((), jnp.float32))

    def update_fn(updates, state, params=None):
        del params, state
        norm = unfused_global_norm(updates)
        # max_norm / norm is inf at norm == 0; min(1, inf) == 1 leaves zero gradients unchanged.
        scale = jnp.minimum(1.0, max_norm / norm)
        updates = jax.tree.map(lambda g: g * scale.astype(g.dtype), updates)
        return updates, ClipByGlobalNormState(grad_norm=norm)

    return optax.GradientTransformation(init_fn, update_fn)
