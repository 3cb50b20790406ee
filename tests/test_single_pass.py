"""The one-pass AdamW form (transforms/single_pass.py): torch parity, same state, skips, fallbacks.

The form is used on XLA:CPU with multi-output fusion on; here it is forced by patching
``single_pass_active`` (the compiled shape is tested in speedrun/test_cpu_fusion.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import marin_optim.transforms.single_pass as single_pass
from marin_optim import AdamConfig, AdamWConfig, OptimizerConfig, hyperparams

STEPS = 20


@pytest.fixture
def forced(monkeypatch):
    monkeypatch.setattr(single_pass, "single_pass_active", lambda: True)


def _problem():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(16, 6)).astype(np.float32)
    b = rng.normal(size=(16,)).astype(np.float32) * 4
    return a, b, rng.normal(size=(6,)).astype(np.float32), rng.normal(size=(1,)).astype(np.float32)


def _loss(p, a, b):
    return 0.5 * jnp.sum((a @ p["w"] + p["bias"] - b) ** 2)


def _run(cfg: OptimizerConfig, nan_at: int | None = None) -> list[tuple]:
    a, b, w0, bias0 = _problem()
    params = {"w": jnp.asarray(w0), "bias": jnp.asarray(bias0)}
    tx = cfg.build(STEPS)
    state = tx.init(params)

    @jax.jit
    def step(p, s, poison):
        loss, g = jax.value_and_grad(_loss)(p, a, b)
        g = jax.tree.map(lambda x: jnp.where(poison, jnp.nan, x), g)
        u, s = tx.update(g, s, p, loss=loss)
        return optax.apply_updates(p, u), s

    out = []
    for t in range(STEPS):
        params, state = step(params, state, t == nan_at)
        out.append((jax.device_get(params), jax.device_get(state)))
    return out


CFG = dict(
    learning_rate=3e-2,
    warmup=3,
    lr_schedule="cosine",
    weight_decay=0.1,
    max_grad_norm=2.0,  # active: the gradient norm starts near 40
    beta2=0.99,
)


def test_matches_torch_adamw_with_clip_schedule_and_decay_mask(forced):
    cfg = AdamWConfig(**CFG)
    ours = _run(cfg)
    lr = cfg.lr_scheduler(STEPS)
    a, b, w0, bias0 = _problem()
    w, bias = torch.tensor(w0, requires_grad=True), torch.tensor(bias0, requires_grad=True)
    # The default mask decays matrices, not biases: two torch groups.
    opt = torch.optim.AdamW(
        [{"params": [w], "weight_decay": 0.1}, {"params": [bias], "weight_decay": 0.0}],
        lr=float(lr(0)),
        betas=(0.9, 0.99),
        eps=1e-8,
    )
    ta, tb = torch.tensor(a), torch.tensor(b)
    assert float(torch.linalg.vector_norm(ta.T @ (ta @ w - tb)).detach()) > 10 * cfg.max_grad_norm
    for t in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = float(lr(t))
        opt.zero_grad()
        (0.5 * torch.sum((ta @ w + bias - tb) ** 2)).backward()
        torch.nn.utils.clip_grad_norm_([w, bias], cfg.max_grad_norm)
        opt.step()
        p = ours[t][0]
        np.testing.assert_allclose(p["w"], w.detach().numpy(), rtol=2e-5, atol=2e-6, err_msg=f"step {t + 1}")
        np.testing.assert_allclose(p["bias"], bias.detach().numpy(), rtol=2e-5, atol=2e-6)


def test_same_state_as_the_chain_up_to_rounding(forced, monkeypatch):
    cfg = AdamWConfig(**CFG)
    fused = _run(cfg)
    monkeypatch.setattr(single_pass, "single_pass_active", lambda: False)
    chain = _run(cfg)
    for (p1, s1), (p2, s2) in zip(fused, chain, strict=True):
        assert jax.tree.structure(s1) == jax.tree.structure(s2)
        for x, y in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2)), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_a_skipped_step_changes_nothing(forced):
    run = _run(AdamWConfig(**CFG), nan_at=5)
    (p4, s4), (p5, s5) = run[4], run[5]
    for x, y in zip(jax.tree.leaves((p4, s4)), jax.tree.leaves((p5, s5)), strict=True):
        if np.asarray(x).shape:  # every array (params, moments, guard windows) bitwise unchanged
            np.testing.assert_array_equal(x, y)
    assert hyperparams(s5)["skip/skipped_steps"] == 1
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(run[-1][0]))


def test_bare_and_adam_without_decay(forced, monkeypatch):
    for cfg in (
        AdamConfig(
            learning_rate=1e-2, lr_schedule="constant", warmup=0, max_grad_norm=None, skip_nonfinite=False
        ),
        AdamConfig(learning_rate=1e-2, weight_decay=0.0),
    ):
        fused = _run(cfg)
        monkeypatch.setattr(single_pass, "single_pass_active", lambda: False)
        chain = _run(cfg)
        monkeypatch.setattr(single_pass, "single_pass_active", lambda: True)
        np.testing.assert_allclose(fused[-1][0]["w"], chain[-1][0]["w"], rtol=1e-5)


@dataclass(frozen=True)
class _OwnDirection(AdamConfig):
    def direction(self):
        return optax.scale_by_adam(self.beta1, self.beta2, self.epsilon)


@pytest.mark.parametrize(
    ("cfg", "reason"),
    [
        (AdamWConfig(), None),
        (AdamWConfig(nesterov=True), "nesterov"),
        (AdamWConfig(mu_dtype="bfloat16"), "bfloat16"),
        (AdamWConfig(group_overrides=[{"params": ["*bias*"], "learning_rate": 1e-3}]), "group_overrides"),
        (_OwnDirection(), "_OwnDirection overrides direction()"),
    ],
)
def test_configs_it_does_not_apply_to_use_the_chain(cfg, reason, forced):
    got = cfg.single_pass_unsupported()
    assert got == reason if reason is None else reason in got
    if reason is not None:  # the plain chain, bitwise, even when the form is active
        params = {"w": jnp.ones((3, 2)), "bias": jnp.ones(2)}
        g = jax.tree.map(lambda x: x * 0.3, params)
        tx = cfg.build(10)
        plain = OptimizerConfig.build(cfg, 10)
        u1, _ = tx.update(g, tx.init(params), params, loss=jnp.float32(1))
        u2, _ = plain.update(g, plain.init(params), params, loss=jnp.float32(1))
        for x, y in zip(jax.tree.leaves(u1), jax.tree.leaves(u2), strict=True):
            np.testing.assert_array_equal(x, y)


def test_bfloat16_leaves_fall_back_to_the_chain(forced):
    cfg = AdamWConfig()
    params = {"w": jnp.ones((3, 2), jnp.bfloat16)}
    g = jax.tree.map(lambda x: x * 0.3, params)
    tx, plain = cfg.build(10), OptimizerConfig.build(cfg, 10)
    u1, _ = tx.update(g, tx.init(params), params)
    u2, _ = plain.update(g, plain.init(params), params)
    np.testing.assert_array_equal(u1["w"], u2["w"])
