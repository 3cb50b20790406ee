"""Cautious masking: keep only the coordinates of an update that agree in sign with the gradient."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import optax

CautiousRescale = Literal["count", "mean"]
CAUTIOUS_RESCALES = ("count", "mean")


def cautious(
    inner: optax.GradientTransformation,
    *,
    is_step: bool = False,
    rescale: CautiousRescale = "count",
    eps: float = 1e-8,
) -> optax.GradientTransformationExtraArgs:
    """Runs ``inner`` and zeroes the coordinates of its output that disagree with the gradient.

    Update rule (Liang et al., 2024, "Cautious Optimizers: Improving Training with One Line of
    Code", https://arxiv.org/abs/2411.16085, Algorithm 1), per parameter tensor of ``n``
    coordinates, with ``u = inner(g)``::

        phi = 1[u * g > 0]
        u   = u * phi * n / (sum(phi) + 1)          (rescale="count": the paper's code)
        u   = u * phi / (mean(phi) + eps)           (rescale="mean": Levanter's ``cautious``)

    The rescaling keeps the update's average magnitude when coordinates are dropped.
    ``is_step=True`` says that ``inner`` returns a descent *step* (already multiplied by
    ``-lr``), so agreement means ``u * g < 0``. The inner state is kept as is.
    """
    if rescale not in CAUTIOUS_RESCALES:
        raise ValueError(f"rescale={rescale!r}: must be one of {CAUTIOUS_RESCALES}")
    inner = optax.with_extra_args_support(inner)
    sign = -1.0 if is_step else 1.0

    def mask(u: jax.Array, g: jax.Array) -> jax.Array:
        phi = (sign * u * g > 0).astype(jnp.float32)
        if rescale == "count":
            scale = phi.size / (jnp.sum(phi) + 1.0)
        else:
            scale = 1.0 / (jnp.mean(phi) + eps)
        return (u * phi * scale).astype(u.dtype)

    def update_fn(updates, state, params=None, **extra_args):
        new_updates, new_state = inner.update(updates, state, params, **extra_args)
        return jax.tree.map(mask, new_updates, updates), new_state

    return optax.GradientTransformationExtraArgs(inner.init, update_fn)
