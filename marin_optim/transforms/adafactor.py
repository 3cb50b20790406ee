"""Adafactor in the form of ``torch.optim.Adafactor`` (relative step, no momentum)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from marin_optim.transforms._tree import increment


class ScaleByAdafactorState(NamedTuple):
    """Per leaf (in flattening order): row and column statistics of factored leaves (ndim >= 2),
    the full second moment of the others; unused slots hold empty arrays."""

    count: jax.Array
    row: tuple[jax.Array, ...]
    col: tuple[jax.Array, ...]
    full: tuple[jax.Array, ...]


def _rms(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))


def scale_by_adafactor(
    learning_rate: float | jax.Array,
    beta2_decay: float = -0.8,
    eps1: float | None = None,
    eps2: float = 1e-3,
    d: float = 1.0,
    relative_step: bool = True,
) -> optax.GradientTransformation:
    """Adafactor's scaled update ``alpha_t * U_hat`` (positive; the caller negates it).

    Update rule at step ``t = 1, 2, ...`` (Shazeer & Stern, 2018, "Adafactor: Adaptive Learning
    Rates with Sublinear Memory Cost", https://arxiv.org/abs/1804.04235, Algorithms 4-5, in the
    form of ``torch.optim.Adafactor``)::

        beta2_t = 1 - t^beta2_decay;   rho_t = min(lr, 1 / sqrt(t))   (lr if not relative_step)
        alpha_t = max(eps2, RMS(p)) * rho_t
        ndim >= 2 (factored over the last two axes; leading axes are batch axes):
            R = beta2_t R + (1 - beta2_t) mean(g^2, axis=-1)
            C = beta2_t C + (1 - beta2_t) mean(g^2, axis=-2)
            V = R C / max(mean(R, axis=-2), eps1)          (outer product)
        otherwise:
            V = beta2_t V + (1 - beta2_t) g^2
        U = g / sqrt(max(V, eps1^2));   U_hat = U / max(1, RMS(U) / d)
        update = alpha_t U_hat

    ``eps1=None`` is the machine epsilon of the parameter's dtype (torch's default).
    ``learning_rate`` is this step's value of the schedule, so the schedule caps ``rho_t``.
    Weight decay is not part of this transform (torch applies ``p *= 1 - lr * wd``, decoupled).
    Needs ``params`` (for ``RMS(p)``).
    """

    def init_fn(params: optax.Params) -> ScaleByAdafactorState:
        leaves = jax.tree.leaves(params)
        empty = lambda: jnp.zeros((0,), jnp.float32)
        row, col, full = [], [], []
        for p in leaves:
            shape = jnp.shape(p)
            if len(shape) >= 2:
                row.append(jnp.zeros((*shape[:-1], 1), jnp.float32))
                col.append(jnp.zeros((*shape[:-2], 1, shape[-1]), jnp.float32))
                full.append(empty())
            else:
                row.append(empty())
                col.append(empty())
                full.append(jnp.zeros(shape, jnp.float32))
        return ScaleByAdafactorState(jnp.zeros([], jnp.int32), tuple(row), tuple(col), tuple(full))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("scale_by_adafactor needs params: call update(updates, state, params)")
        count = increment(state.count)
        t = count.astype(jnp.float32)
        beta_t = jnp.power(t, beta2_decay)  # = 1 - beta2_t, the weight of the new observation
        lr = jnp.asarray(learning_rate, jnp.float32)
        rho = jnp.minimum(lr, jax.lax.rsqrt(t)) if relative_step else lr

        g_leaves, treedef = jax.tree.flatten(updates)
        p_leaves = treedef.flatten_up_to(params)
        out, rows, cols, fulls = [], [], [], []
        for g, p, r, c, v in zip(g_leaves, p_leaves, state.row, state.col, state.full, strict=True):
            e1 = jnp.finfo(jnp.result_type(p)).eps if eps1 is None else eps1
            g32 = g.astype(jnp.float32)
            alpha = jnp.maximum(eps2, _rms(p)) * rho
            if g.ndim >= 2:
                sq = jnp.square(g32)
                r = r + beta_t * (jnp.mean(sq, axis=-1, keepdims=True) - r)
                c = c + beta_t * (jnp.mean(sq, axis=-2, keepdims=True) - c)
                var = (r * c) / jnp.maximum(jnp.mean(r, axis=-2, keepdims=True), e1)
            else:
                v = v + beta_t * (jnp.square(g32) - v)
                var = v
            u = g32 * jax.lax.rsqrt(jnp.maximum(var, e1 * e1))
            u = u / jnp.maximum(1.0, _rms(u) / d)
            out.append((alpha * u).astype(g.dtype))
            rows.append(r)
            cols.append(c)
            fulls.append(v)
        new_state = ScaleByAdafactorState(count, tuple(rows), tuple(cols), tuple(fulls))
        return jax.tree.unflatten(treedef, out), new_state

    return optax.GradientTransformation(init_fn, update_fn)
