"""Muon and NorMuon update directions for (batches of) weight matrices.

Both keep a momentum buffer per matrix, orthogonalise it with Newton–Schulz
(:mod:`marin_optim.transforms.newton_schulz`) and rescale by the matrix shape, so that one
learning rate suits every layer. Leaves are viewed as ``(batch, fan_out, fan_in)`` through
:class:`~marin_optim.labels.MatrixAxes`: scan-stacked layers are batches, haliax multi-axis
``In``/``Out`` are flattened, and the update keeps the leaf's layout (and its haliax axes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from marin_optim.labels import MatrixAxes, ParamLabeler, raw_array, restore_layout
from marin_optim.transforms.distributed import shard_state
from marin_optim.transforms.newton_schulz import (
    NewtonSchulzCoefficients,
    map_orthogonalized,
    map_with_axes,
    newton_schulz,
    require_matrix,
    resolve_coefficients,
)

PyTree = Any
LRScaling = Literal["spectral", "rms_norm", "none"]
LR_SCALINGS: tuple[str, ...] = ("spectral", "rms_norm", "none")


def shape_scale(view: MatrixAxes, lr_scaling: str) -> float:
    """The per-matrix multiplier that makes one learning rate fit every shape.

    - ``spectral``: ``sqrt(max(1, fan_out / fan_in))`` (Jordan et al., 2024; Levanter's and
      torch.optim.Muon's default): an orthogonal update then has an RMS-to-RMS operator norm of
      1 wherever ``fan_out >= fan_in`` (Bernstein, 2025, "Deriving Muon"), so the learning rate
      transfers across widths.
    - ``rms_norm``: ``0.2 * sqrt(max(fan_out, fan_in))`` (Liu et al., 2025, "Muon is Scalable for
      LLM Training", https://arxiv.org/abs/2502.16982): an orthogonal update then has an RMS of
      about 0.2, AdamW's typical update RMS, so AdamW's learning rate and weight decay carry
      over.
    - ``none``: 1.
    """
    fan_out, fan_in = view.fan_out_size, view.fan_in_size
    if lr_scaling == "spectral":
        return math.sqrt(max(1.0, fan_out / fan_in))
    if lr_scaling == "rms_norm":
        return 0.2 * math.sqrt(max(fan_out, fan_in))
    if lr_scaling == "none":
        return 1.0
    raise ValueError(f"lr_scaling={lr_scaling!r}: must be one of {LR_SCALINGS}")


class ScaleByMuonState(NamedTuple):
    """Momentum buffer ``M`` per matrix leaf (shaped like the parameter)."""

    momentum: optax.Updates


class ScaleByNorMuonState(NamedTuple):
    """Momentum buffer, and the per-neuron second moment ``v`` of the orthogonalised update.

    ``v`` has shape ``(num_matrices, fan_out)`` per leaf: one value per output neuron.
    """

    momentum: optax.Updates
    neuron_second_moment: optax.Updates


def _momentum_step(
    momentum: float, nesterov: bool, ema: bool = False
) -> Callable[[PyTree, PyTree], tuple[PyTree, PyTree]]:
    """``M <- mu M + G`` (or ``mu M + (1 - mu) G`` with ``ema``), kept in the buffer's dtype; the
    direction is ``mu M + G`` (Nesterov; ``mu M + (1 - mu) G`` with ``ema``) or ``M``."""
    new_weight = 1.0 - momentum if ema else 1.0

    def step(grads: PyTree, buffers: PyTree) -> tuple[PyTree, PyTree]:
        new = jax.tree.map(lambda m, g: (momentum * m + new_weight * g).astype(m.dtype), buffers, grads)
        if not nesterov:
            return new, new
        return jax.tree.map(lambda m, g: momentum * m + new_weight * g, new, grads), new

    return step


def _validate(momentum: float, ns_steps: int, lr_scaling: str, coefficients: Any) -> None:
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if not isinstance(ns_steps, int) or ns_steps < 1:
        raise ValueError(f"ns_steps must be an int >= 1, got {ns_steps!r}")
    if lr_scaling not in LR_SCALINGS:
        raise ValueError(f"lr_scaling={lr_scaling!r}: must be one of {LR_SCALINGS}")
    resolve_coefficients(coefficients)


def scale_by_muon(
    axes: Callable[[PyTree], PyTree] | None = None,
    *,
    momentum: float = 0.95,
    nesterov: bool = True,
    ema: bool = False,
    ns_coefficients: str | NewtonSchulzCoefficients | Sequence[Sequence[float]] = "simple",
    ns_steps: int = 5,
    eps: float = 1e-8,
    ns_dtype: Any = jnp.bfloat16,
    lr_scaling: LRScaling = "spectral",
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
    """Muon: momentum orthogonalised by Newton–Schulz (Jordan et al., 2024,
    https://kellerjordan.github.io/posts/muon/).

    Update rule, per matrix ``G`` (viewed as ``fan_out x fan_in``)::

        M <- mu M + G                 (ema: M <- mu M + (1 - mu) G)
        U  = mu M + G   (nesterov)   or   M          (ema: mu M + (1 - mu) G)
        O  = NS(U)      (newton_schulz: U / (||U||_F + eps), then ns_steps polynomial steps)
        u  = shape_scale(fan_out, fan_in) * O

    ``shape_scale`` is :func:`shape_scale` (``spectral``: ``sqrt(max(1, out/in))``,
    ``rms_norm``: ``0.2 sqrt(max(out, in))``). The momentum is Levanter's and OLMo-core's
    un-dampened sum; ``ema`` is the exponential average of Levanter's ``scion`` (the same
    direction after NS, which divides by the norm; only ``eps`` sees the scale). Chain with
    weight decay and ``scale_by_learning_rate``.

    ``axes(updates)`` gives each leaf's :class:`~marin_optim.labels.MatrixAxes` (default: the
    :class:`~marin_optim.labels.ParamLabeler` rules); a leaf without one is an error, so route
    vectors and embeddings elsewhere with ``optax.multi_transform``. ``ns_dtype`` is the
    Newton–Schulz compute dtype (bfloat16 by default); the update keeps the gradient's dtype.
    """
    _validate(momentum, ns_steps, lr_scaling, ns_coefficients)
    axes_fn = axes or ParamLabeler().matrix_axes
    step = _momentum_step(momentum, nesterov, ema)

    def init_fn(params):
        map_with_axes(lambda v, p: require_matrix(v, "scale_by_muon"), axes_fn(params), params)
        return ScaleByMuonState(momentum=_zeros_like(params, mu_dtype))

    def update_fn(updates, state, params=None):
        del params
        views = axes_fn(updates)
        direction, buffers = step(updates, state.momentum)
        ns = lambda m: newton_schulz(m, coefficients=ns_coefficients, steps=ns_steps, eps=eps, dtype=ns_dtype)

        def one(view: MatrixAxes, o: jax.Array, d: Any, g: Any) -> Any:
            return restore_layout(
                (shape_scale(view, lr_scaling) * o).astype(raw_array(g).dtype), view, like=d
            )

        out = map_orthogonalized(one, ns, views, direction, updates, who="scale_by_muon", padded=True)
        return out, ScaleByMuonState(momentum=buffers)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_normuon(
    axes: Callable[[PyTree], PyTree] | None = None,
    *,
    momentum: float = 0.95,
    beta2: float = 0.95,
    nesterov: bool = False,
    ns_coefficients: str | NewtonSchulzCoefficients | Sequence[Sequence[float]] = "simple",
    ns_steps: int = 5,
    eps: float = 1e-8,
    ns_dtype: Any = jnp.bfloat16,
    lr_scaling: LRScaling = "spectral",
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
    """NorMuon: Muon followed by neuron-wise second-moment normalisation (Li et al., 2025,
    "NorMuon: Making Muon more efficient and scalable", https://arxiv.org/abs/2510.05491).

    Update rule, per matrix (``m = fan_out`` rows = neurons, ``n = fan_in`` columns)::

        M <- mu M + G;   U = mu M + G (nesterov) or M;   O = NS(U)        (as in Muon)
        v <- beta2 v + (1 - beta2) mean_columns(O * O)                    (one value per row)
        N  = O / (sqrt(v) + eps)                                          (row-wise)
        rms_norm:  u = 0.2 sqrt(m n) N / (||N||_F + eps)      (the paper's Algorithm 1:
                                                              the update RMS is exactly 0.2)
        spectral:  u = sqrt(max(1, m / n)) ||O||_F N / (||N||_F + eps)
                                                             (the authors' code: NS's norm kept,
                                                              then Muon's spectral scale)
        none:      u = ||O||_F N / (||N||_F + eps)

    ``v`` starts at zero and is not bias-corrected (the Frobenius rescale removes any common
    factor). Defaults follow the paper (``beta2 = 0.95``, no Nesterov). Chain with weight decay
    and ``scale_by_learning_rate``; leaves and ``axes`` as in :func:`scale_by_muon`.
    """
    _validate(momentum, ns_steps, lr_scaling, ns_coefficients)
    if not 0.0 <= beta2 < 1.0:
        raise ValueError(f"beta2 must be in [0, 1), got {beta2!r}")
    axes_fn = axes or ParamLabeler().matrix_axes
    step = _momentum_step(momentum, nesterov)

    def init_fn(params):
        def v0(view: MatrixAxes | None, p: Any) -> jax.Array:
            view = require_matrix(view, "scale_by_normuon")
            return jnp.zeros((view.num_matrices, view.fan_out_size), jnp.float32)

        return ScaleByNorMuonState(
            momentum=_zeros_like(params, mu_dtype),
            neuron_second_moment=shard_state(map_with_axes(v0, axes_fn(params), params)),
        )

    def update_fn(updates, state, params=None):
        del params
        views = axes_fn(updates)
        direction, buffers = step(updates, state.momentum)
        ns = lambda m: newton_schulz(m, coefficients=ns_coefficients, steps=ns_steps, eps=eps, dtype=ns_dtype)

        def one(view: MatrixAxes, o: jax.Array, d: Any, g: Any, v: jax.Array) -> _Pair:
            m, n = view.fan_out_size, view.fan_in_size
            o = o.astype(jnp.float32)
            v_next = beta2 * v + (1.0 - beta2) * jnp.mean(jnp.square(o), axis=-1)

            normed = o / (jnp.sqrt(v_next)[..., None] + eps)
            normed_norm = jnp.sqrt(jnp.sum(jnp.square(normed), axis=(-2, -1), keepdims=True))
            if lr_scaling == "rms_norm":
                target = 0.2 * math.sqrt(m * n)
            else:
                target = jnp.sqrt(jnp.sum(jnp.square(o), axis=(-2, -1), keepdims=True))
                target = target * shape_scale(view, lr_scaling)
            u = (normed * (target / (normed_norm + eps))).astype(raw_array(g).dtype)
            return _Pair(restore_layout(u, view, like=g), v_next)

        pairs = map_orthogonalized(
            one,
            ns,
            views,
            direction,
            updates,
            state.neuron_second_moment,
            who="scale_by_normuon",
            padded=True,
        )
        is_pair = lambda x: isinstance(x, _Pair)
        out = jax.tree.map(lambda p: p.update if is_pair(p) else p, pairs, is_leaf=is_pair)
        v_tree = jax.tree.map(lambda p: p.second if is_pair(p) else p, pairs, is_leaf=is_pair)
        return out, ScaleByNorMuonState(momentum=buffers, neuron_second_moment=shard_state(v_tree))

    return optax.GradientTransformation(init_fn, update_fn)


class _Pair:
    """Two results for one leaf (deliberately not a pytree, so tree maps stop at it)."""

    def __init__(self, update: Any, second: Any) -> None:
        self.update, self.second = update, second


def _zeros_like(tree: PyTree, dtype: Any) -> PyTree:
    return jax.tree.map(lambda x: jnp.zeros_like(x, dtype=dtype), tree)
