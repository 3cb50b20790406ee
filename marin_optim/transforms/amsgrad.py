"""AMSGrad in the form of ``torch.optim.Adam(amsgrad=True)``."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from marin_optim.transforms._tree import bias_correction, increment, zeros_like


class ScaleByAmsgradState(NamedTuple):
    """Step count, Adam's moments and the running maximum of the raw second moment."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    nu_max: optax.Updates


def scale_by_amsgrad(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, mu_dtype: Any = None
) -> optax.GradientTransformation:
    """Rescales updates by AMSGrad: Adam whose denominator never decreases.

    Update rule at step ``t = 1, 2, ...`` (Reddi, Kale & Kumar, 2018, "On the Convergence of Adam
    and Beyond", https://openreview.net/forum?id=ryQu7f-RZ, with Adam's bias corrections)::

        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2;   v_max = max(v_max, v)
        u = (m / (1 - b1^t)) / (sqrt(v_max / (1 - b2^t)) + eps)

    The maximum is taken over the *raw* second moment and bias-corrected afterwards, as in
    ``torch.optim.Adam(amsgrad=True)``. ``optax.scale_by_amsgrad`` instead takes the maximum of
    the already bias-corrected ``v_hat``, which differs in the first steps (while ``1 - b2^t``
    still grows), so the two are not interchangeable.
    """

    def init_fn(params: optax.Params) -> ScaleByAmsgradState:
        return ScaleByAmsgradState(
            count=jnp.zeros([], jnp.int32),
            mu=zeros_like(params, mu_dtype),
            nu=zeros_like(params),
            nu_max=zeros_like(params),
        )

    def update_fn(updates, state, params=None):
        del params
        count = increment(state.count)
        t = count.astype(jnp.float32)
        bc1 = bias_correction(b1, t)
        bc2 = bias_correction(b2, t)
        mu = jax.tree.map(lambda g, m: b1 * m + (1.0 - b1) * g, updates, state.mu)
        nu = jax.tree.map(lambda g, v: b2 * v + (1.0 - b2) * jnp.square(g), updates, state.nu)
        nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu)
        new_updates = jax.tree.map(
            lambda g, m, v: ((m / bc1) / (jnp.sqrt(v / bc2) + eps)).astype(g.dtype), updates, mu, nu_max
        )
        mu = jax.tree.map(lambda m, ref: m.astype(ref.dtype), mu, state.mu)
        return new_updates, ScaleByAmsgradState(count=count, mu=mu, nu=nu, nu_max=nu_max)

    return optax.GradientTransformation(init_fn, update_fn)
