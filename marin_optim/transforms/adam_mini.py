"""Adam-mini: Adam with one second moment per block of parameters instead of one per parameter.

Zhang et al., 2024, "Adam-mini: Use Fewer Learning Rates To Gain More",
https://arxiv.org/abs/2406.16793. The blocks follow the paper's partition of a Transformer
(its Section 2.3 and the authors' code, v1.1), which Levanter's ``mini`` implements too: query
and key projections by attention head, value, output and MLP projections by output neuron, the
embedding and the output head by token; everything else (norm gains, biases) keeps one second
moment per element (Adam), as in Levanter. :func:`adam_mini_blocks` resolves the partition from
:class:`~marin_optim.labels.ParamLabeler`'s labels, so haliax multi-axis ``Linear`` weights and
scan-stacked layers are handled by their named axes, whatever the layout.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import haliax
import jax
import jax.numpy as jnp
import optax

from marin_optim.labels import ParamLabel, ParamLabeler, raw_array

PyTree = Any

QUERY_NAMES: tuple[str, ...] = ("q_proj", "wq", "query", "query_proj", "q")
"""Path components (fnmatch patterns) that name an attention query projection."""
KEY_NAMES: tuple[str, ...] = ("k_proj", "wk", "key", "key_proj", "k")
"""Path components (fnmatch patterns) that name an attention key projection."""


@dataclass(frozen=True)
class MiniBlocks:
    """How one leaf is cut into blocks: ``reduce`` are the axes a block spans (the second moment
    is the mean of ``g^2`` over them); the other axes index the blocks. ``reduce == ()`` is
    plain Adam (every element its own block)."""

    shape: tuple[int, ...]
    reduce: tuple[int, ...]
    rule: str

    @property
    def block_shape(self) -> tuple[int, ...]:
        """Shape of the second moment: ``shape`` without the ``reduce`` axes."""
        return tuple(s for i, s in enumerate(self.shape) if i not in self.reduce)

    @property
    def num_blocks(self) -> int:
        return math.prod(self.block_shape)

    @property
    def block_size(self) -> int:
        return math.prod(self.shape[i] for i in self.reduce)

    def __str__(self) -> str:
        if not self.reduce:
            return f"{self.num_blocks} x 1 ({self.rule})"
        return f"{self.num_blocks} x {self.block_size} ({self.rule})"


def _is_blocks(x: Any) -> bool:
    return isinstance(x, MiniBlocks) or x is None or isinstance(x, optax.MaskedNode)


def _named_like(components: Sequence[str], patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(c, p) for c in components for p in patterns)


def blocks_of(
    label: ParamLabel,
    *,
    query_names: Sequence[str] = QUERY_NAMES,
    key_names: Sequence[str] = KEY_NAMES,
) -> MiniBlocks:
    """The Adam-mini blocks of one labelled leaf (rules in :func:`adam_mini_blocks`)."""
    shape = label.shape
    if label.kind == "vector" or len(shape) < 2:
        return MiniBlocks(shape, (), "elementwise (Adam)")
    if label.kind == "embedding":
        return MiniBlocks(shape, tuple(range(1, len(shape))), "per token")
    axes = label.axes
    if axes is None:  # a head without a matrix view (cannot happen with the default rules)
        return MiniBlocks(shape, (), "elementwise (Adam)")
    if label.kind == "head":
        return MiniBlocks(shape, axes.fan_in, "per token")
    module = tuple(label.path.split(".")[:-1])
    if len(axes.fan_out) >= 2 and (_named_like(module, query_names) or _named_like(module, key_names)):
        return MiniBlocks(shape, tuple(sorted(axes.fan_in + axes.fan_out[-1:])), "per head")
    return MiniBlocks(shape, tuple(sorted(axes.fan_in)), "per output neuron")


def adam_mini_blocks(
    labeler: ParamLabeler | None = None,
    *,
    query_names: Sequence[str] = QUERY_NAMES,
    key_names: Sequence[str] = KEY_NAMES,
) -> Callable[[PyTree], PyTree]:
    """``tree -> tree of MiniBlocks``: the paper's partition, from ``labeler``'s labels.

    Per leaf kind (:mod:`marin_optim.labels`):

    - ``matrix`` named like a query or key projection (a path component in ``query_names`` /
      ``key_names``: ``q_proj``, ``k_proj``, ``wq``, ...) whose fan-out has two or more axes:
      one block per attention head, i.e. the last fan-out axis (the per-head features) and the
      fan-in are averaged (haliax ``Out=(kv_heads, q_per_kv, head_size)`` gives one block per
      query head, ``(kv_heads, head_size)`` one per key head);
    - any other ``matrix`` (value, attention output, MLP, and a query/key projection whose heads
      are not separate axes, e.g. a plain 2-D array): one block per output neuron (the fan-in is
      averaged);
    - ``head`` (the LM head): one block per output, i.e. per token;
    - ``embedding``: one block per row (token), the other axes averaged;
    - ``vector`` (norm gains, biases, scalars): one block per element (Adam).

    Scan-stacked layers (and other batch axes of a matrix) are never averaged over. Plain
    arrays follow the labeler's rules (a 2-D or larger array is a matrix in the ``x @ W``
    layout, so its blocks are its columns; ``param_labels`` overrides give other layouts).
    """
    labeler = labeler or ParamLabeler()

    def fn(tree: PyTree) -> PyTree:
        labels = labeler.labels(tree, strict=False)
        return jax.tree.map(
            lambda lab: (
                blocks_of(lab, query_names=query_names, key_names=key_names)
                if isinstance(lab, ParamLabel)
                else lab
            ),
            labels,
            is_leaf=lambda x: isinstance(x, ParamLabel) or x is None or isinstance(x, optax.MaskedNode),
        )

    return fn


class ScaleByAdamMiniState(NamedTuple):
    """First moment ``mu`` (shaped like the parameters) and second moment ``nu`` (one value per
    block: shaped like :attr:`MiniBlocks.block_shape`, a haliax array over the kept axes where
    the parameter is one)."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def _map_blocks(fn: Callable[..., Any], blocks: PyTree, *trees: PyTree) -> PyTree:
    """``jax.tree.map`` over parameter leaves (haliax arrays whole), the blocks tree leading;
    ``None`` and ``optax.MaskedNode`` positions of the first of ``trees`` pass through."""

    def one(b: Any, first: Any, *rest: Any) -> Any:
        if first is None or isinstance(first, optax.MaskedNode):
            return first
        return fn(b, first, *rest)

    return jax.tree.map(one, blocks, *trees, is_leaf=_is_blocks)


def _like(x: jax.Array, like: Any, blocks: MiniBlocks | None = None) -> Any:
    """``x`` as a haliax array with ``like``'s axes (the kept axes with ``blocks``), if ``like`` is one."""
    if not haliax.is_named_array(like):
        return x
    axes = (
        like.axes if blocks is None else tuple(a for i, a in enumerate(like.axes) if i not in blocks.reduce)
    )
    return haliax.named(x, axes)


def _at_least_float32(dtype: Any) -> Any:
    return jnp.promote_types(dtype, jnp.float32)


def scale_by_adam_mini(
    blocks: Callable[[PyTree], PyTree] | None = None,
    b1: float = 0.9,
    b2: float = 0.95,
    eps: float = 1e-8,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    """Adam-mini's direction (Zhang et al., 2024, https://arxiv.org/abs/2406.16793, Algorithm 1).

    Update rule at step ``t = 1, 2, ...``, for a block ``B`` (:func:`adam_mini_blocks`) of
    parameters and each element ``i`` of it::

        m_i = b1 m_i + (1 - b1) g_i
        v_B = b2 v_B + (1 - b2) mean_{j in B} g_j^2          (one value per block)
        u_i = m_hat_i / (sqrt(v_hat_B) + eps),   m_hat = m / (1 - b1^t),  v_hat = v / (1 - b2^t)

    With ``nesterov``, ``m_hat`` is ``b1 m / (1 - b1^(t+1)) + (1 - b1) g / (1 - b1^t)`` (Dozat,
    2016, as in ``optax.scale_by_adam(nesterov=True)``). Blocks of one element are Adam. The
    second moment is stored per block (``ScaleByAdamMiniState.nu``, in at least float32), so the
    state is about one value per parameter (``m``, in the parameter's dtype) instead of Adam's
    two. Chain with weight decay and ``scale_by_learning_rate``.

    ``blocks(updates)`` gives each leaf's :class:`MiniBlocks` (default:
    ``adam_mini_blocks()``, the paper's Transformer partition).
    """
    blocks_fn = blocks or adam_mini_blocks()

    def init_fn(params: optax.Params) -> ScaleByAdamMiniState:
        def nu0(b: MiniBlocks, p: Any) -> Any:
            return _like(jnp.zeros(b.block_shape, _at_least_float32(raw_array(p).dtype)), p, b)

        mu = jax.tree.map(jnp.zeros_like, params)
        nu = _map_blocks(nu0, blocks_fn(params), params)
        return ScaleByAdamMiniState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)

    def update_fn(
        updates: optax.Updates, state: ScaleByAdamMiniState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ScaleByAdamMiniState]:
        del params
        layout = blocks_fn(updates)
        count = optax.safe_increment(state.count)
        m_correction = (1 - b1**count).astype(jnp.float32)
        v_correction = (1 - b2**count).astype(jnp.float32)
        m_next_correction = (1 - b1 ** (count + 1)).astype(jnp.float32)

        def first(b: MiniBlocks, g: Any, m: Any) -> Any:
            m_raw = raw_array(m)
            return _like(((1 - b1) * raw_array(g) + b1 * m_raw).astype(m_raw.dtype), m)

        def second(b: MiniBlocks, g: Any, v: Any) -> Any:
            v_raw = raw_array(v)
            g = raw_array(g).astype(v_raw.dtype)
            square = g * g
            if b.reduce:
                square = jnp.mean(square, axis=b.reduce)
            return _like(v_raw * b2 + square * (1 - b2), v)

        mu = _map_blocks(first, layout, updates, state.mu)
        nu = _map_blocks(second, layout, updates, state.nu)

        def direction(b: MiniBlocks, g: Any, m: Any, v: Any) -> Any:
            g_raw, v = raw_array(g), raw_array(v)
            m = raw_array(m).astype(v.dtype)
            if nesterov:
                m_hat = b1 * m / m_next_correction + (1 - b1) * g_raw.astype(v.dtype) / m_correction
            else:
                m_hat = m / m_correction
            v_hat = v / v_correction
            if b.reduce:  # one value per block, broadcast over the block's axes
                v_hat = jnp.expand_dims(v_hat, b.reduce)
            return _like((m_hat / (jnp.sqrt(v_hat) + eps)).astype(g_raw.dtype), g)

        out = _map_blocks(direction, layout, updates, mu, nu)
        return out, ScaleByAdamMiniState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)
