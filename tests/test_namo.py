"""NAMO, NAMO-D and grug_muon against their written rules in NumPy (float64), without Levanter.

NAMO / NAMO-D: Zhang et al., 2026, https://arxiv.org/abs/2602.17080 (Algorithms 1 and 2, as in
the authors' code). Ours runs in float32, the reference in float64: Newton-Schulz amplifies the
float32 rounding of its input (a few 1e-7) to ~1e-6 of the result over 5 steps, so results agree
to 2e-5 of the update's scale; a difference of meaning (a wrong norm axis, a missed cap or bias
correction) is above 1e-2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from marin_optim import OptimizerConfig
from marin_optim.errors import ConfigError
from marin_optim.labels import GrugLabeler
from marin_optim.transforms.namo import namo, namo_d

SIMPLE = (3.4445, -4.7750, 2.0315)
ATOL = 2e-5


def ns(g: np.ndarray, steps: int = 5, eps: float = 1e-8) -> np.ndarray:
    """Newton-Schulz with the paper's (``simple``) coefficients, on a (rows, cols) matrix."""
    a, b, c = SIMPLE
    x = g / (np.linalg.norm(g) + eps)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def reference(params, grads, *, columns, lr, wd, decays, mu=0.95, mu2=0.99, scale_coeff=0.2, clamp_c=0.75):
    """The written rule over steps ``t = 1..T``; leaves are (batch, fan_in, fan_out) arrays in the
    ``x @ W`` layout, so the paper's (out, in) matrix is the transpose and a column a row here."""
    ws = {k: np.asarray(v, np.float64).copy() for k, v in params.items()}
    ms = {k: np.zeros_like(v) for k, v in ws.items()}
    vs = {k: None for k in ws}
    changes, capped = [], False
    for t, grad in enumerate(grads, start=1):
        step = {}
        for k, w in ws.items():
            g = np.asarray(grad[k], np.float64)
            ms[k] = mu * ms[k] + (1 - mu) * g
            u = mu * ms[k] + (1 - mu) * g  # Nesterov
            base = lr * np.sqrt(1 - mu2**t) / (1 - mu**t + 1e-12)
            out = np.empty_like(w)
            for i in range(w.shape[0]):
                wm, gm, um = w[i].T, g[i].T, u[i].T  # (out, in)
                m, n = wm.shape
                shape = scale_coeff * np.sqrt(max(m, n))
                rate = wd if decays[k] else 0.0
                if not columns:
                    v_prev = 0.0 if vs[k] is None else vs[k][i]
                    v = mu2 * v_prev + (1 - mu2) * np.sum(gm**2)
                    alpha = min(base * np.linalg.norm(um) / (np.sqrt(v) + 1e-8), 1.0)
                    capped |= alpha == 1.0 or alpha * shape > 1.0
                    delta = -rate * alpha * wm - min(alpha * shape, 1.0) * ns(um)
                else:
                    v_prev = 0.0 if vs[k] is None else vs[k][i]
                    v = mu2 * v_prev + (1 - mu2) * np.sum(gm**2, axis=0)
                    s = np.linalg.norm(um, axis=0) / (np.sqrt(v) + 1e-8)
                    s = np.clip(s, clamp_c * s.mean(), s.mean() / clamp_c)
                    capped |= bool(np.any(base * s > 1.0) or np.any(base * s * shape > 1.0))
                    keep = np.maximum(1 - rate * np.minimum(base * s, 1.0), 0.0)
                    delta = wm * (keep - 1) - ns(um) * np.minimum(base * s * shape, 1.0)
                out[i] = delta.T
                if vs[k] is None:
                    vs[k] = np.zeros((w.shape[0], *np.shape(v)))
                vs[k][i] = v
            step[k] = out
        for k in ws:
            ws[k] = ws[k] + step[k]
        changes.append(step)
    return changes, capped


def tree(seed: int, scale: float):
    rng = np.random.default_rng(seed)
    return {
        "w": (scale * rng.standard_normal((1, 24, 16))).astype(np.float32),  # fan_in 24 > fan_out 16
        "stack": (scale * rng.standard_normal((3, 8, 20))).astype(np.float32),  # 3 matrices, wide
    }


@pytest.mark.parametrize("columns", [False, True], ids=["namo", "namo_d"])
@pytest.mark.parametrize("lr", [0.02, 3.0], ids=["lr_0.02", "lr_3_caps_hit"])
def test_namo_is_the_written_rule(columns, lr):
    params = tree(0, 1.0)
    grads = [tree(1 + t, 0.01 * (1 + t)) for t in range(4)]  # growing gradients move v and the ratio
    decays = {"w": True, "stack": False}
    rule = namo_d if columns else namo
    tx = rule(learning_rate=lr, weight_decay=0.1, weight_decay_mask=decays)
    p, state = {k: jnp.asarray(v) for k, v in params.items()}, None
    state = tx.init(p)
    expected, capped = reference(params, grads, columns=columns, lr=lr, wd=0.1, decays=decays)
    assert capped == (lr == 3.0)  # the large rate reaches the caps min(., 1), the small one not
    update = jax.jit(tx.update)
    for t, g in enumerate(grads):
        u, state = update({k: jnp.asarray(v) for k, v in g.items()}, state, p)
        for k in params:
            scale = np.abs(expected[t][k]).max()
            np.testing.assert_allclose(np.asarray(u[k]), expected[t][k], rtol=0, atol=ATOL * scale, err_msg=k)
        p = optax.apply_updates(p, u)


def test_namo_d_clamp_one_gives_every_column_the_mean_rate():
    """``clamp_c = 1``: every column of a matrix gets the same rate, so with no decay the update
    is NAMO's orthogonal step at the mean column scale (a check of the clamp independent of the
    reference)."""
    params = {"w": np.zeros((1, 12, 6), np.float32)}
    g = {"w": np.random.default_rng(0).standard_normal((1, 12, 6)).astype(np.float32)}
    tx = namo_d(learning_rate=1e-3, clamp_c=1.0)
    u, _ = tx.update({"w": jnp.asarray(g["w"])}, tx.init(params), params)
    ratios = np.asarray(u["w"][0]) / ns(g["w"][0].astype(np.float64).T).T
    np.testing.assert_allclose(ratios, ratios.mean(), rtol=1e-3)


def test_namo_config_is_the_transform_on_matrices_and_adamw_elsewhere():
    cfg = OptimizerConfig.from_yaml("type: namo\nwarmup: 0\nlr_schedule: constant\nmax_grad_norm: null")
    rng = np.random.default_rng(0)
    params = {"proj": jnp.asarray(rng.standard_normal((24, 16)), jnp.float32), "gain": jnp.ones((16,))}
    grads = {
        "proj": jnp.asarray(0.01 * rng.standard_normal((24, 16)), jnp.float32),
        "gain": jnp.full((16,), 0.01),
    }
    tx = cfg.build(10)
    u, _ = tx.update(grads, tx.init(params), params)
    expected = reference(
        {"proj": np.asarray(params["proj"])[None]},
        [{"proj": np.asarray(grads["proj"])[None]}],
        columns=False,
        lr=1e-2,
        wd=0.1,
        decays={"proj": True},
    )[0][0]["proj"][0]
    np.testing.assert_allclose(np.asarray(u["proj"]), expected, rtol=0, atol=ATOL * np.abs(expected).max())
    # AdamW's first step on the gain: -adam_lr (sign(g) + wd p), p = 1 (a plain leaf is decayed)
    np.testing.assert_allclose(np.asarray(u["gain"]), -6e-4 * (1 + 0.1), rtol=1e-4)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mu2": 1.0}, "namo.mu2=1.0"),
        ({"coefficient_type": "cubic"}, "quintic"),
        ({"cautious_weight_decay": True}, "namo.cautious_weight_decay=True"),
        ({"scale_coeff": 0.0}, "namo.scale_coeff"),
    ],
)
def test_namo_refuses_bad_fields(fields, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        OptimizerConfig.get_choice_class("namo")(**fields)


def test_namo_d_has_levanters_fields_and_defaults():
    cfg = OptimizerConfig.get_choice_class("namoD")()
    assert (cfg.learning_rate, cfg.adam_lr, cfg.momentum, cfg.mu2, cfg.weight_decay) == (
        1e-2,
        6e-4,
        0.95,
        0.99,
        0.1,
    )
    assert (cfg.col_state_clamp_c, cfg.coefficient_type, cfg.max_grad_norm, cfg.clip_scope) == (
        0.75,
        "simple",
        1.0,
        "adam",
    )


# -- grug_muon ---------------------------------------------------------------------------------


def grug_tree():
    z = lambda *s: np.zeros(s, np.float32)
    return {
        "token_embed": z(32, 16),
        "lm_head": z(16, 32),
        "blocks": {
            "attn": {"w_q": z(16, 16), "w_Output": z(16, 16)},
            "mlp": {"w_up_gate": z(2, 16, 48), "w_down": z(2, 24, 16), "w_other": z(2, 16, 8)},
            "norm_stack": z(2, 16),
            "norm": z(16),
        },
    }


def test_grug_routing_is_levanters_rule():
    """2-D arrays and stacks named w_up_gate / w_down take Muon unless the path names embed,
    lm_head or output (any case); a 2-D stack of norm gains is a 'matrix' there too."""
    kinds = GrugLabeler().kinds(grug_tree())
    assert kinds == {
        "token_embed": "embedding",
        "lm_head": "head",
        "blocks": {
            "attn": {"w_q": "matrix", "w_Output": "head"},
            "mlp": {"w_up_gate": "matrix", "w_down": "matrix", "w_other": "vector"},
            "norm_stack": "matrix",
            "norm": "vector",
        },
    }


def test_grug_muon_step_is_muon_on_fan_in_fan_out_arrays():
    """First step, Nesterov: U = (1 + momentum) G, so the change is -lr sqrt(max(1, out/in)) NS(G)
    for a (fan_in 16, fan_out 48) array, per layer of a stack."""
    cfg = OptimizerConfig.from_yaml(
        "type: grug_muon\nwarmup: 0\nlr_schedule: constant\nlearning_rate: 0.02\ncoefficient_type: simple"
    )
    params = jax.tree.map(jnp.asarray, grug_tree())
    g = np.random.default_rng(0).standard_normal((2, 16, 48)).astype(np.float32)
    grads = jax.tree.map(jnp.zeros_like, params)
    grads["blocks"]["mlp"]["w_up_gate"] = jnp.asarray(g)
    tx = cfg.build(10)
    u, _ = tx.update(grads, tx.init(params), params)
    for i in range(2):
        expected = -0.02 * np.sqrt(48 / 16) * ns(g[i].astype(np.float64))
        np.testing.assert_allclose(
            np.asarray(u["blocks"]["mlp"]["w_up_gate"][i]),
            expected,
            rtol=0,
            atol=ATOL * np.abs(expected).max(),
        )
