"""Matrix / embedding / head / vector labelling of haliax, equinox and dict parameter trees."""

from __future__ import annotations

import functools

import equinox as eqx
import haliax as hax
import haliax.nn as hnn
import jax
import jax.numpy as jnp
import optax
import pytest

from marin_optim.errors import ConfigError
from marin_optim.labels import LabelSpec, MatrixAxes, ParamLabeler, describe_labels

Embed, Mlp, Heads, HeadDim = (
    hax.Axis("embed", 8),
    hax.Axis("mlp", 16),
    hax.Axis("heads", 2),
    hax.Axis("head_dim", 4),
)
Vocab, Layers = hax.Axis("vocab", 32), hax.Axis("layers", 3)


class Block(eqx.Module):
    q_proj: hnn.Linear
    o_proj: hnn.Linear
    up: hnn.Linear
    norm: hnn.RmsNorm

    @staticmethod
    def init(*, key: jax.Array) -> Block:
        k1, k2, k3 = jax.random.split(key, 3)
        return Block(
            hnn.Linear.init(Embed, (Heads, HeadDim), key=k1),
            hnn.Linear.init((Heads, HeadDim), Embed, key=k2, use_bias=False),
            hnn.Linear.init(Embed, Mlp, key=k3, use_bias=False, out_first=False),
            hnn.RmsNorm.init(Embed),
        )


class HaliaxModel(eqx.Module):
    embeddings: hnn.Embedding
    layers: hnn.Stacked
    final_norm: hnn.RmsNorm
    lm_head: hnn.Linear


@functools.cache
def haliax_model() -> HaliaxModel:
    """Shapes only (``eval_shape``): labelling never looks at values."""
    return jax.eval_shape(_haliax_model)


def _haliax_model() -> HaliaxModel:
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    layers = hnn.Stacked.init(Layers, Block)(key=jax.random.split(k[1], Layers.size))
    return HaliaxModel(
        hnn.Embedding.init(Vocab, Embed, key=k[0]),
        layers,
        hnn.RmsNorm.init(Embed),
        hnn.Linear.init(Embed, Vocab, key=k[2], use_bias=False),
    )


def by_path(labels) -> dict:
    return {lab.path: lab for lab in jax.tree.leaves(labels, is_leaf=lambda x: hasattr(x, "kind"))}


def test_haliax_multi_axis_linear_stacked_embedding_and_head() -> None:
    labels = by_path(ParamLabeler().labels(haliax_model()))
    q = labels["layers.stacked.q_proj.weight"]
    assert q.kind == "matrix"
    assert q.shape == (3, 2, 4, 8)
    assert (q.axes.fan_out_size, q.axes.fan_in_size, q.axes.batch_shape) == (8, 8, (3,))
    o = labels["layers.stacked.o_proj.weight"]  # In = (heads, head_dim), Out = embed
    assert o.axes.fan_in == (2, 3) and o.axes.fan_out == (1,)
    up = labels["layers.stacked.up.weight"]  # (In, Out) layout: orientation comes from the axis names
    assert up.shape == (3, 8, 16) and (up.axes.fan_out_size, up.axes.fan_in_size) == (16, 8)
    assert labels["layers.stacked.q_proj.bias"].kind == "vector"
    assert labels["layers.stacked.norm.weight"].kind == "vector"
    assert labels["final_norm.weight"].kind == "vector"
    assert labels["embeddings.weight"].kind == "embedding"
    head = labels["lm_head.weight"]
    assert head.kind == "head" and head.axes.fan_in_size == 8 and head.axes.fan_out_size == 32


class GatedBlock(eqx.Module):
    gate: jax.Array  # a plain per-layer vector: under Stacked it gains a leading layer axis
    mix: jax.Array  # a plain per-layer matrix

    @staticmethod
    def init(*, key: jax.Array) -> GatedBlock:
        return GatedBlock(jnp.ones(8), jax.random.normal(key, (8, 16)))


def test_plain_arrays_under_stacked_keep_their_layer_axis_as_batch() -> None:
    stacked = jax.eval_shape(
        lambda: hnn.Stacked.init(Layers, GatedBlock)(key=jax.random.split(jax.random.PRNGKey(0), 3))
    )
    labels = by_path(ParamLabeler().labels({"layers": stacked}))
    gate, mix = labels["layers.stacked.gate"], labels["layers.stacked.mix"]
    assert gate.shape == (3, 8) and gate.kind == "vector"  # not a (layers x 8) matrix
    assert mix.kind == "matrix" and mix.axes.batch_shape == (3,)
    assert (mix.axes.fan_in_size, mix.axes.fan_out_size) == (8, 16)


def test_a_conv_named_like_a_head_is_a_head() -> None:
    conv = eqx.filter_eval_shape(lambda: eqx.nn.Conv1d(4, 6, kernel_size=3, key=jax.random.PRNGKey(0)))
    assert by_path(ParamLabeler().labels({"head": conv}))["head.weight"].kind == "head"


def test_equinox_tree() -> None:
    k = jax.random.split(jax.random.PRNGKey(1), 4)

    class Model(eqx.Module):
        emb: eqx.nn.Embedding
        mlp: list
        ln: eqx.nn.LayerNorm
        head: eqx.nn.Linear
        conv: eqx.nn.Conv1d

    model = eqx.filter_eval_shape(
        lambda: Model(
            eqx.nn.Embedding(32, 8, key=k[0]),
            [eqx.nn.Linear(8, 16, key=k[1]), eqx.nn.Linear(16, 8, key=k[2])],
            eqx.nn.LayerNorm(8),
            eqx.nn.Linear(8, 32, use_bias=False, key=k[3]),
            eqx.nn.Conv1d(4, 6, kernel_size=3, key=k[0]),
        )
    )
    labels = by_path(ParamLabeler().labels(model))
    assert labels["emb.weight"].kind == "embedding"
    w0 = labels["mlp.0.weight"]
    assert w0.kind == "matrix" and (w0.axes.fan_out_size, w0.axes.fan_in_size) == (16, 8)
    assert labels["mlp.0.bias"].kind == "vector"
    assert labels["ln.weight"].kind == "vector"
    assert labels["head.weight"].kind == "head"
    conv = labels["conv.weight"]
    assert conv.kind == "matrix" and (conv.axes.fan_out_size, conv.axes.fan_in_size) == (6, 12)


def test_equinox_vmapped_layers_are_batches() -> None:
    keys = jax.random.split(jax.random.PRNGKey(2), 5)
    stacked = eqx.filter_eval_shape(eqx.filter_vmap(lambda key: eqx.nn.Linear(8, 16, key=key)), keys)
    lab = by_path(ParamLabeler().labels({"blocks": stacked}))["blocks.weight"]
    assert lab.axes.batch_shape == (5,) and (lab.axes.fan_out_size, lab.axes.fan_in_size) == (16, 8)


def test_dict_tree_defaults_and_overrides() -> None:
    params = {
        "wte": jnp.zeros((32, 8)),
        "h": {"w": jnp.zeros((3, 8, 16)), "gain": jnp.zeros((3, 16))},
        "lm_head": jnp.zeros((8, 32)),
        "scale": jnp.zeros(()),
        "proj": jnp.zeros((8, 12)),
    }
    labels = by_path(ParamLabeler().labels(params))
    assert labels["wte"].kind == "embedding"
    assert labels["lm_head"].kind == "head" and labels["lm_head"].axes.fan_in_size == 8
    assert labels["scale"].kind == "vector"
    proj = labels["proj"]  # x @ W layout by default: (in, out)
    assert proj.kind == "matrix" and (proj.axes.fan_in_size, proj.axes.fan_out_size) == (8, 12)
    # 2-D stacked gains are indistinguishable from matrices without a hint: override them
    assert labels["h.gain"].kind == "matrix"
    over = by_path(
        ParamLabeler({"h.gain": "vector", "h.w": "matrix(in=2, out=1)", "proj": "head"}).labels(params)
    )
    assert over["h.gain"].kind == "vector" and over["h.gain"].reason == "override 'h.gain'"
    assert over["h.w"].axes == MatrixAxes((3, 8, 16), (2,), (1,))
    assert over["proj"].kind == "head"


def test_overrides_match_class_paths_and_haliax_axis_names() -> None:
    model = haliax_model()
    labels = by_path(
        ParamLabeler(
            {
                "*Block.q_proj.Linear.weight": "matrix(in=embed, out=head_dim)",  # per head
                "*lm_head*": "vector",
            }
        ).labels(model)
    )
    q = labels["layers.stacked.q_proj.weight"]
    assert q.axes.batch_shape == (3, 2) and (q.axes.fan_out_size, q.axes.fan_in_size) == (4, 8)
    assert labels["lm_head.weight"].kind == "vector"


def test_override_errors() -> None:
    params = {"a": jnp.zeros((4, 4)), "b": jnp.zeros(4)}
    with pytest.raises(ConfigError, match="match no parameter"):
        ParamLabeler({"c*": "vector"}).labels(params)
    with pytest.raises(ConfigError, match="several patterns"):
        ParamLabeler({"a": "vector", "*": "matrix"}).labels(params)
    with pytest.raises(ConfigError, match="did you mean 'matrix'"):
        ParamLabeler({"a": "matirx"})
    with pytest.raises(ConfigError, match="give both"):
        ParamLabeler({"a": "matrix(in=0)"})
    with pytest.raises(ConfigError, match="only 'matrix' and 'head' take axes"):
        ParamLabeler({"a": "vector(in=0, out=1)"})
    with pytest.raises(ConfigError, match="not a matrix"):
        ParamLabeler({"b": "matrix"}).labels(params)
    with pytest.raises(ConfigError, match="distinct"):
        ParamLabeler({"a": "matrix(in=0, out=0)"}).labels(params)
    with pytest.raises(ConfigError, match="not an axis"):
        ParamLabeler({"*q_proj.weight": "matrix(in=embedding, out=heads)"}).labels(haliax_model())
    assert str(LabelSpec.parse("head(in=(0, 1), out=2)")) == "head(in=(0, 1), out=2)"


def test_masked_and_abstract_trees() -> None:
    model = haliax_model()
    labeler = ParamLabeler({"*lm_head*": "head"})
    # a tree as optax.multi_transform hands it to one branch: other leaves are MaskedNode
    kinds = labeler.kinds(model)
    masked = jax.tree.map(lambda k, p: p if k == "matrix" else optax.MaskedNode(), kinds, model)
    axes = labeler.matrix_axes(masked)
    leaves = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, MatrixAxes))
    assert len(leaves) == 3 and all(isinstance(a, MatrixAxes) for a in leaves)
    # labels(strict=True) does not fail on a masked tree that hides the pattern's match
    labeler.labels(masked)
    table = describe_labels(model)
    assert "layers.stacked.q_proj.weight" in table and "3 x [out 8 <- in 8]" in table
    assert table.splitlines()[-1].startswith("3 matrix")


def test_branch_labels_drive_multi_transform() -> None:
    params = {"w": jnp.ones((4, 6)), "b": jnp.ones(6), "wte": jnp.ones((10, 4))}
    labels = ParamLabeler().branch_labels({"matrix": "m", "embedding": "e", "head": "e", "vector": "v"})
    tx = optax.multi_transform({"m": optax.scale(2.0), "e": optax.scale(3.0), "v": optax.scale(5.0)}, labels)
    out, _ = tx.update(params, tx.init(params))
    assert float(out["w"][0, 0]) == 2.0 and float(out["wte"][0, 0]) == 3.0 and float(out["b"][0]) == 5.0
    with pytest.raises(ValueError, match="no branch"):
        ParamLabeler().branch_labels({"matrix": "m"})
