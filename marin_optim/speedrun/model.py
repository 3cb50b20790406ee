"""A Llama-style byte-level decoder in haliax: RMSNorm, RoPE, SwiGLU, grouped-query attention.

Every array carries named axes, so sharding is an axis mapping (``{"embed": "data"}`` is FSDP,
``{"mlp": "model", "kv_heads": "model"}`` is tensor parallelism) and the layers are one
``haliax.nn.Stacked`` module scanned over the ``layers`` axis (one compiled block, whatever the
depth).

Axis names (used by :mod:`marin_optim.speedrun.mesh`):

=====================  ===========================================
``batch``              sequences in a (micro)batch
``position``           query positions; ``key_position`` for keys
``embed``              the residual stream (hidden_dim)
``mlp``                the SwiGLU hidden layer (intermediate_dim)
``kv_heads``           key/value heads; ``q_per_kv`` query heads per KV head
``head_size``          hidden_dim / num_heads
``vocab``              256 bytes
``layers``             the scanned layer axis
=====================  ===========================================
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import haliax as hax
import haliax.nn as hnn
import jax
import jax.numpy as jnp
from haliax import Axis, NamedArray

from marin_optim.errors import ConfigError, did_you_mean

VOCAB_SIZE = 256
"""Byte-level: one token per byte, so loss in nats / ln 2 is bits per byte."""

Vocab = Axis("vocab", VOCAB_SIZE)

# name -> (hidden_dim, intermediate_dim, num_heads, num_kv_heads, num_layers, max_seq_len).
# Marin's speedrun Llama shapes (its speedrun guide); with a 256-byte vocabulary instead of Llama 3's
# 128k tokens the parameter counts are far below the names, which refer to Marin's models.
PRESETS: dict[str, tuple[int, int, int, int, int, int]] = {
    "cpu": (128, 384, 4, 2, 4, 256),
    "nano": (32, 128, 2, 2, 2, 512),
    "30m": (128, 448, 2, 2, 4, 1024),
    "50m": (192, 448, 2, 2, 4, 1024),
    "75m": (256, 896, 4, 4, 8, 1024),
    "150m": (512, 1792, 8, 8, 6, 1024),
    "300m": (768, 2688, 12, 12, 12, 1024),
}
_PRESET_FIELDS = ("hidden_dim", "intermediate_dim", "num_heads", "num_kv_heads", "num_layers", "max_seq_len")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the decoder. ``preset`` fills every size left unset (``None``)."""

    preset: str = "cpu"
    """Sizes to start from: cpu (the 2-core default), nano, 30m, 50m, 75m, 150m, 300m (Marin's shapes)."""
    hidden_dim: int | None = None
    """Width of the residual stream (None = the preset's)."""
    intermediate_dim: int | None = None
    """Width of the SwiGLU hidden layer (None = the preset's)."""
    num_heads: int | None = None
    """Query heads (None = the preset's)."""
    num_kv_heads: int | None = None
    """Key/value heads; num_heads must be a multiple (grouped-query attention; None = the preset's)."""
    num_layers: int | None = None
    """Decoder blocks (None = the preset's)."""
    max_seq_len: int | None = None
    """Longest sequence the model is built for (None = the preset's)."""
    tie_embeddings: bool = False
    """Use the input embedding as the output projection (Marin's Llama: False)."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    initializer_range: float = 0.02
    """Standard deviation of the embedding initialisation (linear layers use 1/sqrt(fan_in))."""
    gradient_checkpointing: bool = False
    """Recompute each block's activations in the backward pass (less memory, ~1/3 more compute)."""

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(
                f"model.preset={self.preset!r}: must be one of {', '.join(PRESETS)}"
                f"{did_you_mean(self.preset, PRESETS)}"
            )
        for name, value in zip(_PRESET_FIELDS, PRESETS[self.preset], strict=True):
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        for name in _PRESET_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"model.{name}={value!r}: must be an int >= 1")
        if self.hidden_dim % self.num_heads:
            raise ConfigError(
                f"model.hidden_dim={self.hidden_dim}: must be a multiple of num_heads={self.num_heads}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"model.num_kv_heads={self.num_kv_heads}: must divide num_heads={self.num_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"model.hidden_dim/num_heads={self.head_dim}: RoPE needs an even head size")
        for name in ("rope_theta", "norm_eps", "initializer_range"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ConfigError(f"model.{name}={value!r}: must be a number > 0")

    # ---- derived sizes -------------------------------------------------------------------

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.num_heads

    @property
    def Embed(self) -> Axis:
        return Axis("embed", self.hidden_dim)

    @property
    def Mlp(self) -> Axis:
        return Axis("mlp", self.intermediate_dim)

    @property
    def KVHeads(self) -> Axis:
        return Axis("kv_heads", self.num_kv_heads)

    @property
    def QPerKV(self) -> Axis:
        return Axis("q_per_kv", self.num_heads // self.num_kv_heads)

    @property
    def HeadSize(self) -> Axis:
        return Axis("head_size", self.head_dim)

    @property
    def Layers(self) -> Axis:
        return Axis("layers", self.num_layers)

    def num_parameters(self) -> int:
        """Trainable parameters (embeddings included, as Marin counts them)."""
        d, f, kv = self.hidden_dim, self.intermediate_dim, self.num_kv_heads * self.head_dim
        attn = d * d + 2 * d * kv + d * d
        mlp = 3 * d * f
        block = attn + mlp + 2 * d
        head = 0 if self.tie_embeddings else d * VOCAB_SIZE
        return VOCAB_SIZE * d + self.num_layers * block + d + head

    @property
    def name(self) -> str:
        """The preset and any size set apart from it, e.g. ``cpu with hidden_dim=256,
        intermediate_dim=768`` (a resized preset is not that preset)."""
        changed = [
            f"{size}={getattr(self, size)}"
            for size, preset_value in zip(_PRESET_FIELDS, PRESETS[self.preset], strict=True)
            if getattr(self, size) != preset_value
        ]
        return self.preset + (f" with {', '.join(changed)}" if changed else "")

    def describe(self) -> str:
        """:attr:`name` and the shape, e.g. ``cpu (0.85M params: d=128 ff=384 heads=4/2 layers=4)``."""
        return (
            f"{self.name} ({self.num_parameters() / 1e6:.2f}M params: d={self.hidden_dim} "
            f"ff={self.intermediate_dim} heads={self.num_heads}/{self.num_kv_heads} layers={self.num_layers})"
        )

    def flops_per_token(self, seq_len: int) -> float:
        """Forward-pass FLOPs per token at ``seq_len`` (2 per multiply-add).

        Counts every matmul (projections, SwiGLU, output head) and causal-free attention
        (scores and the weighted sum over all ``seq_len`` keys, as Levanter and Marin count it);
        norms, RoPE and softmax are left out. A training step costs 3x this (forward + backward).
        """
        d, f, h = self.hidden_dim, self.intermediate_dim, self.head_dim
        q, kv = self.num_heads * h, self.num_kv_heads * h
        projections = 2 * d * (q + 2 * kv) + 2 * q * d
        mlp = 2 * 3 * d * f
        attention = 2 * 2 * seq_len * q
        return float(self.num_layers * (projections + mlp + attention) + 2 * d * VOCAB_SIZE)

    def sizes(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _PRESET_FIELDS}

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


# ---- modules ----------------------------------------------------------------------------


def rotary(x: NamedArray, Pos: Axis, HeadSize: Axis, theta: float) -> NamedArray:
    """Rotary position embedding (Su et al., 2021, https://arxiv.org/abs/2104.09864), half-split.

    The head is split into halves ``(x1, x2)`` rotated by angle ``pos * theta^(-2i/d)``:
    ``(x1 cos - x2 sin, x2 cos + x1 sin)``, computed in float32.
    """
    half = HeadSize.size // 2
    inv_freq = 1.0 / (theta ** (jnp.arange(half, dtype=jnp.float32) / half))
    angles = jnp.arange(Pos.size, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    order = (*[a for a in x.axes if a.name not in (Pos.name, HeadSize.name)], Pos, HeadSize)
    arr = x.rearrange(order).array
    dtype = arr.dtype
    arr = arr.astype(jnp.float32)
    x1, x2 = arr[..., :half], arr[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(dtype)
    return hax.named(out, order).rearrange(x.axes)


class Attention(eqx.Module):
    """Causal grouped-query self-attention with RoPE; no biases."""

    q_proj: hnn.Linear
    k_proj: hnn.Linear
    v_proj: hnn.Linear
    o_proj: hnn.Linear
    config: ModelConfig = eqx.field(static=True)

    @staticmethod
    def init(config: ModelConfig, *, key: jax.Array) -> Attention:
        kq, kk, kv, ko = jax.random.split(key, 4)
        c = config
        q_out = (c.KVHeads, c.QPerKV, c.HeadSize)
        o_scale = 1.0 / math.sqrt(2 * c.num_layers)
        return Attention(
            q_proj=hnn.Linear.init(c.Embed, q_out, key=kq, use_bias=False),
            k_proj=hnn.Linear.init(c.Embed, (c.KVHeads, c.HeadSize), key=kk, use_bias=False),
            v_proj=hnn.Linear.init(c.Embed, (c.KVHeads, c.HeadSize), key=kv, use_bias=False),
            o_proj=hnn.Linear.init(q_out, c.Embed, key=ko, use_bias=False, init_scale=o_scale),
            config=c,
        )

    def __call__(self, x: NamedArray, Pos: Axis) -> NamedArray:
        c = self.config
        KPos = Pos.alias("key_position")
        q = rotary(self.q_proj(x), Pos, c.HeadSize, c.rope_theta)
        k = rotary(self.k_proj(x), Pos, c.HeadSize, c.rope_theta).rename({Pos.name: KPos.name})
        v = self.v_proj(x).rename({Pos.name: KPos.name})
        mask = hnn.attention.causal_mask(Pos, KPos)
        out = hnn.attention.dot_product_attention(
            KPos, c.HeadSize, q, k, v, mask=mask, attention_dtype=jnp.float32
        )
        return self.o_proj(out.astype(x.dtype))


class SwiGLU(eqx.Module):
    """``down(silu(gate(x)) * up(x))`` (Shazeer, 2020, https://arxiv.org/abs/2002.05202)."""

    gate_proj: hnn.Linear
    up_proj: hnn.Linear
    down_proj: hnn.Linear

    @staticmethod
    def init(config: ModelConfig, *, key: jax.Array) -> SwiGLU:
        kg, ku, kd = jax.random.split(key, 3)
        c = config
        return SwiGLU(
            gate_proj=hnn.Linear.init(c.Embed, c.Mlp, key=kg, use_bias=False),
            up_proj=hnn.Linear.init(c.Embed, c.Mlp, key=ku, use_bias=False),
            down_proj=hnn.Linear.init(
                c.Mlp, c.Embed, key=kd, use_bias=False, init_scale=1.0 / math.sqrt(2 * c.num_layers)
            ),
        )

    def __call__(self, x: NamedArray) -> NamedArray:
        return self.down_proj(hnn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderBlock(eqx.Module):
    """Pre-norm residual block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    attn_norm: hnn.RmsNorm
    attn: Attention
    mlp_norm: hnn.RmsNorm
    mlp: SwiGLU

    @staticmethod
    def init(config: ModelConfig, *, key: jax.Array) -> DecoderBlock:
        ka, km = jax.random.split(key)
        return DecoderBlock(
            attn_norm=_rms_norm(config),
            attn=Attention.init(config, key=ka),
            mlp_norm=_rms_norm(config),
            mlp=SwiGLU.init(config, key=km),
        )

    def __call__(self, x: NamedArray) -> NamedArray:
        x = x + self.attn(self.attn_norm(x), x.resolve_axis("position"))
        x = x + self.mlp(self.mlp_norm(x))
        return hax.auto_sharded(x)


def _rms_norm(config: ModelConfig) -> hnn.RmsNorm:
    # Statistics in float32 whatever the compute dtype.
    return hnn.RmsNorm.init(config.Embed, eps=config.norm_eps, use_bias=False, dtype=jnp.float32)


class Transformer(eqx.Module):
    """Token embedding, ``num_layers`` scanned decoder blocks, final RMSNorm, output projection."""

    embed: hnn.Embedding
    layers: hnn.Stacked[DecoderBlock]
    final_norm: hnn.RmsNorm
    lm_head: hnn.Linear | None
    config: ModelConfig = eqx.field(static=True)

    @staticmethod
    def init(config: ModelConfig, *, key: jax.Array) -> Transformer:
        ke, kl, kh = jax.random.split(key, 3)
        c = config
        # haliax scales embedding init by 1/hidden_dim; rescale to initializer_range.
        embed = hnn.Embedding.init(Vocab, c.Embed, key=ke, init_scale=c.initializer_range * c.hidden_dim)
        layers = hnn.Stacked.init(c.Layers, DecoderBlock, gradient_checkpointing=c.gradient_checkpointing)(
            c, key=jax.random.split(kl, c.num_layers)
        )
        lm_head = None if c.tie_embeddings else hnn.Linear.init(c.Embed, Vocab, key=kh, use_bias=False)
        return Transformer(embed=embed, layers=layers, final_norm=_rms_norm(c), lm_head=lm_head, config=c)

    def logits(self, tokens: NamedArray) -> NamedArray:
        """``tokens`` (..., position) int -> logits (..., position, vocab) in the compute dtype."""
        x = self.embed(tokens)
        x = self.layers.fold(x)
        x = self.final_norm(x)
        if self.lm_head is None:
            return self.embed.unembed(x)
        return self.lm_head(x)


def next_token_loss(model: Transformer, inputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-byte cross-entropy in nats; ``inputs``/``targets`` are ``[batch, seq]`` int arrays.

    Logits are upcast to float32 before the log-softmax.
    """
    B, T = inputs.shape
    Pos = Axis("position", T)
    tokens = hax.named(inputs, (Axis("batch", B), Pos))
    logits = model.logits(tokens)
    logits = logits.rearrange(("batch", "position", "vocab")).array.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.mean(log_z - picked)


def cast_floating(tree: Any, dtype: Any) -> Any:
    """Casts every floating-point leaf of ``tree`` to ``dtype`` (the mixed-precision compute copy)."""

    def cast(x: Any) -> Any:
        if isinstance(x, jax.Array | jax.ShapeDtypeStruct) and jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(dtype)
        return x

    return jax.tree.map(cast, tree)
