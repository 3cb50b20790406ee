"""Sharpness-aware minimisation: replace the gradient by the gradient at an adversarial point."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from marin_optim.transforms._tree import global_norm

OBJ_FN_ARG = "obj_fn"

MISSING_OBJ_FN = (
    "SAM needs the training objective to recompute the gradient at the perturbed point: the "
    "trainer must call tx.update(grads, opt_state, params, obj_fn=obj_fn) with obj_fn(params) -> "
    "scalar loss on the current batch (differentiable with jax.grad)"
)


class SamState(NamedTuple):
    """Global norm of the gradient at the perturbed point (before its clip)."""

    perturbed_grad_norm: jax.Array

    def log_values(self) -> dict[str, jax.Array]:
        return {"sam_perturbed_grad_norm": self.perturbed_grad_norm}


def sam_gradient(
    rho: float | jax.Array = 0.05,
    *,
    adaptive: bool = False,
    eps: float = 1e-12,
    max_norm: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Returns the gradient of ``obj_fn`` at the SAM-perturbed parameters instead of ``g``.

    Update rule (Foret et al., 2021, "Sharpness-Aware Minimization for Efficiently Improving
    Generalization", https://arxiv.org/abs/2010.01412, eq. 2; adaptive variant: Kwon et al.,
    2021, "ASAM", https://arxiv.org/abs/2102.11600, with ``T_w = |w|``)::

        e  = rho * g / (||g|| + eps)                         (adaptive: rho * w^2 g / (||w g|| + eps))
        g' = grad(obj_fn)(w + e)
        g' = g' * min(1, max_norm / ||g'||)                  (if max_norm)

    Norms are global over all leaves. The parameters are never modified (functional code has
    nothing to restore): the optimizer that follows steps from ``w`` with ``g'``. Chain it before
    the base optimizer. The trainer must pass ``obj_fn`` to ``update``; without it the first
    update fails (at trace time) with a message saying so. The state logs ``||g'||``. A ``g'``
    that is not finite (the loss overflowing at ``w + e``, which the non-finite guard, seeing
    only ``g``, cannot catch) is replaced by ``g`` for that step: a plain step of the base
    optimizer, the logged norm showing the NaN/inf.
    """

    def init_fn(params: optax.Params) -> SamState:
        del params
        return SamState(jnp.zeros((), jnp.float32))

    def update_fn(updates, state, params=None, **extra_args):
        del state
        obj_fn: Callable[[Any], jax.Array] | None = extra_args.get(OBJ_FN_ARG)
        if obj_fn is None:
            raise ValueError(MISSING_OBJ_FN)
        if params is None:
            raise ValueError("SAM needs params: call tx.update(grads, opt_state, params, obj_fn=obj_fn)")
        if adaptive:
            scaled = jax.tree.map(lambda g, p: jnp.abs(p) * g, updates, params)
            factor = rho / (global_norm(scaled) + eps)
            perturbation = jax.tree.map(lambda g, p: factor * jnp.square(p) * g, updates, params)
        else:
            factor = rho / (global_norm(updates) + eps)
            perturbation = jax.tree.map(lambda g: factor * g, updates)
        perturbed = jax.tree.map(lambda p, e: p + e.astype(p.dtype), params, perturbation)
        new_grads = jax.grad(obj_fn)(perturbed)
        new_norm = global_norm(new_grads)
        # the guard upstream saw only g: a g' that is not finite falls back to g (a plain step)
        finite = jnp.isfinite(new_norm)
        new_grads = jax.tree.map(lambda ng, g: jnp.where(finite, ng.astype(g.dtype), g), new_grads, updates)
        if max_norm is not None:
            scale = jnp.minimum(1.0, max_norm / jnp.where(finite, new_norm, global_norm(updates)))
            new_grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), new_grads)
        return new_grads, SamState(new_norm)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
