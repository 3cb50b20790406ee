"""Adam's update direction with a storage dtype per moment, written to run at memory speed."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

_INT32_MAX = jnp.iinfo(jnp.int32).max


def _compute_dtype(dtype: Any) -> jnp.dtype:
    """Arithmetic happens in at least float32 whatever the storage dtype (float64 stays)."""
    return jnp.promote_types(dtype, jnp.float32)


def _zeros(params: optax.Params, dtype: Any) -> optax.Params:
    return jax.tree.map(lambda p: jnp.zeros(p.shape, dtype or p.dtype), params)


def scale_by_adam(
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-8,
    eps_root: float | jax.Array = 0.0,
    *,
    nesterov: bool = False,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> optax.GradientTransformation:
    """Rescales updates by Adam's bias-corrected moments (Kingma & Ba, 2015).

    Update rule (https://arxiv.org/abs/1412.6980, Algorithm 1), at step ``t = 1, 2, ...``::

        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
        u = m_hat / (sqrt(v_hat + eps_root) + eps),   m_hat = m / (1 - b1^t),  v_hat = v / (1 - b2^t)

    With ``nesterov`` (Dozat, 2016, "Incorporating Nesterov Momentum into Adam",
    https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ), ``m_hat`` becomes
    ``b1 m / (1 - b1^(t+1)) + (1 - b1) g / (1 - b1^t)``, as in ``optax.scale_by_adam``.

    The same rule and state (``optax.ScaleByAdamState``) as ``optax.scale_by_adam``, with two
    differences that matter for speed and memory:

    - ``mu_dtype`` and ``nu_dtype`` choose each moment's storage dtype (optax has only
      ``mu_dtype``); ``None`` stores it in the parameter's dtype. Arithmetic is done in at least
      float32 and the update is computed from the moments *as stored*. optax computes it from
      the float32 moments before the cast, which XLA:CPU recomputes from the old moments inside
      the parameter update while the new ones overwrite them, so it copies every moment buffer
      first (``optax.adamw(mu_dtype=jnp.bfloat16)`` does). A bfloat16 ``v`` (8-bit mantissa)
      cannot move by less than ~0.4% per step, so with ``b2`` above ~0.99 it stops decaying
      when gradients shrink: keep ``nu_dtype`` float32 unless ``b2`` is small.
    - The bias corrections are applied as scalar reciprocals, one division per element (as in
      ``torch.optim``'s fused AdamW) instead of three.
    """
    mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)
    nu_dtype = None if nu_dtype is None else jnp.dtype(nu_dtype)

    def init_fn(params: optax.Params) -> optax.ScaleByAdamState:
        return optax.ScaleByAdamState(
            count=jnp.zeros([], jnp.int32), mu=_zeros(params, mu_dtype), nu=_zeros(params, nu_dtype)
        )

    def update_fn(
        updates: optax.Updates,
        state: optax.ScaleByAdamState,
        params: optax.Params | None = None,
    ) -> tuple[optax.Updates, optax.ScaleByAdamState]:
        del params

        def first(g: jax.Array, m: jax.Array) -> jax.Array:
            c = _compute_dtype(m.dtype)
            return (b1 * m.astype(c) + (1 - b1) * g.astype(c)).astype(m.dtype)

        def second(g: jax.Array, v: jax.Array) -> jax.Array:
            c = _compute_dtype(v.dtype)
            g = g.astype(c)
            return (b2 * v.astype(c) + (1 - b2) * (g * g)).astype(v.dtype)

        count = jnp.where(state.count < _INT32_MAX, state.count + 1, _INT32_MAX)
        new_state = optax.ScaleByAdamState(
            count=count,
            mu=jax.tree.map(first, updates, state.mu),
            nu=jax.tree.map(second, updates, state.nu),
        )

        t = new_state.count.astype(jnp.float32)
        m_scale = 1.0 / (1.0 - b1**t)
        if nesterov:
            m_scale_next = b1 / (1.0 - b1 ** (t + 1.0))
            g_scale = (1.0 - b1) / (1.0 - b1**t)
        v_scale = 1.0 / (1.0 - b2**t)
        exact_root = not (isinstance(eps_root, (int, float)) and eps_root == 0)
        v_root_scale = jax.lax.rsqrt(1.0 - b2**t)

        def direction(g: jax.Array, m: jax.Array, v: jax.Array) -> jax.Array:
            c = jnp.promote_types(_compute_dtype(g.dtype), jnp.promote_types(m.dtype, v.dtype))
            m, v, g32 = m.astype(c), v.astype(c), g.astype(c)
            if nesterov:
                m_hat = m * m_scale_next.astype(c) + g32 * g_scale.astype(c)
            else:
                m_hat = m * m_scale.astype(c)
            if exact_root:
                denom = jnp.sqrt(v * v_scale.astype(c) + eps_root) + eps
            else:
                denom = jnp.sqrt(v) * v_root_scale.astype(c) + eps
            return (m_hat / denom).astype(g.dtype)

        out = jax.tree.map(direction, updates, new_state.mu, new_state.nu)
        return out, new_state

    return optax.GradientTransformation(init_fn, update_fn)
