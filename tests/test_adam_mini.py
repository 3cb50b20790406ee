"""Adam-mini (``mini``) against its written rule in NumPy, its block partition, and 8 devices.

The reference is the paper's update (Zhang et al., 2024, https://arxiv.org/abs/2406.16793,
Algorithm 1) written out in float64 with the partition spelled by hand; Levanter's ``mini`` is
compared in ``tests/levanter/test_dropin_new.py``.
"""

from __future__ import annotations

import json
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from multidevice import run_on_devices

from marin_optim import OptimizerConfig
from marin_optim.errors import ConfigError
from marin_optim.optimizers.adam_mini import MiniConfig
from marin_optim.transforms.adam_mini import ScaleByAdamMiniState

CONSTANT = dict(lr_schedule="constant", warmup=0)

# Levanter's ``mini`` block as Levanter dumps it (levanter 0.2.20: every field at its default).
LEVANTER_MINI = {
    "beta1": 0.9,
    "beta2": 0.95,
    "cooldown": None,
    "cycle_length": None,
    "cycles": None,
    "decay": None,
    "default_weight_decay_mask": None,
    "epsilon": 1e-08,
    "haps": None,
    "learning_rate": 0.0006,
    "lr": 0.02,
    "lr_schedule": "cosine",
    "max_grad_norm": 1.0,
    "min_lr_ratio": 0.1,
    "nesterov": False,
    "rewarmup": 0.0,
    "warmup": 0.01,
    "weight_decay": 0.0,
    "weight_decay_modules": None,
}


def _tree(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "wte": rng.standard_normal((6, 4)),  # embedding (by name): one block per row
        "w": rng.standard_normal((4, 5)),  # matrix, x @ W: one block per output column
        "lm_head": rng.standard_normal((4, 6)),  # head: one block per output (token) column
        "gain": rng.standard_normal(5),  # vector: Adam
    }


# The axes each leaf's block spans (the mean of g^2 is over them); None = elementwise.
REDUCE = {"wte": (1,), "w": (0,), "lm_head": (0,), "gain": None}


def _numpy_mini(params, grads, mask, *, lr, wd, b1, b2, eps, nesterov, max_norm, scope):
    """The written rule, float64: clip (scope), m, blocked v, bias corrections, decay, -lr."""
    p = {k: v.astype(np.float64).copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(p[k]) if REDUCE[k] is None else np.zeros_like(p[k].mean(axis=REDUCE[k])) for k in p}
    for t, g in enumerate(grads, start=1):
        g = {k: x.astype(np.float64) for k, x in g.items()}
        if max_norm:
            clipped = ["gain"] if scope == "adam" else list(g)
            norm = np.sqrt(sum(np.sum(g[k] ** 2) for k in clipped))
            for k in clipped:
                g[k] = g[k] * min(1.0, max_norm / norm)
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            sq = g[k] ** 2 if REDUCE[k] is None else (g[k] ** 2).mean(axis=REDUCE[k])
            v[k] = b2 * v[k] + (1 - b2) * sq
            v_hat = v[k] / (1 - b2**t)
            if REDUCE[k] is not None:
                v_hat = np.expand_dims(v_hat, REDUCE[k])
            if nesterov:
                m_hat = b1 * m[k] / (1 - b1 ** (t + 1)) + (1 - b1) * g[k] / (1 - b1**t)
            else:
                m_hat = m[k] / (1 - b1**t)
            u = m_hat / (np.sqrt(v_hat) + eps)
            if mask[k]:
                u = u + wd * p[k]
            p[k] = p[k] - lr * u
    return p


@pytest.mark.parametrize(
    "variant",
    [
        dict(),
        dict(nesterov=True),
        dict(weight_decay=0.1, clip_scope="all"),
        dict(max_grad_norm=None, beta2=0.99, epsilon=1e-3),
    ],
    ids=["default", "nesterov", "decay+global-clip", "noclip+beta2+eps"],
)
def test_mini_matches_the_written_rule(variant) -> None:
    rng = np.random.default_rng(0)
    params = {k: x.astype(np.float32) for k, x in _tree(rng).items()}
    grads = [{k: (0.5 * x).astype(np.float32) for k, x in _tree(rng).items()} for _ in range(6)]
    cfg = MiniConfig(learning_rate=0.01, **CONSTANT, **variant)
    tx = cfg.build(100)
    p = {k: jnp.asarray(x) for k, x in params.items()}
    state = tx.init(p)
    step = jax.jit(tx.update)
    total = {k: np.zeros(x.shape) for k, x in params.items()}  # the change, summed in float64
    for g in grads:
        updates, state = step({k: jnp.asarray(x) for k, x in g.items()}, state, p)
        p = optax.apply_updates(p, updates)
        total = {k: total[k] + np.asarray(updates[k], np.float64) for k in total}
    mask_fn = cfg.build_weight_decay_mask()
    mask = mask_fn(params) if mask_fn else dict.fromkeys(params, True)
    expected = _numpy_mini(
        params,
        grads,
        mask,
        lr=0.01,
        wd=cfg.weight_decay,
        b1=cfg.beta1,
        b2=cfg.beta2,
        eps=cfg.epsilon,
        nesterov=cfg.nesterov,
        max_norm=cfg.max_grad_norm,
        scope=cfg.clip_scope,
    )
    for k in params:
        np.testing.assert_allclose(total[k], expected[k] - params[k], rtol=2e-5, atol=1e-8, err_msg=k)
    # the blocked leaves really share one second moment per block
    nu = _find_nu(state)
    assert nu["w"].shape == (5,) and nu["wte"].shape == (6,) and nu["lm_head"].shape == (6,)


def _find_nu(state):
    """The ``nu`` of the Adam-mini branch's state."""
    is_mini = lambda x: isinstance(x, ScaleByAdamMiniState)
    (mini,) = [s for s in jax.tree.leaves(state, is_leaf=is_mini) if is_mini(s)]
    return mini.nu


def _tiny_params(seed: int = 0):
    """The speedrun model's parameters (2 layers, 4 query heads over 2 key/value heads), filled
    from NumPy (shapes from ``eval_shape``: eager init is slow on a loaded 2-core machine)."""
    import equinox as eqx

    from marin_optim.speedrun.model import ModelConfig, Transformer

    config = ModelConfig(
        hidden_dim=32, intermediate_dim=48, num_heads=4, num_kv_heads=2, num_layers=2, max_seq_len=16
    )
    model = jax.eval_shape(lambda: Transformer.init(config, key=jax.random.PRNGKey(0)))
    shapes = eqx.filter(model, lambda x: isinstance(x, jax.ShapeDtypeStruct))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), shapes)


def test_blocks_of_the_speedrun_model_are_heads_neurons_and_tokens() -> None:
    """Grouped-query attention: query blocks per query head, key blocks per key head; the first
    step is g / sqrt(mean of g^2 over the block) (bias-corrected), checked for every kind."""
    params, grads = _tiny_params(0), _tiny_params(1)
    cfg = MiniConfig(learning_rate=1.0, max_grad_norm=None, **CONSTANT)
    tx = cfg.build(10)
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
    nu = _find_nu(state)
    attn = nu.layers.stacked.attn
    names = lambda x: tuple(x.axis_names)
    assert names(attn.q_proj.weight) == ("layers", "kv_heads", "q_per_kv")  # 2 x 4 query heads
    assert names(attn.k_proj.weight) == ("layers", "kv_heads")
    assert names(attn.v_proj.weight) == ("layers", "kv_heads", "head_size")  # output neurons
    assert names(attn.o_proj.weight) == ("layers", "embed")
    assert names(nu.layers.stacked.mlp.gate_proj.weight) == ("layers", "mlp")
    assert names(nu.layers.stacked.mlp.down_proj.weight) == ("layers", "embed")
    assert names(nu.embed.weight) == ("vocab",) and names(nu.lm_head.weight) == ("vocab",)
    assert isinstance(nu.final_norm.weight, optax.MaskedNode)  # norms: the Adam branch

    def first_step(g: np.ndarray, reduce: tuple[int, ...]) -> np.ndarray:
        g = g.astype(np.float64)
        rms = np.sqrt((g**2).mean(axis=reduce, keepdims=True)) if reduce else np.abs(g)
        return -g / (rms + cfg.epsilon)

    g_attn = grads.layers.stacked.attn
    u_attn = updates.layers.stacked.attn
    cases = [  # (grad, update, axes of one block)
        (g_attn.q_proj.weight, u_attn.q_proj.weight, (3, 4)),  # (layers, kv, q_per_kv | head_size, embed)
        (g_attn.k_proj.weight, u_attn.k_proj.weight, (2, 3)),
        (g_attn.v_proj.weight, u_attn.v_proj.weight, (3,)),
        (g_attn.o_proj.weight, u_attn.o_proj.weight, (2, 3, 4)),
        (grads.embed.weight, updates.embed.weight, (1,)),
        (grads.lm_head.weight, updates.lm_head.weight, (1,)),
        (grads.final_norm.weight, updates.final_norm.weight, ()),
    ]
    for g, u, reduce in cases:
        assert tuple(u.axis_names) == tuple(g.axis_names)
        np.testing.assert_allclose(np.asarray(u.array), first_step(np.asarray(g.array), reduce), rtol=1e-5)
    assert "per head" in cfg.describe_labels(params) and "per token" in cfg.describe_labels(params)


def test_unstacked_layers_get_the_stacked_partition() -> None:
    """Blocks follow axis names, not positions: an unstacked haliax query projection still has
    one block per query head."""
    import haliax as hax
    import haliax.nn as hnn

    Embed, KV, QPK, HS = hax.Axis("embed", 8), hax.Axis("kv", 2), hax.Axis("qpk", 2), hax.Axis("hs", 4)
    params = {
        "attn": {"q_proj": hnn.Linear.init(Embed, (KV, QPK, HS), key=jax.random.PRNGKey(0), use_bias=False)}
    }
    tx = MiniConfig(max_grad_norm=None, **CONSTANT).build(10)
    state = tx.init(params)
    nu = [x for x in jax.tree.leaves(state, is_leaf=hax.is_named_array) if hax.is_named_array(x)]
    assert any(tuple(x.axis_names) == ("kv", "qpk") for x in nu), nu


def test_state_is_about_one_float_per_parameter() -> None:
    params = _tiny_params()
    n = sum(x.size for x in jax.tree.leaves(params))

    def state_bytes(cfg: OptimizerConfig) -> float:
        state = jax.eval_shape(cfg.build(10).init, params)
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)) / n

    mini, adam = state_bytes(MiniConfig()), state_bytes(OptimizerConfig.get_choice_class("adam")())
    assert 4.0 < mini < 4.2 and adam >= 8.0, (mini, adam)


def test_levanters_block_loads_unchanged_and_fields_are_validated() -> None:
    cfg = OptimizerConfig.from_dict({"type": "mini", **LEVANTER_MINI})
    assert isinstance(cfg, MiniConfig) and cfg == MiniConfig()
    for name, value in LEVANTER_MINI.items():
        if name != "lr_schedule":
            assert getattr(cfg, name) == value, name
    with pytest.raises(ConfigError, match=r"mini\.lr=0\.01: .*learning_rate"):
        MiniConfig(lr=0.01)
    with pytest.raises(ConfigError, match=r"mini\.clip_scope='adamw'.*adam.*all"):
        MiniConfig(clip_scope="adamw")
    with pytest.raises(ConfigError, match=r"mini\.beta2=1\.0"):
        MiniConfig(beta2=1.0)


SHARDING_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import equinox as eqx, jax, jax.numpy as jnp, numpy as np
    from marin_optim.config import OptimizerConfig
    from marin_optim.speedrun.mesh import MeshConfig, make_mesh, sharding_tree
    from marin_optim.speedrun.model import ModelConfig, Transformer
    import marin_optim.optimizers

    assert jax.device_count() == 8
    config = ModelConfig(hidden_dim=32, intermediate_dim=48, num_heads=4, num_kv_heads=2,
                         num_layers=2, max_seq_len=16)
    params = eqx.filter(Transformer.init(config, key=jax.random.PRNGKey(0)), eqx.is_array)
    rng = np.random.default_rng(0)
    grads = [jax.tree.map(lambda x: jnp.asarray(0.01 * rng.standard_normal(x.shape), x.dtype), params)
             for _ in range(3)]
    mesh_cfg = MeshConfig(data=4, model=2, fsdp=True)  # FSDP over embed, heads/mlp/vocab over model
    mesh = make_mesh(mesh_cfg)
    shard = sharding_tree(params, mesh_cfg.parameter_mapping(), mesh)
    out = {}
    for name, kwargs in json.loads(sys.argv[1]).items():
        tx = OptimizerConfig.get_choice_class(kwargs.pop("type"))(**kwargs).build(10)

        def run(p, gs):
            s = tx.init(p)
            for g in gs:
                u, s = tx.update(g, s, p)
                p = eqx.apply_updates(p, u)
            return p

        single = jax.jit(run)(params, grads)
        p_sh = jax.device_put(params, shard)
        g_sh = [jax.device_put(g, shard) for g in grads]
        sharded = jax.jit(run)(p_sh, g_sh)
        rows = []
        for a, b, p0, sh in zip(jax.tree.leaves(single), jax.tree.leaves(sharded), jax.tree.leaves(params),
                                jax.tree.leaves(shard)):
            same_sharding = b.sharding.is_equivalent_to(sh, b.ndim)
            a, b, p0 = np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(p0, np.float64)
            rows.append({
                "sharded": not sh.is_fully_replicated,
                "same_sharding": bool(same_sharding),
                "change": float(np.linalg.norm(a - p0)),
                "rel_err": float(np.linalg.norm(a - b) / (np.linalg.norm(a - p0) + 1e-30)),
            })
        out[name] = rows
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.slow
@pytest.mark.extended
def test_eight_devices_give_the_one_device_update() -> None:
    """mini (per-head and per-neuron means across sharded axes), adamH and muonH (per-matrix
    norms, and muonH's Newton-Schulz, across sharded axes) on the speedrun model, FSDP x
    tensor-parallel over 8 simulated CPU devices, equal the 1-device update."""
    configs = {
        "mini": {"type": "mini", "learning_rate": 1e-2, "weight_decay": 0.1, "warmup": 0},
        "adamH": {"type": "adamH", "learning_rate": 1e-2, "adam_lr": 1e-2, "warmup": 0},
        "muonH": {"type": "muonH", "learning_rate": 1e-2, "adam_lr": 1e-2, "warmup": 0},
    }
    result = run_on_devices(SHARDING_SCRIPT, json.dumps(configs))
    for name, rows in result.items():
        assert sum(r["sharded"] for r in rows) >= 8, (name, rows)
        for r in rows:
            assert r["change"] > 0 and r["same_sharding"], (name, r)
            assert r["rel_err"] < 1e-5, (name, r)
