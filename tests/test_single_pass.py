"""The one-pass forms (transforms/single_pass.py): references, same state as the chain, skips, fallbacks.

The forms are used on XLA:CPU with multi-output fusion on; here they are forced by patching
``single_pass_active`` (the one-loop-per-leaf shape of the compiled step is tested in
speedrun/test_cpu_fusion.py). Every run clips (the gradient norm starts near 40, the clip is 2)
and follows a warmup + cosine schedule, so the folded clip scale and learning rate are exercised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import marin_optim.transforms.single_pass as single_pass
from marin_optim import ConfigError, OptimizerConfig, hyperparams
from marin_optim.optimizers.adam import AdamConfig, AdamWConfig
from marin_optim.optimizers.rms import RMSPropConfig
from marin_optim.transforms.single_pass import ONE_PASS

STEPS = 20
CLIP = 2.0


@pytest.fixture
def forced(monkeypatch):
    monkeypatch.setattr(single_pass, "single_pass_active", lambda: True)


def _cfg(name: str, **kw) -> OptimizerConfig:
    base = dict(learning_rate=3e-2, warmup=3, lr_schedule="cosine", max_grad_norm=CLIP, weight_decay=0.0)
    base.update(kw)
    return OptimizerConfig.get_choice_class(name)(**base)


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


def _torch(cfg: OptimizerConfig, make_opt: Callable[[list], torch.optim.Optimizer]) -> list[dict]:
    """torch's optimizer with ``clip_grad_norm_`` and our schedule's learning rate at every step."""
    lr = cfg.lr_scheduler(STEPS)
    a, b, w0, bias0 = _problem()
    w, bias = torch.tensor(w0, requires_grad=True), torch.tensor(bias0, requires_grad=True)
    opt = make_opt([w, bias])
    ta, tb = torch.tensor(a), torch.tensor(b)
    assert float(torch.linalg.vector_norm(ta.T @ (ta @ w - tb)).detach()) > 10 * CLIP
    out = []
    for t in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = float(lr(t))
        opt.zero_grad()
        (0.5 * torch.sum((ta @ w + bias - tb) ** 2)).backward()
        torch.nn.utils.clip_grad_norm_([w, bias], CLIP)
        opt.step()
        out.append({"w": w.detach().numpy().copy(), "bias": bias.detach().numpy().copy()})
    return out


def _numpy(cfg: OptimizerConfig, direction: Callable, decay_bias: bool = False) -> list[dict]:
    """A written rule in float64: clip, ``direction(g, state, t) -> u``, then ``p -= lr (u + wd p)``."""
    lr = cfg.lr_scheduler(STEPS)
    a, b, w0, bias0 = (x.astype(np.float64) for x in _problem())
    p = np.concatenate([w0, bias0])
    decayed = np.array([1.0] * 6 + [1.0 if decay_bias else 0.0])  # the default mask: matrices only
    state: dict = {}
    out = []
    for t in range(1, STEPS + 1):
        r = a @ p[:6] + p[6] - b
        g = np.concatenate([a.T @ r, [r.sum()]])
        g = g * min(1.0, CLIP / np.linalg.norm(g))
        u = direction(g, state, t)
        p = p - float(lr(t - 1)) * (u + cfg.weight_decay * decayed * p)
        out.append({"w": p[:6].copy(), "bias": p[6:].copy()})
    return out


def _lion(b1, b2):
    def direction(g, s, t):
        m = s.get("m", np.zeros_like(g))
        s["m"] = b2 * m + (1 - b2) * g
        return np.sign(b1 * m + (1 - b1) * g)

    return direction


def _levanter_rmsprop(b1, b2, eps):
    def direction(g, s, t):
        s["v"] = b2 * s.get("v", np.zeros_like(g)) + (1 - b2) * g * g
        r = g / (np.sqrt(s["v"] / (1 - b2**t)) + eps)
        s["m"] = b1 * s.get("m", np.zeros_like(g)) + (1 - b1) * r
        return s["m"] / (1 - b1**t)

    return direction


def _decay_matrices_only(params: list) -> list[dict]:
    """torch groups for the default decay mask: the matrix decayed, the bias not."""
    return [{"params": [params[0]], "weight_decay": 0.1}, {"params": [params[1]], "weight_decay": 0.0}]


# name -> (config, reference trajectory of that config). torch's decay is L2 except AdamW's, so
# the others run without decay here; decoupled decay is in the written rules and in the
# comparison with the chain below.
REFERENCES: dict[str, tuple[Callable[[], OptimizerConfig], Callable[[OptimizerConfig], list[dict]]]] = {
    "adamw": (
        lambda: _cfg("adamw", weight_decay=0.1, beta2=0.99),
        lambda c: _torch(c, lambda p: torch.optim.AdamW(_decay_matrices_only(p), betas=(0.9, 0.99))),
    ),
    "adam_torch_betas": (
        lambda: _cfg("adamw", beta1=0.95, beta2=0.999, epsilon=1e-6),
        lambda c: _torch(c, lambda p: torch.optim.AdamW(p, betas=(0.95, 0.999), eps=1e-6, weight_decay=0)),
    ),
    "adamax": (
        lambda: _cfg("adamax"),
        lambda c: _torch(c, lambda p: torch.optim.Adamax(p, betas=(0.9, 0.95), eps=1e-8)),
    ),
    "adagrad": (
        lambda: _cfg("adagrad", lr_decay=0.05, initial_accumulator_value=0.3),
        lambda c: _torch(c, lambda p: torch.optim.Adagrad(p, lr_decay=0.05, initial_accumulator_value=0.3)),
    ),
    "rmsprop_plain": (
        lambda: _cfg("rmsprop_plain", learning_rate=1e-2),
        lambda c: _torch(c, lambda p: torch.optim.RMSprop(p, alpha=0.99, eps=1e-8)),
    ),
    "rmsprop_plain_momentum": (
        lambda: _cfg("rmsprop_plain", learning_rate=1e-2, momentum=0.9, beta2=0.9),
        lambda c: _torch(c, lambda p: torch.optim.RMSprop(p, alpha=0.9, momentum=0.9)),
    ),
    "sgd_momentum": (
        lambda: _cfg("sgd", learning_rate=1e-2, momentum=0.9),
        lambda c: _torch(c, lambda p: torch.optim.SGD(p, momentum=0.9)),
    ),
    "sgd_nesterov": (
        lambda: _cfg("sgd", learning_rate=1e-2, momentum=0.8, nesterov=True),
        lambda c: _torch(c, lambda p: torch.optim.SGD(p, momentum=0.8, nesterov=True)),
    ),
    "lion": (
        lambda: _cfg("lion", learning_rate=0.1, weight_decay=0.5, beta1=0.9, beta2=0.99),
        lambda c: _numpy(c, _lion(0.9, 0.99)),
    ),
    "lion_equal_betas": (
        lambda: _cfg("lion", learning_rate=0.1, weight_decay=0.5, beta1=0.95, beta2=0.95),
        lambda c: _numpy(c, _lion(0.95, 0.95)),
    ),
    "rmsprop": (
        lambda: _cfg("rmsprop", learning_rate=1e-2, weight_decay=0.1, eps=1e-8),
        lambda c: _numpy(c, _levanter_rmsprop(0.9, 0.99, 1e-8)),
    ),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_one_pass_form_matches_its_reference(name, forced):
    make_cfg, reference = REFERENCES[name]
    cfg = make_cfg()
    assert cfg.single_pass_unsupported() is None
    ours = _run(cfg)
    for t, ((p, _), ref) in enumerate(zip(ours, reference(cfg), strict=True)):
        for k in ("w", "bias"):
            np.testing.assert_allclose(p[k], ref[k], rtol=2e-5, atol=2e-6, err_msg=f"{name} {k} step {t + 1}")


CHAIN_CASES = {
    "adamw": dict(weight_decay=0.1, beta2=0.99),
    "adamax": dict(weight_decay=0.1),
    "lion": dict(learning_rate=0.1, weight_decay=0.5),
    "adagrad": dict(weight_decay=0.1, lr_decay=0.01),
    "rmsprop_plain": dict(learning_rate=1e-2, weight_decay=0.1, momentum=0.9),
    "rmsprop": dict(learning_rate=1e-2, weight_decay=0.1),
    "sgd": dict(learning_rate=1e-2, weight_decay=0.1, nesterov=True),
}


@pytest.mark.parametrize("name", sorted(CHAIN_CASES))
def test_same_state_as_the_chain_up_to_rounding(name, forced, monkeypatch):
    cfg = _cfg(name, **CHAIN_CASES[name])
    fused = _run(cfg)
    monkeypatch.setattr(single_pass, "single_pass_active", lambda: False)
    chain = _run(cfg)
    for (p1, s1), (p2, s2) in zip(fused, chain, strict=True):
        assert jax.tree.structure(s1) == jax.tree.structure(s2)
        # The state records which path ran (hyperparams(state)["one_pass"]); all else is equal.
        assert (float(s1.hyperparams[ONE_PASS]), float(s2.hyperparams[ONE_PASS])) == (1.0, 0.0)
        s1, s2 = (s._replace(hyperparams={**s.hyperparams, ONE_PASS: 0.0}) for s in (s1, s2))
        for x, y in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2)), strict=True):
            # Elementwise 1e-5, and 1e-6 of the array's scale where an entry cancels to near 0
            # (a momentum of alternating gradients): rounding, not a different rule.
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6 * float(np.max(np.abs(y), initial=1e-1)))


@pytest.mark.parametrize("name", ["adamw", "rmsprop_plain"])
def test_a_skipped_step_changes_nothing(name, forced):
    run = _run(_cfg(name, **CHAIN_CASES[name]), nan_at=5)
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
        # each run took the path it names, and they agree on every leaf, moments included
        assert (hyperparams(fused[-1][1])["one_pass"], hyperparams(chain[-1][1])["one_pass"]) == (1.0, 0.0)
        np.testing.assert_allclose(fused[-1][0]["w"], chain[-1][0]["w"], rtol=1e-5)
        moments = [
            np.sort(np.ravel(x)) for x in jax.tree.leaves(fused[-1][1]) if np.ndim(x) and np.size(x) > 1
        ]
        others = [
            np.sort(np.ravel(x)) for x in jax.tree.leaves(chain[-1][1]) if np.ndim(x) and np.size(x) > 1
        ]
        assert len(moments) == len(others) > 0
        for a, b in zip(sorted(moments, key=np.sum), sorted(others, key=np.sum), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


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
        (RMSPropConfig(centered=True), "centered"),
        (OptimizerConfig.get_choice_class("sgd")(momentum=0.0), "no one-pass rule"),
        (OptimizerConfig.get_choice_class("nadamw")(), "no one-pass rule"),
        (OptimizerConfig.get_choice_class("decoupled_lionw")(), "no one-pass rule"),
    ],
)
def test_configs_it_does_not_apply_to_use_the_chain(cfg, reason, forced, monkeypatch):
    got = cfg.single_pass_unsupported()
    assert got == reason if reason is None else reason in got
    if reason is not None:  # the plain chain, bitwise, even when the form is active
        params = {"w": jnp.ones((3, 2)), "bias": jnp.ones(2)}
        g = jax.tree.map(lambda x: x * 0.3, params)
        u1, _ = cfg.build(10).update(g, cfg.build(10).init(params), params, loss=jnp.float32(1))
        monkeypatch.setattr(single_pass, "single_pass_active", lambda: False)
        u2, _ = cfg.build(10).update(g, cfg.build(10).init(params), params, loss=jnp.float32(1))
        for x, y in zip(jax.tree.leaves(u1), jax.tree.leaves(u2), strict=True):
            np.testing.assert_array_equal(x, y)


def test_bfloat16_leaves_fall_back_to_the_chain(forced, monkeypatch):
    cfg = AdamWConfig()
    params = {"w": jnp.ones((3, 2), jnp.bfloat16)}
    g = jax.tree.map(lambda x: x * 0.3, params)
    tx = cfg.build(10)
    u1, _ = tx.update(g, tx.init(params), params)
    monkeypatch.setattr(single_pass, "single_pass_active", lambda: False)
    u2, _ = tx.update(g, tx.init(params), params)
    np.testing.assert_array_equal(u1["w"], u2["w"])


def test_update_path_is_selectable_and_visible(monkeypatch):
    params = {"w": jnp.ones((3, 2)), "bias": jnp.ones(2)}
    g = jax.tree.map(lambda x: x * 0.3, params)

    def path_taken(cfg):
        tx = cfg.build(10)
        _, state = tx.update(g, tx.init(params), params)
        return float(hyperparams(state)[ONE_PASS])

    monkeypatch.setattr(single_pass, "single_pass_active", lambda: False)  # as without the fusion pass
    assert AdamWConfig().update_path_plan() == ("chain", "XLA:CPU multi-output fusion is off")
    assert path_taken(AdamWConfig()) == 0.0
    assert AdamWConfig(update_path="one_pass").update_path_plan()[0] == "one_pass"
    assert path_taken(AdamWConfig(update_path="one_pass")) == 1.0
    monkeypatch.setattr(single_pass, "single_pass_active", lambda: True)
    assert AdamWConfig().update_path_plan() == ("one_pass", "adamw rule, XLA:CPU multi-output fusion on")
    assert path_taken(AdamWConfig(update_path="chain")) == 0.0
    # Options the rule does not cover: the reason, and an error when one_pass is asked for.
    assert AdamWConfig(nesterov=True).update_path_plan()[0] == "chain"
    with pytest.raises(ConfigError, match=r"adamw\.update_path='one_pass': .*nesterov"):
        AdamWConfig(nesterov=True, update_path="one_pass").build(10)
    with pytest.raises(ConfigError, match="update_path"):
        AdamWConfig(update_path="fast")
    assert ONE_PASS not in hyperparams(_state_of(OptimizerConfig.get_choice_class("nadamw")(), params, g))


def _state_of(cfg, params, g):
    tx = cfg.build(10)
    return tx.update(g, tx.init(params), params)[1]


def test_a_fallback_says_why(forced, caplog):
    params = {"w": jnp.ones((3, 2), jnp.bfloat16)}
    state = _state_of(AdamWConfig(), params, jax.tree.map(lambda x: x * 0.3, params))
    assert "falls back to the chain: leaves of dtype bfloat16" in caplog.text
    assert float(hyperparams(state)[ONE_PASS]) == 0.0


def test_the_recorded_path_is_each_steps_even_after_a_restore(monkeypatch):
    """A state saved by a one-pass run and resumed where the chain runs says 0 after one step."""
    monkeypatch.setattr(single_pass, "single_pass_active", lambda: False)
    params = {"w": jnp.ones((3, 2))}
    tx = AdamWConfig().build(10)
    state = tx.init(params)
    state = state._replace(hyperparams={**state.hyperparams, ONE_PASS: jnp.float32(1.0)})
    _, state = tx.update(params, state, params)
    assert float(hyperparams(state)[ONE_PASS]) == 0.0
