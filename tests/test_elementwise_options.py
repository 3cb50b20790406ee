"""Levanter's options of ``adam`` and ``lion`` against their written rules, in NumPy (no Levanter).

``update_rms_clipping`` (a per-block RMS clip, per layer of scan-stacked modules),
``clip_update_norm`` (the update norm clipped against its recent history), both applied to
``u + wd p`` before the learning rate, and ``adamc_weight_decay`` (AdamC); the checks Levanter
makes on them; Lion's defaults and its unused ``epsilon``. Parity with Levanter itself:
tests/levanter/test_dropin_elementwise.py.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import haliax as hax
import haliax.nn as hnn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from marin_optim import AdamConfig, ConfigError, LionConfig, OptimizerConfig, hyperparams
from marin_optim.optimizers.adam import ClipUpdateNormConfig
from marin_optim.transforms.clipping import clip_by_block_rms, clip_by_historical_norm
from marin_optim.transforms.decoupled import adamc_weight_decay

STEPS = 12


def _rms_clip(u: np.ndarray, threshold: float) -> np.ndarray:
    return u / max(1.0, float(np.sqrt(np.mean(u.astype(np.float64) ** 2))) / threshold)


class _HistoricalClip:
    """The written rule of ``clip_by_historical_norm``, on float64 norms."""

    def __init__(self, window: int, sigma: float):
        self.window, self.sigma, self.norms = window, sigma, []

    def scale(self, norm: float) -> float:
        history = self.norms[-self.window :]
        factor = 1.0
        if len(history) >= max(2, self.window // 2):
            limit = np.mean(history) + self.sigma * max(np.std(history), 1e-6)
            factor = limit / max(norm, 1e-6) if norm > limit else 1.0
        self.norms.append(norm)
        return factor


def test_block_rms_clip_takes_each_stacked_layer_as_a_block():
    layers, d_in, d_out = hax.Axis("layers", 3), hax.Axis("in", 4), hax.Axis("out", 5)
    stack = hnn.Stacked.init(layers, hnn.Linear)(d_in, d_out, key=jax.random.split(jax.random.PRNGKey(0), 3))
    tree = eqx.filter({"stack": stack, "plain": jnp.ones((2, 3))}, eqx.is_array)
    per_layer = hax.named(jnp.asarray([0.01, 1.0, 10.0]), (layers,))
    tree = eqx.tree_at(lambda t: t["stack"].stacked.weight, tree, tree["stack"].stacked.weight * per_layer)
    tree = eqx.tree_at(lambda t: t["plain"], tree, jnp.arange(6.0).reshape(2, 3))
    tx = clip_by_block_rms(0.1)
    clipped, _ = tx.update(tree, tx.init(tree))

    weight = np.asarray(tree["stack"].stacked.weight.array)  # (layers, out, in)
    expected = np.stack([_rms_clip(w, 0.1) for w in weight])
    np.testing.assert_allclose(clipped["stack"].stacked.weight.array, expected, rtol=1e-6)
    assert not np.allclose(expected, _rms_clip(weight, 0.1))  # one block per leaf would differ
    np.testing.assert_allclose(clipped["plain"], _rms_clip(np.arange(6.0).reshape(2, 3), 0.1), rtol=1e-6)
    small = hax.named(jnp.full((2, 2), 1e-3), ("a", "b"))  # under the threshold: unchanged
    np.testing.assert_array_equal(tx.update(small, None)[0].array, small.array)


def test_historical_norm_clip_matches_its_written_rule():
    rng = np.random.default_rng(0)
    norms = np.abs(1.0 + 0.1 * rng.standard_normal(30))
    norms[[9, 10, 20]] = [5.0, 4.0, 3.0]  # spikes, the second one right after the first
    directions = rng.standard_normal((30, 7)).astype(np.float32)
    tx = clip_by_historical_norm(window=8, sigma=2.0)
    state, reference, clipped = tx.init(None), _HistoricalClip(8, 2.0), 0
    for norm, direction in zip(norms, directions, strict=True):
        u = {"w": jnp.asarray(direction / np.linalg.norm(direction) * norm)}
        out, state = tx.update(u, state)
        factor = reference.scale(float(optax.global_norm(u)))
        clipped += factor < 1.0
        np.testing.assert_allclose(out["w"], np.asarray(u["w"]) * factor, rtol=1e-5)
        assert float(state.clip_scale) == pytest.approx(factor, rel=1e-5)
    assert clipped >= 3


def _adamw_reference(cfg: AdamConfig, grads, params, *, decay_factor=None, clip=None) -> np.ndarray:
    """AdamW in float64: p -= lr_t * clip(u + wd_t * decay_factor_t * p)."""
    lr = cfg.lr_scheduler(STEPS)
    wd = dataclasses.replace(cfg, adamc_weight_decay=False).weight_decay_scheduler(STEPS)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    b1, b2, eps = cfg.beta1, cfg.beta2, cfg.epsilon
    for t, g in enumerate(grads, start=1):
        lr_t = float(lr(t - 1))
        wd_t = float(wd(t - 1) if callable(wd) else wd) * (decay_factor(t - 1) if decay_factor else 1.0)
        step = {}
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            u = m[k] / (1 - b1**t) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            step[k] = u + wd_t * p[k]
        step = clip(step) if clip else step
        p = {k: p[k] - lr_t * step[k] for k in p}
    return p


def _ours(cfg: AdamConfig, grads, params):
    tx = cfg.build(STEPS)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for g in grads:
        u, state = step({k: jnp.asarray(x) for k, x in g.items()}, state, params)
        params = optax.apply_updates(params, u)
    return params, state


def _problem(scales=None):
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.standard_normal((6, 4)), jnp.float32), "b": jnp.ones(4, jnp.float32)}
    grads = []
    for t in range(STEPS):
        s = 1.0 if scales is None else scales[t]
        grads.append(
            {k: (s * rng.standard_normal(np.shape(x))).astype(np.float32) for k, x in params.items()}
        )
    return params, grads


_COMMON = dict(
    learning_rate=1e-2,
    weight_decay=0.5,
    max_grad_norm=None,
    default_weight_decay_mask=False,
    update_path="chain",
)


def test_update_rms_clipping_clips_the_decayed_step_per_leaf():
    params, grads = _problem()
    cfg = AdamConfig(**_COMMON, update_rms_clipping=0.3, warmup=2)
    expected = _adamw_reference(
        cfg, grads, params, clip=lambda s: {k: _rms_clip(x, 0.3) for k, x in s.items()}
    )
    unclipped = _adamw_reference(cfg, grads, params)
    got, _ = _ours(cfg, grads, params)
    for k in params:
        np.testing.assert_allclose(got[k], expected[k], rtol=2e-5, atol=1e-6)
        assert not np.allclose(expected[k], unclipped[k], rtol=1e-3)


def test_clip_update_norm_clips_the_decayed_step_against_its_history():
    scales = [1.0] * STEPS
    scales[5] = scales[9] = 30.0  # a gradient spike moves Adam's update away from its usual norm
    params, grads = _problem(scales)
    cfg = AdamConfig(**_COMMON, beta1=0.0, beta2=0.9, warmup=0, clip_update_norm=ClipUpdateNormConfig(4, 0.5))
    history = _HistoricalClip(4, 0.5)
    factors = []

    def clip(step):
        factors.append(history.scale(float(np.sqrt(sum(np.sum(x**2) for x in step.values())))))
        return {k: x * factors[-1] for k, x in step.items()}

    expected = _adamw_reference(cfg, grads, params, clip=clip)
    got, state = _ours(cfg, grads, params)
    assert min(factors) < 0.9  # the rule did clip
    for k in params:
        np.testing.assert_allclose(got[k], expected[k], rtol=2e-5, atol=1e-6)
    assert float(hyperparams(state)["update_clip_scale"]) == pytest.approx(factors[-1], rel=1e-5)


def test_adamc_scales_the_decay_by_the_relative_learning_rate_on_top_of_its_schedule():
    params, grads = _problem()
    cfg = AdamConfig(
        **_COMMON, adamc_weight_decay=True, warmup=3, lr_schedule="linear", min_lr_ratio=0.0,
        weight_decay_end=0.1, weight_decay_schedule="linear",
    )  # fmt: skip
    lr = cfg.lr_scheduler(STEPS)
    expected = _adamw_reference(cfg, grads, params, decay_factor=lambda step: float(lr(step)) / 1e-2)
    got, state = _ours(cfg, grads, params)
    for k in params:
        np.testing.assert_allclose(got[k], expected[k], rtol=2e-5, atol=1e-6)
    # the logged weight decay is the one applied: wd_t * lr_t / peak, at the last step
    wd = dataclasses.replace(cfg, adamc_weight_decay=False).weight_decay_scheduler(STEPS)
    last = STEPS - 1
    applied = float(wd(last)) * float(lr(last)) / 1e-2
    assert float(hyperparams(state)["weight_decay"]) == pytest.approx(applied, rel=1e-6)
    without = _adamw_reference(dataclasses.replace(cfg, adamc_weight_decay=False), grads, params)
    assert not np.allclose(expected["w"], without["w"], rtol=1e-4)


def test_adamc_keeps_the_one_pass_form():
    cfg = AdamConfig(adamc_weight_decay=True, learning_rate=1e-2, warmup=3, lr_schedule="linear")
    assert cfg.single_pass_unsupported() is None
    params, grads = _problem()
    chain, _ = _ours(dataclasses.replace(cfg, update_path="chain"), grads, params)
    one_pass, state = _ours(dataclasses.replace(cfg, update_path="one_pass"), grads, params)
    assert float(hyperparams(state)["one_pass"]) == 1.0
    for k in params:
        np.testing.assert_allclose(one_pass[k], chain[k], rtol=1e-5, atol=1e-7)


def test_adamc_schedule_helper():
    schedule = adamc_weight_decay(optax.linear_schedule(0.2, 0.0, 10), lambda t: 1e-3 * (1 - t / 20), 1e-3)
    assert float(schedule(5)) == pytest.approx(0.1 * 0.75)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"update_rms_clipping": 0.0}, r"adam.update_rms_clipping=0.0: must be in \(0, inf\)"),
        ({"update_rms_clipping": -1.0}, r"adam.update_rms_clipping=-1.0: must be in \(0, inf\)"),
        (
            {"update_rms_clipping": 1.0, "clip_update_norm": {}},
            r"adam.update_rms_clipping=1.0 and clip_update_norm=.*: set at most one",
        ),
        ({"clip_update_norm": {"sigma_factor": 0.0}}, r"clip_update_norm.sigma_factor=0.0: must be in \(0"),
        (
            {"clip_update_norm": {"rolling_interval_length": 1}},
            r"clip_update_norm.rolling_interval_length=1: must be an int >= 2",
        ),
    ],
)
def test_levanters_checks_of_the_update_clips(fields, message):
    with pytest.raises(ConfigError, match=message):
        OptimizerConfig.from_dict({"type": "adam", **fields})


def test_clip_update_norm_loads_as_a_nested_block():
    cfg = OptimizerConfig.from_yaml("type: adam\nclip_update_norm: {rolling_interval_length: 64}\n")
    assert cfg.clip_update_norm == ClipUpdateNormConfig(rolling_interval_length=64, sigma_factor=3.0)
    assert OptimizerConfig.from_yaml(cfg.to_yaml()) == cfg
    assert cfg.single_pass_unsupported() is not None  # a clip over whole blocks: the chain


def test_lion_has_levanters_defaults_and_refuses_an_epsilon():
    cfg = LionConfig()
    assert (cfg.learning_rate, cfg.weight_decay, cfg.beta1, cfg.beta2) == (6e-4, 0.1, 0.9, 0.95)
    assert OptimizerConfig.from_yaml("type: lion\nepsilon: 1.0e-8\n") == cfg
    with pytest.raises(ConfigError, match=r"lion.epsilon=1e-06: Lion has no epsilon .*remove it"):
        LionConfig(epsilon=1e-6)
