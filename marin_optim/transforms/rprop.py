"""Rprop in the form of ``torch.optim.Rprop`` (optax's ``scale_by_rprop`` lags by one step)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from marin_optim.transforms._tree import full_like, zeros_like


class ScaleByRpropState(NamedTuple):
    """Per-coordinate step sizes and the previous (sign-flip-zeroed) gradient."""

    step_sizes: optax.Updates
    prev_grads: optax.Updates


def scale_by_rprop(
    initial_step: float,
    eta_minus: float = 0.5,
    eta_plus: float = 1.2,
    min_step_size: float = 1e-6,
    max_step_size: float = 50.0,
) -> optax.GradientTransformation:
    """Rprop's step ``step * sign(g)`` (positive; negate it to descend).

    Update rule (Riedmiller & Braun, 1993, "A direct adaptive method for faster backpropagation
    learning: the RPROP algorithm", https://doi.org/10.1109/ICNN.1993.298623; the variant
    without weight backtracking, as in ``torch.optim.Rprop``)::

        s    = g * g_prev
        step = clip(step * (eta_plus if s > 0, eta_minus if s < 0, 1 if s == 0), min, max)
        g    = 0 where s < 0            (no move, and the next step sees no sign change)
        u    = sign(g) * step;   g_prev = g

    with ``step`` starting at ``initial_step``. ``optax.scale_by_rprop`` (up to at least optax
    0.2.8) returns the *previous* step's ``u`` (zero at the first step; see optax pull request
    #1725) and leaves the step size unclipped when ``s == 0``.
    """

    def init_fn(params: optax.Params) -> ScaleByRpropState:
        return ScaleByRpropState(step_sizes=full_like(params, initial_step), prev_grads=zeros_like(params))

    def update_fn(updates, state, params=None):
        del params

        def one(g: jax.Array, prev: jax.Array, step: jax.Array):
            s = g * prev
            factor = jnp.where(s > 0, eta_plus, jnp.where(s < 0, eta_minus, 1.0))
            step = jnp.clip(step * factor, min_step_size, max_step_size).astype(step.dtype)
            g = jnp.where(s < 0, jnp.zeros_like(g), g)
            return jnp.sign(g) * step, g, step

        g_leaves, treedef = jax.tree.flatten(updates)
        results = [
            one(g, p, s)
            for g, p, s in zip(
                g_leaves,
                treedef.flatten_up_to(state.prev_grads),
                treedef.flatten_up_to(state.step_sizes),
                strict=True,
            )
        ]
        new_updates = jax.tree.unflatten(treedef, [r[0] for r in results])
        prev = jax.tree.unflatten(treedef, [r[1] for r in results])
        steps = jax.tree.unflatten(treedef, [r[2] for r in results])
        return new_updates, ScaleByRpropState(step_sizes=steps, prev_grads=prev)

    return optax.GradientTransformation(init_fn, update_fn)
