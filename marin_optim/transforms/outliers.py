"""Per-tensor outlier detection against a *delayed* moving average (LLM Foundry's Lion variants).

LLM Foundry's ``OutlierDetector`` compares each new observation (a tensor's gradient or moment
norm) with the mean of the observations made between ``2 * delay`` and ``delay`` steps ago;
observations are outliers when larger than ``threshold`` times that mean. Skipping the recent
past matters because outliers come in bursts. Here the history is a ring buffer of the last
``2 * delay`` norms per tensor, so the test is a masked mean on device, with no host sync.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from marin_optim.transforms._tree import increment, resolve_mask, where_mask, zeros_like

PyTree = Any


def _tensor_norm(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32))))


def delayed_mean(history: jax.Array, count: jax.Array, delay: int) -> tuple[jax.Array, jax.Array]:
    """Mean of the observations ``[count - 2 delay + 1, count - delay]`` in a ring buffer of
    length ``2 delay`` whose newest entry (index ``count``) is already written, and whether any
    such observation exists (``count >= delay``)."""
    size = history.shape[-1]
    age = jnp.mod(count - jnp.arange(size), size)  # how many steps ago each slot was written
    window = (age >= delay) & (age <= count)
    total = jnp.sum(jnp.where(window, history, 0.0))
    n = jnp.sum(window)
    return total / jnp.maximum(n, 1), n > 0


def _observe(history: jax.Array, count: jax.Array, value: jax.Array, delay: int, threshold: float):
    """Writes ``value`` as observation number ``count``; returns (history, is_outlier, delayed mean)."""
    history = history.at[jnp.mod(count, history.shape[-1])].set(value)
    mean, known = delayed_mean(history, count, delay)
    return history, known & (value > threshold * mean), mean


class OutlierClipState(NamedTuple):
    """Observation count, each tensor's norm history, and how many tensor-steps were clipped."""

    count: jax.Array
    history: optax.Updates
    clipped: jax.Array

    def log_values(self) -> dict[str, jax.Array]:
        return {"outlier_clips": self.clipped}


def clip_outlier_norms(threshold: float = 5.0, delay_interval: int = 500) -> optax.GradientTransformation:
    """Rescales a tensor's gradient to ``threshold * mva`` when its norm exceeds that.

    Update rule per tensor (LLM Foundry's ``DecoupledClipLion``), with ``mva`` the mean of that
    tensor's gradient norms from ``2 * delay_interval`` to ``delay_interval`` steps ago::

        g = g * threshold * mva / ||g||     if ||g|| > threshold * mva, else g

    The unclipped norm enters the history. (LLM Foundry calls a ``get_slow_mva`` method its
    detector does not define, so its clip raises the first time an outlier occurs; this is the
    evident intent.) The state counts the clipped tensor-steps (logged as ``outlier_clips``).
    """
    size = 2 * int(delay_interval)

    def init_fn(params: optax.Params) -> OutlierClipState:
        history = jax.tree.map(lambda _: jnp.zeros((size,), jnp.float32), params)
        return OutlierClipState(jnp.zeros([], jnp.int32), history, jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        g_leaves, treedef = jax.tree.flatten(updates)
        h_leaves = treedef.flatten_up_to(state.history)
        out, hist, clipped = [], [], state.clipped
        for g, h in zip(g_leaves, h_leaves, strict=True):
            norm = _tensor_norm(g)
            h, outlier, mean = _observe(h, state.count, norm, delay_interval, threshold)
            factor = jnp.where(outlier, threshold * mean / norm, 1.0)
            out.append((g * factor).astype(g.dtype))
            hist.append(h)
            clipped = clipped + outlier.astype(jnp.int32)
        new_state = OutlierClipState(increment(state.count), jax.tree.unflatten(treedef, hist), clipped)
        return jax.tree.unflatten(treedef, out), new_state

    return optax.GradientTransformation(init_fn, update_fn)


class AdaLRLionState(NamedTuple):
    """Lion's momentum, each tensor's moment-norm history, its recent outlier flags (a ring of
    ``timeout + 1`` steps) and its current learning-rate scale."""

    count: jax.Array
    mu: optax.Updates
    history: optax.Updates
    outliers: optax.Updates
    lr_scale: optax.Updates

    def log_values(self) -> dict[str, jax.Array]:
        scales = jax.tree.leaves(self.lr_scale)
        if not scales:
            return {}
        stacked = jnp.stack(scales)
        return {"adalr_min_lr_scale": jnp.min(stacked), "adalr_penalized": jnp.sum(stacked < 1.0)}


def scale_by_adalr_lion(
    b1: float = 0.9,
    b2: float = 0.99,
    outlier_threshold: float = 10.0,
    timeout: int = 100,
    lr_penalty: float = 0.707,
    min_scale: float = 1e-4,
    delay_interval: int = 500,
    weight_decay: float | jax.Array = 0.0,
    mask: PyTree | Callable[[PyTree], PyTree] | None = None,
) -> optax.GradientTransformation:
    """Lion whose per-tensor learning rate drops while that tensor's momentum is an outlier.

    Update rule per tensor (LLM Foundry's ``DecoupledAdaLRLion``; Lion: Chen et al., 2023,
    https://arxiv.org/abs/2302.06675)::

        m' = b2 m + (1 - b2) g;   outlier if ||m'|| > outlier_threshold * mva(||m'||)
        N  = number of outliers in the last timeout + 1 steps (this one included)
        s  = max(min_scale, lr_penalty^N)
        u  = s * (sign(b1 m + (1 - b1) g) + weight_decay * p);   m = m'

    ``mva`` is the delayed moving average of the module docstring. Scale by the learning rate
    afterwards; with ``weight_decay = wd / lr_0`` this gives LLM Foundry's decay
    ``p *= 1 - (s lr_t / lr_0) wd``, which is also slowed by ``s``. ``mask`` restricts the decay.
    """
    size = 2 * int(delay_interval)
    ring = int(timeout) + 1

    def init_fn(params: optax.Params) -> AdaLRLionState:
        per_tensor = lambda n, dtype: jax.tree.map(lambda _: jnp.zeros((n,), dtype), params)
        return AdaLRLionState(
            count=jnp.zeros([], jnp.int32),
            mu=zeros_like(params),
            history=per_tensor(size, jnp.float32),
            outliers=per_tensor(ring, jnp.bool_),
            lr_scale=jax.tree.map(lambda _: jnp.ones((), jnp.float32), params),
        )

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("scale_by_adalr_lion needs params: call update(updates, state, params)")
        g_leaves, treedef = jax.tree.flatten(updates)
        leaves = {
            name: treedef.flatten_up_to(tree)
            for name, tree in (
                ("p", params),
                ("m", state.mu),
                ("h", state.history),
                ("o", state.outliers),
            )
        }
        out, mus, hists, flags, scales = [], [], [], [], []
        for i, g in enumerate(g_leaves):
            p, m, h, o = leaves["p"][i], leaves["m"][i], leaves["h"][i], leaves["o"][i]
            new_m = b2 * m + (1.0 - b2) * g
            h, outlier, _ = _observe(h, state.count, _tensor_norm(new_m), delay_interval, outlier_threshold)
            o = o.at[jnp.mod(state.count, ring)].set(outlier)
            scale = jnp.maximum(min_scale, jnp.power(lr_penalty, jnp.sum(o).astype(jnp.float32)))
            direction = jnp.sign(b1 * m + (1.0 - b1) * g) + weight_decay * p
            out.append((scale * direction).astype(g.dtype))
            mus.append(new_m.astype(m.dtype))
            hists.append(h)
            flags.append(o)
            scales.append(scale)
        unflat = lambda xs: jax.tree.unflatten(treedef, xs)
        decayed = unflat(out)
        if mask is not None:
            # Without decay on the masked-out tensors: recompute their direction without the p term.
            plain = unflat(
                [
                    (s * jnp.sign(b1 * m + (1.0 - b1) * g)).astype(g.dtype)
                    for g, m, s in zip(g_leaves, leaves["m"], scales, strict=True)
                ]
            )
            decayed = where_mask(resolve_mask(mask, params), decayed, plain)
        new_state = AdaLRLionState(
            count=increment(state.count),
            mu=unflat(mus),
            history=unflat(hists),
            outliers=unflat(flags),
            lr_scale=unflat(scales),
        )
        return decayed, new_state

    return optax.GradientTransformation(init_fn, update_fn)
