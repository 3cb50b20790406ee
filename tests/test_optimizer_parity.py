"""Trajectory parity of the foundation optimizers against torch.optim and written update rules.

Each optimizer runs 20 steps on the same random least-squares problem in both frameworks
(float32); parameters must agree to ~1e-5 relative. The schedule is held constant and clipping
is off, since torch applies neither; both are tested separately.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from marin_optim import AdamaxConfig, AdamConfig, AdamWConfig, LionConfig, SGDConfig

STEPS = 20
LR = 1e-2


def _problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(8, 6)).astype(np.float32)
    b = rng.normal(size=(8,)).astype(np.float32)
    w0 = rng.normal(size=(6,)).astype(np.float32)
    bias0 = rng.normal(size=(1,)).astype(np.float32)
    return a, b, w0, bias0


def _jax_trajectory(cfg, seed: int = 0) -> list[np.ndarray]:
    a, b, w0, bias0 = _problem(seed)
    params = {"w": jnp.asarray(w0), "bias": jnp.asarray(bias0)}

    def loss(p):
        return 0.5 * jnp.sum((a @ p["w"] + p["bias"] - b) ** 2)

    tx = cfg.build(STEPS)
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    out = []
    for _ in range(STEPS):
        params, state = step(params, state)
        out.append(np.concatenate([np.asarray(params["w"]), np.asarray(params["bias"])]))
    return out


def _torch_trajectory(make_opt, seed: int = 0) -> list[np.ndarray]:
    a, b, w0, bias0 = _problem(seed)
    w = torch.tensor(w0, requires_grad=True)
    bias = torch.tensor(bias0, requires_grad=True)
    opt = make_opt([w, bias])
    ta, tb = torch.tensor(a), torch.tensor(b)
    out = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = 0.5 * torch.sum((ta @ w + bias - tb) ** 2)
        loss.backward()
        opt.step()
        out.append(np.concatenate([w.detach().numpy().copy(), bias.detach().numpy().copy()]))
    return out


def _const(**kw):
    """Common settings that make our schedule constant and switch clipping off."""
    base = dict(learning_rate=LR, lr_schedule="constant", warmup=0, max_grad_norm=None)
    base.update(kw)
    return base


def _assert_close(ours, ref, rtol=2e-5, atol=2e-6):
    for t, (x, y) in enumerate(zip(ours, ref, strict=True)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=f"step {t + 1}")


CASES = {
    "adam": (
        lambda: AdamConfig(**_const(weight_decay=0.0, beta1=0.9, beta2=0.99, epsilon=1e-8)),
        lambda p: torch.optim.Adam(p, lr=LR, betas=(0.9, 0.99), eps=1e-8),
    ),
    "adamw": (
        lambda: AdamWConfig(
            **_const(weight_decay=0.1, beta1=0.8, beta2=0.95, epsilon=1e-6, default_weight_decay_mask=False)
        ),
        lambda p: torch.optim.AdamW(p, lr=LR, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1),
    ),
    "adamax": (
        lambda: AdamaxConfig(**_const(weight_decay=0.0, beta1=0.9, beta2=0.95, epsilon=1e-8)),
        lambda p: torch.optim.Adamax(p, lr=LR, betas=(0.9, 0.95), eps=1e-8),
    ),
    "sgd": (
        lambda: SGDConfig(**_const(momentum=0.0)),
        lambda p: torch.optim.SGD(p, lr=LR),
    ),
    "sgd_momentum": (
        lambda: SGDConfig(**_const(momentum=0.9)),
        lambda p: torch.optim.SGD(p, lr=LR, momentum=0.9),
    ),
    "sgd_nesterov": (
        lambda: SGDConfig(**_const(momentum=0.9, nesterov=True)),
        lambda p: torch.optim.SGD(p, lr=LR, momentum=0.9, nesterov=True),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_torch(name):
    ours, theirs = CASES[name]
    _assert_close(_jax_trajectory(ours()), _torch_trajectory(theirs))


def test_adamax_with_decoupled_decay_matches_torch_plus_decay():
    """torch's Adamax decay is L2; ours is decoupled, so compare with decay applied by hand."""
    cfg = AdamaxConfig(**_const(weight_decay=0.05, default_weight_decay_mask=False))

    class DecoupledAdamax(torch.optim.Adamax):
        def step(self, closure=None):
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.mul_(1 - LR * 0.05)
            return super().step(closure)

    _assert_close(
        _jax_trajectory(cfg), _torch_trajectory(lambda p: DecoupledAdamax(p, lr=LR, betas=(0.9, 0.95)))
    )


def _numpy_trajectory(update, seed: int = 0) -> list[np.ndarray]:
    """Runs a written update rule ``update(p, g, state, t) -> (p, state)`` in float64 numpy."""
    a, b, w0, bias0 = _problem(seed)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    p = np.concatenate([w0, bias0]).astype(np.float64)
    state: dict = {}
    out = []
    for t in range(1, STEPS + 1):
        r = a64 @ p[:6] + p[6] - b64
        g = np.concatenate([a64.T @ r, [r.sum()]])
        p, state = update(p, g, state, t)
        out.append(p.copy())
    return out


def test_lion_matches_written_rule():
    b1, b2, wd = 0.9, 0.99, 0.3

    def lion(p, g, s, t):
        m = s.get("m", np.zeros_like(p))
        u = np.sign(b1 * m + (1 - b1) * g)
        s["m"] = b2 * m + (1 - b2) * g
        return p - LR * (u + wd * p), s

    cfg = LionConfig(**_const(weight_decay=wd, beta1=b1, beta2=b2, default_weight_decay_mask=False))
    _assert_close(_jax_trajectory(cfg), _numpy_trajectory(lion), rtol=1e-5, atol=1e-5)


def test_adam_nesterov_matches_written_rule():
    b1, b2, eps = 0.9, 0.95, 1e-8

    def nadam(p, g, s, t):
        m = b1 * s.get("m", np.zeros_like(p)) + (1 - b1) * g
        v = b2 * s.get("v", np.zeros_like(p)) + (1 - b2) * g * g
        s.update(m=m, v=v)
        m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        return p - LR * m_hat / (np.sqrt(v_hat) + eps), s

    cfg = AdamConfig(**_const(weight_decay=0.0, nesterov=True, beta1=b1, beta2=b2, epsilon=eps))
    _assert_close(_jax_trajectory(cfg), _numpy_trajectory(nadam), rtol=1e-4, atol=1e-5)


def test_sgd_decoupled_decay_matches_written_rule():
    mom, wd = 0.9, 0.1

    def sgdw(p, g, s, t):
        buf = mom * s.get("b", np.zeros_like(p)) + g
        s["b"] = buf
        return p - LR * (buf + wd * p), s

    cfg = SGDConfig(**_const(momentum=mom, weight_decay=wd, default_weight_decay_mask=False))
    _assert_close(_jax_trajectory(cfg), _numpy_trajectory(sgdw), rtol=1e-5, atol=1e-5)


def test_global_clip_and_schedule_apply_like_the_written_rule():
    """Clip then Adam then decoupled decay then -lr(t), with a linear warmup and cosine decay."""
    b1, b2, eps, wd, clip = 0.9, 0.95, 1e-8, 0.1, 0.5
    warm = 4

    def lr_at(step):  # step = t - 1: the schedule sees the count before the update
        if step < warm:
            return LR * step / warm
        frac = (step - warm) / (STEPS - warm)
        return LR * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * frac)))

    def adamw_clipped(p, g, s, t):
        norm = np.linalg.norm(g)
        g = g * min(1.0, clip / norm)
        m = b1 * s.get("m", np.zeros_like(p)) + (1 - b1) * g
        v = b2 * s.get("v", np.zeros_like(p)) + (1 - b2) * g * g
        s.update(m=m, v=v)
        u = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        return p - lr_at(t - 1) * (u + wd * p), s

    cfg = AdamConfig(
        learning_rate=LR,
        lr_schedule="cosine",
        warmup=warm,
        min_lr_ratio=0.1,
        weight_decay=wd,
        max_grad_norm=clip,
        default_weight_decay_mask=False,
    )
    _assert_close(_jax_trajectory(cfg), _numpy_trajectory(adamw_clipped), rtol=1e-4, atol=1e-5)
