"""Clipping: the global gradient norm (multiplicative, exposing the norm for logging), and the
update's per-block RMS or its norm against the recent history (Levanter's ``adam`` options)."""

from __future__ import annotations

from typing import Any, NamedTuple

import haliax
import jax
import jax.numpy as jnp
import optax
from haliax.tree_util import scan_aware_tree_map

from marin_optim.transforms import _tree
from marin_optim.transforms.skipping import materialize_on_cpu


class ClipByGlobalNormState(NamedTuple):
    """Holds the global gradient norm seen by the latest update (before clipping); under the
    non-finite guard, by the latest applied one (a skipped step's state is reverted whole)."""

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


def clip_by_block_rms(threshold: float) -> optax.GradientTransformation:
    """Rescales every block of the updates so that its root mean square is at most ``threshold``.

    Update rule, per block ``u`` of ``n`` values::

        u <- u / max(1, RMS(u) / threshold),   RMS(u) = sqrt(sum(u^2) / n)

    the update clipping of Adafactor (Shazeer & Stern, 2018, https://arxiv.org/abs/1804.04235,
    section 6) and StableAdamW (Wortsman et al., 2023, https://arxiv.org/abs/2304.13013), applied
    to the optimizer's update rather than to the gradient. A block is a leaf, except inside a
    haliax ``Stacked`` / ``ArrayStacked`` module (scan-stacked layers), where each layer's slice
    is its own block (``haliax.tree_util.scan_aware_tree_map``), as in Levanter's
    ``scan_aware_clip_by_block_rms``; ``optax.clip_by_block_rms`` is the same rule with whole
    leaves as blocks. The RMS is accumulated in float32.

    >>> import jax.numpy as jnp
    >>> tx = clip_by_block_rms(1.0)
    >>> u = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.5, -0.5])}
    >>> clipped, _ = tx.update(u, tx.init(u))
    >>> [round(float(x), 4) for x in clipped["a"]], clipped["b"].tolist()
    ([0.8485, 1.1314], [0.5, -0.5])
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold!r}")

    def clip_block(u: Any) -> Any:
        x = u.array if haliax.is_named_array(u) else u
        rms = jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))
        return u / jnp.maximum(1.0, rms / threshold).astype(x.dtype)

    def update_fn(updates, state, params=None):
        del params
        return scan_aware_tree_map(clip_block, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


class ClipByHistoricalNormState(NamedTuple):
    """Ring buffer of the latest update norms (before clipping), how many were seen, and the
    latest step's norm and clip factor (1 when not clipped)."""

    norms: jax.Array  # [window] float32
    count: jax.Array  # int32: updates seen (saturating)
    update_norm: jax.Array  # float32
    clip_scale: jax.Array  # float32

    def log_values(self) -> dict[str, jax.Array]:
        return {"update_norm": self.update_norm, "update_clip_scale": self.clip_scale}


def clip_by_historical_norm(window: int = 128, sigma: float = 3.0) -> optax.GradientTransformation:
    """Clips the update's global norm to ``sigma`` standard deviations above its recent mean.

    Update rule, with ``norms`` the global norms of the last (up to) ``window`` updates before
    clipping, ``mean`` and ``std`` their mean and population standard deviation::

        limit = mean + sigma * max(std, 1e-6)
        u <- u * limit / max(||u||, 1e-6)   if ||u|| > limit and len(norms) >= max(2, window // 2)

    then ``||u||`` (unclipped, so that clipping cannot shrink the history) enters the window.
    Until half the window is known nothing is clipped. A milder form of skipping spikes
    (OLMo-core's ``SkipStepOptimizer``; Chowdhery et al., 2022, https://arxiv.org/abs/2204.02311,
    section 5.1): a spike is scaled down to the usual size instead of dropped. Levanter's
    ``clip_update_by_historical_norm``, whose rule and defaults these are.

    >>> import jax.numpy as jnp
    >>> tx = clip_by_historical_norm(window=4, sigma=1.0)
    >>> state = tx.init(None)
    >>> for norm in (1.0, 3.0, 10.0):
    ...     u, state = tx.update({"w": jnp.array([norm])}, state)
    >>> float(u["w"][0]), float(state.update_norm)  # limit = 2 + 1 * 1 after two updates
    (3.0, 10.0)
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise ValueError(f"window must be an int >= 2, got {window!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    min_known = max(2, window // 2)

    def init_fn(params: optax.Params) -> ClipByHistoricalNormState:
        del params
        zero = jnp.zeros((), jnp.float32)
        return ClipByHistoricalNormState(
            jnp.zeros((window,), jnp.float32), jnp.zeros((), jnp.int32), zero, jnp.ones((), jnp.float32)
        )

    def update_fn(updates, state, params=None):
        del params
        norm = _tree.global_norm(updates)
        known = jnp.minimum(state.count, window)
        valid = jnp.arange(window) < known
        n = jnp.maximum(known, 1).astype(jnp.float32)
        mean = jnp.sum(jnp.where(valid, state.norms, 0.0)) / n
        std = jnp.sqrt(jnp.sum(jnp.where(valid, jnp.square(state.norms - mean), 0.0)) / n)
        limit = mean + sigma * jnp.maximum(std, 1e-6)
        clip = (known >= min_known) & (norm > limit)
        scale = jnp.where(clip, limit / jnp.maximum(norm, 1e-6), 1.0)
        updates = jax.tree.map(lambda u: u * scale.astype(u.dtype), updates)
        norms = state.norms.at[state.count % window].set(norm)
        return updates, ClipByHistoricalNormState(norms, _tree.increment(state.count), norm, scale)

    return optax.GradientTransformation(init_fn, update_fn)
