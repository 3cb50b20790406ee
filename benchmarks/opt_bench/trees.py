"""The parameter tree: Llama-like model shapes in four layouts, random trees and their sizes."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

LAYOUTS = ("llama", "stacked", "uniform", "single")
"""Parameter-tree layouts of :meth:`ModelShape.shapes` (``--layout``)."""


def is_shape(x: Any) -> bool:
    """Whether ``x`` is a leaf of a shape tree (a tuple of dimensions)."""
    return isinstance(x, tuple)


@dataclass(frozen=True)
class ModelShape:
    """A Llama-style decoder: embedding, ``layers`` blocks (GQA attention, SwiGLU MLP, two RMSNorm
    gains), a final norm and an untied LM head. Matrices are stored ``(in, out)`` (``x @ W``)."""

    vocab: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    layers: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def layer_shapes(self) -> dict[str, Any]:
        """The shapes of one decoder block."""
        d, kv = self.hidden, self.kv_heads * self.head_dim
        return {
            "attn": {"q_proj": (d, d), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (d, d)},
            "mlp": {
                "gate_proj": (d, self.intermediate),
                "up_proj": (d, self.intermediate),
                "down_proj": (self.intermediate, d),
            },
            "input_norm": (d,),
            "post_attn_norm": (d,),
        }

    def shapes(self, layout: str = "llama") -> dict[str, Any]:
        """Nested dict of shapes, in one of :data:`LAYOUTS`.

        ``llama``: per-layer leaves; ``stacked``: one leaf per kind stacked over layers (scan
        layout); ``uniform``: as many leaves as ``llama``, all of one ``(rows, hidden)`` shape,
        about the same parameter count; ``single``: one ``(rows, hidden)`` leaf of about that
        count. The last two separate the cost of the Llama tree's mix of shapes from the cost
        of the traffic alone.
        """
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r}: expected one of {LAYOUTS}")
        if layout in ("uniform", "single"):
            leaves = 1 if layout == "single" else len(jax.tree.leaves(self.shapes(), is_leaf=is_shape))
            rows = max(1, round(self.num_params() / leaves / self.hidden))
            return {f"w{i:03d}": (rows, self.hidden) for i in range(leaves)}
        if layout == "stacked":
            layers: Any = jax.tree.map(lambda s: (self.layers, *s), self.layer_shapes(), is_leaf=is_shape)
        else:
            layers = [self.layer_shapes() for _ in range(self.layers)]
        return {
            "embed": (self.vocab, self.hidden),
            "layers": layers,
            "final_norm": (self.hidden,),
            "lm_head": (self.hidden, self.vocab),
        }

    def num_params(self, layout: str = "llama") -> int:
        """The parameter count of :meth:`shapes` in ``layout``."""
        return sum(math.prod(s) for s in jax.tree.leaves(self.shapes(layout), is_leaf=is_shape))


def llama_shape(target: int, vocab: int = 32_000) -> ModelShape:
    """The Llama-like shape closest to ``target`` parameters with a usual depth-to-width ratio.

    Width ``d`` is a multiple of 128 (64-wide heads, grouped-query attention with 4 query heads
    per KV head where possible), the MLP is ``8/3 d`` rounded up to 256, and the depth is what
    reaches the target; among widths, the one whose depth is closest to ``d / 128`` wins
    (1B -> d=2048 with ~19 layers; 50M -> d=512 with ~6).
    """
    best: tuple[float, ModelShape] | None = None
    for d in range(128, 8192 + 1, 128):
        heads = d // 64
        kv_heads = heads // 4 if heads % 4 == 0 else heads
        ffn = 256 * math.ceil(8 * d / 3 / 256)
        shape = ModelShape(vocab, d, ffn, heads, kv_heads, 1)
        embed = shape.num_params() - _per_layer(shape)
        layers = round((target - embed) / _per_layer(shape))
        if layers < 1:
            continue
        shape = dataclasses.replace(shape, layers=layers)
        score = abs(math.log(layers / (d / 128))) + abs(math.log(shape.num_params() / target))
        if best is None or score < best[0]:
            best = (score, shape)
    if best is None:  # the embeddings alone exceed the target: one narrow layer
        return ModelShape(vocab, 128, 384, 2, 2, 1)
    return best[1]


def _per_layer(shape: ModelShape) -> int:
    """Parameters in one decoder block of ``shape``."""
    leaves = jax.tree.leaves(shape.layer_shapes(), is_leaf=is_shape)
    return sum(math.prod(s) for s in leaves)


def parse_count(text: str) -> int:
    """``50M`` / ``1B`` / ``2.5e6`` -> an int."""
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([kKmMbBgG]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"--params={text!r}: expected a count such as 50M or 1B")
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def make_tree(shapes: Any, key: jax.Array, scale: float, dtype: Any, device: Any) -> Any:
    """Random normal leaves of the given shapes, scaled, placed on ``device``."""
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=is_shape)
    keys = jax.random.split(key, len(leaves))
    out = [
        jax.device_put(scale * jax.random.normal(k, s, jnp.float32), device).astype(dtype)
        for k, s in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, out)


def tree_bytes(tree: Any) -> int:
    """Bytes held by the array leaves of ``tree``."""
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))


def distinct_buffers(state: Any, params: Any) -> tuple[Any, int]:
    """``state`` with every leaf that shares a buffer with ``params`` or an earlier leaf copied
    (XLA refuses to donate one buffer twice), and how many were copied."""
    seen = {x.unsafe_buffer_pointer() for x in jax.tree.leaves(params)}
    copied = 0

    def fresh(x: Any) -> Any:
        nonlocal copied
        if not isinstance(x, jax.Array) or x.size == 0:
            return x
        ptr = x.unsafe_buffer_pointer()
        if ptr in seen:
            copied += 1
            x = x.copy()
            ptr = x.unsafe_buffer_pointer()
        seen.add(ptr)
        return x

    return jax.tree.map(fresh, state), copied


def fresh_copy(tree: Any) -> Any:
    """A copy with its own buffers (donation consumes them)."""
    return jax.tree.map(lambda x: x.copy(), tree)
