"""Updates that change nothing, optionally while another optimizer keeps its statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def discard_updates(
    inner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Returns all-zero updates; ``inner`` (if given) still runs and its state advances.

    Update rule: ``u = 0`` (LLM Foundry's ``NoOp`` optimizer). With ``inner``, ``inner``'s
    update is computed and thrown away, so its statistics (moments, counts, logged norms)
    evolve exactly as if it were training, while the parameters stay put. Without ``inner`` it
    is ``optax.set_to_zero()`` with extra-argument support.
    """
    inner = optax.with_extra_args_support(inner if inner is not None else optax.identity())

    def update_fn(updates, state, params=None, **extra_args):
        new_updates, new_state = inner.update(updates, state, params, **extra_args)
        return jax.tree.map(jnp.zeros_like, new_updates), new_state

    return optax.GradientTransformationExtraArgs(inner.init, update_fn)
