"""Scion against a numpy re-implementation of Levanter's ``scion`` (Pethick et al. 2025)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from marin_optim.errors import ConfigError
from marin_optim.optimizers.scion import ScionConfig
from marin_optim.state import hyperparams

CONSTANT = dict(warmup=0, lr_schedule="constant", max_grad_norm=None)


def ns_numpy(g: np.ndarray, steps: int, eps: float = 1e-8) -> np.ndarray:
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.astype(np.float64)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / (np.linalg.norm(x) + eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


@pytest.mark.parametrize(("max_norm", "scope"), [(None, "signum"), (1.0, "signum"), (1.0, "all")])
def test_scion_matches_numpy_reference(max_norm, scope) -> None:
    """Levanter's rule written out: the spectral branch's exponential average (never clipped with
    clip_scope: signum), the sign branch's gradients clipped by their own norm before its average
    (or every gradient by the global norm with clip_scope: all)."""
    rng = np.random.default_rng(0)
    params = {
        "w": rng.standard_normal((24, 16)).astype(np.float32),  # (out, in) via the override
        "wte": rng.standard_normal((12, 16)).astype(np.float32),
        "bias": rng.standard_normal(24).astype(np.float32),
    }
    # norms far above max_grad_norm, then below it: each step's clip factor differs (sign and
    # Newton-Schulz ignore a common factor, not the relative weights of the averaged steps)
    grads = [
        {k: scale * rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
        for scale in (1.0, 10.0, 0.01)
    ]
    lr, ratio, mom, beta1, wd = 0.02, 0.25, 0.95, 0.9, 0.1
    cfg = ScionConfig(
        learning_rate=lr,
        weight_decay=wd,
        coefficient_type="simple",
        param_labels={"w": "matrix(in=1, out=0)"},
        default_weight_decay_mask=False,  # decay every leaf, biases included, in both branches
        **{**CONSTANT, "max_grad_norm": max_norm},
        clip_scope=scope,
    )
    tx = cfg.build(10)
    p = jax.tree.map(jnp.asarray, params)
    state = tx.init(p)
    step = jax.jit(tx.update)
    for g in grads:
        u, state = step(jax.tree.map(jnp.asarray, g), state, p)
        p = optax.apply_updates(p, u)

    ref = {k: v.astype(np.float64) for k, v in params.items()}
    bufs = {k: np.zeros_like(v) for k, v in ref.items()}
    for g in grads:
        g = dict(g)
        if max_norm is not None:
            keys = list(g) if scope == "all" else ["wte", "bias"]
            norm = np.sqrt(sum(np.sum(g[k].astype(np.float64) ** 2) for k in keys))
            g.update({k: g[k] * min(1.0, max_norm / norm) for k in keys})
        bufs["w"] = mom * bufs["w"] + (1 - mom) * g["w"]
        o = np.sqrt(max(1.0, 24 / 16)) * ns_numpy(bufs["w"], steps=10)
        ref["w"] = ref["w"] - lr * (o + wd * ref["w"])
        for k in ("wte", "bias"):
            bufs[k] = beta1 * bufs[k] + (1 - beta1) * g[k]
            ref[k] = ref[k] - lr * ratio * (np.sign(bufs[k]) + wd * ref[k])
    for k in params:
        np.testing.assert_allclose(np.asarray(p[k]), ref[k], rtol=1e-4, atol=1e-5, err_msg=k)
    hp = hyperparams(state)
    assert float(hp["learning_rate"]) == pytest.approx(lr)
    assert float(hp["signum_learning_rate"]) == pytest.approx(lr * ratio)
    table = cfg.describe_labels(params)
    assert "matrix -> scion" in table and "embedding -> signum" in table and "vector -> signum" in table


def test_scion_validation() -> None:
    for kwargs, match in [
        ({"scion_to_signum_lr": 0.0}, "scion_to_signum_lr"),
        ({"backend_steps": -1}, "backend_steps"),
        ({"scion_epsilon": -1e-3}, "scion_epsilon"),
        ({"beta1": 1.0}, "beta1"),
        ({"coefficient_type": "cubic"}, "coefficient_type"),
        ({"lr": 0.1}, "scion.lr=0.1: Levanter declares lr but never reads it"),
        ({"clip_scope": "adam"}, "clip_scope"),
    ]:
        with pytest.raises(ConfigError, match=match):
            ScionConfig(**kwargs)
