"""The decoder: parameter count, causality, RoPE, GQA, presets, FLOPs."""

from __future__ import annotations

import math

import haliax as hax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marin_optim import ConfigError
from marin_optim.speedrun.model import (
    PRESETS,
    VOCAB_SIZE,
    ModelConfig,
    Transformer,
    cast_floating,
    next_token_loss,
    rotary,
)

SMALL = ModelConfig(
    preset="nano", hidden_dim=32, intermediate_dim=48, num_heads=4, num_kv_heads=2, num_layers=2
)


def n_params(model) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(model))


def init(cfg: ModelConfig, seed: int = 0) -> Transformer:
    return jax.jit(Transformer.init, static_argnums=0)(cfg, key=jax.random.PRNGKey(seed))


def abstract(cfg: ModelConfig) -> Transformer:
    return jax.eval_shape(lambda: Transformer.init(cfg, key=jax.random.PRNGKey(0)))


@pytest.mark.parametrize("tie", [False, True])
def test_parameter_count_formula_matches_the_initialised_model(tie):
    cfg = SMALL.replace(tie_embeddings=tie)
    model = abstract(cfg)
    assert n_params(model) == cfg.num_parameters()
    assert (model.lm_head is None) == tie


def test_presets_follow_marins_shapes():
    assert PRESETS["150m"] == (512, 1792, 8, 8, 6, 1024)
    m = ModelConfig(preset="300m")
    assert (m.hidden_dim, m.intermediate_dim, m.num_heads, m.num_layers, m.max_seq_len) == (
        768,
        2688,
        12,
        12,
        1024,
    )
    # An explicit size overrides the preset's, the rest stays.
    m = ModelConfig(preset="75m", num_layers=2)
    assert (m.hidden_dim, m.num_layers) == (256, 2)


def test_a_model_describes_itself_by_its_preset_the_sizes_set_apart_from_it_and_its_shape():
    """What the speedrun's log and a sweep's report name the model by: a preset with a size given
    on top of it is not that preset, so the changed sizes are named."""
    assert ModelConfig().describe() == "cpu (0.85M params: d=128 ff=384 heads=4/2 layers=4)"
    big = ModelConfig(hidden_dim=256, intermediate_dim=768)
    assert big.describe() == (
        f"cpu with hidden_dim=256, intermediate_dim=768 ({big.num_parameters() / 1e6:.2f}M params: "
        "d=256 ff=768 heads=4/2 layers=4)"
    )
    assert big.name == "cpu with hidden_dim=256, intermediate_dim=768"
    # a size given equal to the preset's is no change
    assert ModelConfig(num_layers=4).describe() == ModelConfig().describe()


def test_layers_are_one_scanned_stack():
    model = abstract(SMALL)
    w = model.layers.stacked.attn.q_proj.weight
    assert w.axis_names == ("layers", "kv_heads", "q_per_kv", "head_size", "embed")
    assert w.array.shape == (2, 2, 2, 8, 32)


def test_output_at_a_position_ignores_later_tokens():
    model = init(SMALL, seed=1)
    rng = np.random.default_rng(0)
    x = rng.integers(0, VOCAB_SIZE, size=(1, 16))
    y = x.copy()
    y[0, 10:] = rng.integers(0, VOCAB_SIZE, size=6)

    @jax.jit
    def logits(model, tokens):
        named = hax.named(tokens, ("batch", "position"))
        return model.logits(named).rearrange(("batch", "position", "vocab")).array

    both = np.asarray(logits(model, jnp.asarray(np.concatenate([x, y]))))
    a, b = both[:1], both[1:]
    np.testing.assert_array_equal(a[0, :10], b[0, :10])
    assert np.abs(a[0, 10:] - b[0, 10:]).max() > 1e-3


def test_rotary_is_a_rotation_that_depends_on_relative_position():
    Pos, H = hax.Axis("position", 6), hax.Axis("head_size", 8)
    rng = np.random.default_rng(0)
    q = rng.normal(size=(8,)).astype(np.float32)
    k = rng.normal(size=(8,)).astype(np.float32)
    qs = rotary(hax.named(jnp.tile(q, (6, 1)), (Pos, H)), Pos, H, 10000.0).array
    ks = rotary(hax.named(jnp.tile(k, (6, 1)), (Pos, H)), Pos, H, 10000.0).array
    np.testing.assert_allclose(np.linalg.norm(qs, axis=-1), np.linalg.norm(q), rtol=1e-5)
    # <R_m q, R_n k> depends only on m - n.
    np.testing.assert_allclose(float(qs[3] @ ks[1]), float(qs[5] @ ks[3]), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(qs[0]), q, rtol=1e-6)  # position 0 is not rotated


def test_initial_loss_is_near_uniform_and_bf16_compute_agrees():
    model = init(SMALL)
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, size=(4, 17)), jnp.int32)
    loss = jax.jit(
        lambda m, dtype: next_token_loss(cast_floating(m, dtype), x[:, :-1], x[:, 1:]), static_argnums=1
    )
    loss32, loss16 = float(loss(model, jnp.float32)), float(loss(model, jnp.bfloat16))
    assert abs(loss32 - math.log(VOCAB_SIZE)) < 1.0
    assert abs(loss16 - loss32) < 0.05
    assert cast_floating(model, jnp.bfloat16).embed.weight.dtype == jnp.bfloat16


def test_flops_per_token_counts_the_matmuls():
    cfg = ModelConfig(preset="nano", num_kv_heads=1)  # d=32, ff=128, 2 heads of 16, 1 kv head, 2 layers
    d, f, layers, T = 32, 128, 2, 64
    q, kv = 32, 16
    per_layer = 2 * d * (q + 2 * kv) + 2 * q * d + 6 * d * f + 4 * T * q
    assert cfg.flops_per_token(T) == layers * per_layer + 2 * d * VOCAB_SIZE


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"preset": "tiny"}, "model.preset"),
        ({"hidden_dim": 30}, "model.hidden_dim"),
        ({"num_kv_heads": 3, "num_heads": 4}, "model.num_kv_heads"),
        ({"num_layers": 0}, "model.num_layers"),
        ({"rope_theta": -1.0}, "model.rope_theta"),
    ],
)
def test_bad_model_configs_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        ModelConfig(**kwargs)
