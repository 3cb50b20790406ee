"""NAMO and NAMO-D: orthogonalised momentum with Adam-like adaptive step sizes per matrix or column.

Zhang et al., 2026, "NAMO: Norm-Based Adaptive Moment Estimation with Orthogonalized Momentum"
(https://arxiv.org/abs/2602.17080; the authors' code: https://github.com/minxin-zhg/namo).
Muon's direction (:func:`~marin_optim.transforms.newton_schulz.newton_schulz` of the momentum)
keeps no scale; NAMO restores one from Adam's ratio ``|m| / sqrt(v)``, taken on norms: the
momentum's norm over the root of an average of squared gradient norms, per matrix (NAMO) or per
column (NAMO-D, clamped to the row's mean). The same ratio scales the decoupled weight decay.

Both return the parameter change itself (the learning rate and the weight decay are inside the
rule, and both are capped), so nothing follows them in a chain. Leaves are viewed as
``(batch, fan_out, fan_in)`` through :class:`~marin_optim.labels.MatrixAxes`, as in
:func:`~marin_optim.transforms.muon.scale_by_muon`; a NAMO-D column is one input feature.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from marin_optim.labels import MatrixAxes, ParamLabeler, raw_array, restore_layout
from marin_optim.transforms.muon import _momentum_step, _Pair, _validate, _zeros_like
from marin_optim.transforms.newton_schulz import (
    NewtonSchulzCoefficients,
    map_orthogonalized,
    map_with_axes,
    newton_schulz,
    require_matrix,
)

PyTree = Any
BIAS_CORRECTION_EPS = 1e-12
"""Added to ``1 - momentum^t`` in the bias correction (the authors' code)."""


class ScaleByNamoState(NamedTuple):
    """Step count, momentum buffer per matrix leaf, and the second moment ``v`` of the gradient
    norms: shape ``(num_matrices,)`` per leaf (NAMO) or ``(num_matrices, fan_in)`` (NAMO-D)."""

    count: jax.Array
    momentum: optax.Updates
    second_moment: optax.Updates


def _clamp_to_mean(scale: jax.Array, clamp_c: float) -> jax.Array:
    """Clamps each matrix's column scales into ``[c mean, mean / c]`` (``0 < c <= 1``; else as is).

    A non-finite or non-positive mean leaves the scales unclamped above and at >= 0 below.
    """
    if not 0.0 < clamp_c <= 1.0:
        return scale
    mean = jnp.nanmean(scale, axis=-1, keepdims=True)
    ok = jnp.isfinite(mean) & (mean > 0)
    return jnp.clip(scale, jnp.where(ok, clamp_c * mean, 0.0), jnp.where(ok, mean / clamp_c, jnp.inf))


def _namo(
    axes: Callable[[PyTree], PyTree] | None,
    *,
    who: str,
    columns: bool,
    learning_rate: float | jax.Array,
    weight_decay: float | jax.Array,
    weight_decay_mask: PyTree | Callable[[PyTree], PyTree] | None,
    momentum: float,
    mu2: float,
    nesterov: bool,
    adamnorm_eps: float,
    scale_coeff: float,
    clamp_c: float,
    ns_coefficients: Any,
    ns_steps: int,
    eps: float,
    ns_dtype: Any,
) -> optax.GradientTransformation:
    _validate(momentum, ns_steps, "spectral", ns_coefficients)
    if not 0.0 <= mu2 < 1.0:
        raise ValueError(f"mu2 must be in [0, 1), got {mu2!r}")
    axes_fn = axes or ParamLabeler().matrix_axes
    step = _momentum_step(momentum, nesterov, ema=True)
    # Per matrix: a norm over both matrix axes; per column: over the fan-out (row) axis only.
    reduce_axes = (-2,) if columns else (-2, -1)

    def init_fn(params):
        def v0(view: MatrixAxes | None, p: Any) -> jax.Array:
            view = require_matrix(view, who)
            shape = (view.num_matrices, view.fan_in_size) if columns else (view.num_matrices,)
            return jnp.zeros(shape, jnp.float32)

        return ScaleByNamoState(
            count=jnp.zeros([], jnp.int32),
            momentum=_zeros_like(params, None),
            second_moment=map_with_axes(v0, axes_fn(params), params),
        )

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(f"{who} needs params (its weight decay is part of the update)")
        views = axes_fn(updates)
        direction, buffers = step(updates, state.momentum)
        count = optax.safe_increment(state.count)
        base_lr = learning_rate * jnp.sqrt(1.0 - mu2**count) / (1.0 - momentum**count + BIAS_CORRECTION_EPS)
        if weight_decay_mask is None:
            decays = params  # every leaf decays (any non-None leaf reads as True below)
        else:
            decays = weight_decay_mask(params) if callable(weight_decay_mask) else weight_decay_mask

        def one(view: MatrixAxes, o: jax.Array, d: Any, g: Any, p: Any, v: jax.Array, decay: Any) -> _Pair:
            as_matrices = lambda x: view.to_matrices(raw_array(x)).astype(jnp.float32)
            m, grad, w = as_matrices(d), as_matrices(g), as_matrices(p)
            v_next = mu2 * v + (1.0 - mu2) * jnp.sum(jnp.square(grad), axis=reduce_axes)
            scale = jnp.sqrt(jnp.sum(jnp.square(m), axis=reduce_axes)) / (jnp.sqrt(v_next) + adamnorm_eps)
            if columns:
                scale = _clamp_to_mean(scale, clamp_c)
            adaptive_lr = jnp.minimum(base_lr * scale, 1.0)
            shape_lr = scale_coeff * math.sqrt(max(view.fan_out_size, view.fan_in_size))
            step_lr = jnp.minimum(base_lr * scale * shape_lr if columns else adaptive_lr * shape_lr, 1.0)
            wd = weight_decay if weight_decay_mask is None else jnp.where(decay, weight_decay, 0.0)
            if columns:  # W <- W max(1 - wd alpha, 0): the decay never flips a weight's sign
                decayed = w * (jnp.maximum(1.0 - wd * adaptive_lr, 0.0)[..., None, :] - 1.0)
                per = lambda x: x[..., None, :]
            else:
                decayed = -(wd * adaptive_lr)[..., None, None] * w
                per = lambda x: x[..., None, None]
            u = (decayed - per(step_lr) * o).astype(raw_array(p).dtype)
            return _Pair(restore_layout(u, view, like=g), v_next)

        ns = lambda m: newton_schulz(m, coefficients=ns_coefficients, steps=ns_steps, eps=eps, dtype=ns_dtype)
        pairs = map_orthogonalized(
            one,
            ns,
            views,
            direction,
            updates,
            params,
            state.second_moment,
            decays,
            who=who,
            dtype=jnp.float32,
            padded=True,
        )
        is_pair = lambda x: isinstance(x, _Pair)
        out = jax.tree.map(lambda q: q.update if is_pair(q) else q, pairs, is_leaf=is_pair)
        v_tree = jax.tree.map(lambda q: q.second if is_pair(q) else q, pairs, is_leaf=is_pair)
        return out, ScaleByNamoState(count=count, momentum=buffers, second_moment=v_tree)

    return optax.GradientTransformation(init_fn, update_fn)


def namo(
    axes: Callable[[PyTree], PyTree] | None = None,
    *,
    learning_rate: float | jax.Array,
    weight_decay: float | jax.Array = 0.0,
    weight_decay_mask: PyTree | Callable[[PyTree], PyTree] | None = None,
    momentum: float = 0.95,
    mu2: float = 0.99,
    nesterov: bool = True,
    adamnorm_eps: float = 1e-8,
    scale_coeff: float = 0.2,
    ns_coefficients: str | NewtonSchulzCoefficients | Sequence[Sequence[float]] = "simple",
    ns_steps: int = 5,
    eps: float = 1e-8,
    ns_dtype: Any = jnp.float32,
) -> optax.GradientTransformation:
    """NAMO (Zhang et al., 2026, https://arxiv.org/abs/2602.17080, Algorithm 1): the parameter
    change of every matrix ``W`` (``m x n``: fan-out x fan-in) from its gradient ``G``.

    Update rule at step ``t`` (from 1), with ``mu = momentum``::

        M <- mu M + (1 - mu) G;   U = mu M + (1 - mu) G (nesterov) or M
        v <- mu2 v + (1 - mu2) ||G||_F^2
        alpha = min(lr sqrt(1 - mu2^t) / (1 - mu^t + 1e-12) * ||U||_F / (sqrt(v) + adamnorm_eps), 1)
        W <- W - wd alpha W - min(alpha scale_coeff sqrt(max(m, n)), 1) NS(U)

    ``NS`` is :func:`~marin_optim.transforms.newton_schulz.newton_schulz` (``ns_coefficients``,
    ``ns_steps``, ``eps``, ``ns_dtype``). ``alpha`` is Adam's bias-corrected ``|m| / sqrt(v)`` on
    norms, times the learning rate; ``scale_coeff sqrt(max(m, n))`` gives an orthogonal update an
    RMS like AdamW's (Kimi's rule). The result is the change itself: it includes ``-lr`` and the
    (adaptive) weight decay, so chain nothing after it. ``weight_decay_mask`` (a tree of bools
    or a ``params -> tree`` callable, as in ``optax.add_decayed_weights``) limits the decay;
    ``learning_rate`` and ``weight_decay`` may be traced (injected) values. ``axes`` as in
    :func:`~marin_optim.transforms.muon.scale_by_muon`.
    """
    return _namo(
        axes,
        who="namo",
        columns=False,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        momentum=momentum,
        mu2=mu2,
        nesterov=nesterov,
        adamnorm_eps=adamnorm_eps,
        scale_coeff=scale_coeff,
        clamp_c=0.0,
        ns_coefficients=ns_coefficients,
        ns_steps=ns_steps,
        eps=eps,
        ns_dtype=ns_dtype,
    )


def namo_d(
    axes: Callable[[PyTree], PyTree] | None = None,
    *,
    learning_rate: float | jax.Array,
    weight_decay: float | jax.Array = 0.0,
    weight_decay_mask: PyTree | Callable[[PyTree], PyTree] | None = None,
    momentum: float = 0.95,
    mu2: float = 0.99,
    nesterov: bool = True,
    adamnorm_eps: float = 1e-8,
    scale_coeff: float = 0.2,
    clamp_c: float = 0.75,
    ns_coefficients: str | NewtonSchulzCoefficients | Sequence[Sequence[float]] = "simple",
    ns_steps: int = 5,
    eps: float = 1e-8,
    ns_dtype: Any = jnp.float32,
) -> optax.GradientTransformation:
    """NAMO-D (Zhang et al., 2026, https://arxiv.org/abs/2602.17080, Algorithm 2): NAMO with one
    adaptive rate per column ``j`` (input feature) of every matrix, clamped around their mean.

    Update rule at step ``t``, with ``M``, ``U`` and ``NS`` as in :func:`namo` and ``X_j`` the
    ``j``-th column::

        v_j <- mu2 v_j + (1 - mu2) ||G_j||^2
        s_j = clip(||U_j|| / (sqrt(v_j) + adamnorm_eps), c mean(s), mean(s) / c)   (0 < c <= 1)
        beta = lr sqrt(1 - mu2^t) / (1 - mu^t + 1e-12)
        W_j <- W_j max(1 - wd min(beta s_j, 1), 0) - min(beta s_j scale_coeff sqrt(max(m, n)), 1) NS(U)_j

    ``c = clamp_c`` outside ``(0, 1]`` turns the clamp off (``c = 1`` gives every column the
    matrix mean). The result is the parameter change itself, as in :func:`namo`.
    """
    return _namo(
        axes,
        who="namo_d",
        columns=True,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        momentum=momentum,
        mu2=mu2,
        nesterov=nesterov,
        adamnorm_eps=adamnorm_eps,
        scale_coeff=scale_coeff,
        clamp_c=clamp_c,
        ns_coefficients=ns_coefficients,
        ns_steps=ns_steps,
        eps=eps,
        ns_dtype=ns_dtype,
    )
