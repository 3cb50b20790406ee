"""LLM Foundry / Composer semantics: decay scaled by lr_t / lr, and the outlier-aware Lions.

References are written out in numpy: the decoupled rules with the schedule's values, and LLM
Foundry's delayed-moving-average outlier detector re-implemented with ``collections.deque``
(as its ``OutlierDetector`` keeps it), driven by synthetic gradient sequences with spikes.
"""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError
from marin_optim.state import hyperparams
from marin_optim.transforms.outliers import clip_outlier_norms, delayed_mean

STEPS = 24
KEYS = ("w", "bias")


def _cfg(name: str, **kw):
    base = dict(max_grad_norm=None, default_weight_decay_mask=None)
    base.update(kw)
    return OptimizerConfig.get_choice_class(name)(**base)


def _gradients(seed: int = 0, spikes: dict[int, float] | None = None):
    """A gradient sequence per step: random, with whole-step spikes (step -> factor)."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(STEPS):
        factor = (spikes or {}).get(t, 1.0)
        out.append({"w": rng.normal(size=(4, 3)) * factor, "bias": rng.normal(size=(3,)) * factor})
    return out


def _init():
    rng = np.random.default_rng(42)
    return {"w": rng.normal(size=(4, 3)), "bias": rng.normal(size=(3,))}


def ours(cfg, grads):
    params = {k: jnp.asarray(v, jnp.float32) for k, v in _init().items()}
    tx = cfg.build(STEPS)
    state = tx.init(params)
    update = jax.jit(tx.update)
    out = []
    for g in grads:
        u, state = update({k: jnp.asarray(v, jnp.float32) for k, v in g.items()}, state, params)
        params = optax.apply_updates(params, u)
        out.append({k: np.asarray(v, np.float64) for k, v in params.items()})
    return out, state


def assert_close(a, b, rtol=1e-5, atol=1e-6):
    for step, (x, y) in enumerate(zip(a, b, strict=True)):
        for k in KEYS:
            np.testing.assert_allclose(
                x[k], y[k], rtol=rtol, atol=atol, err_msg=f"step {step + 1} {k}", equal_nan=False
            )


def _lrs(cfg) -> list[float]:
    schedule = cfg.lr_scheduler(STEPS)
    return [float(schedule(t)) for t in range(STEPS)]


SCHEDULED = dict(learning_rate=1e-2, warmup=4, lr_schedule="cosine", min_lr_ratio=0.1)


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_decoupled_adamw_decays_by_the_relative_learning_rate(wd):
    b1, b2, eps = 0.9, 0.95, 1e-8
    cfg = _cfg("decoupled_adamw", weight_decay=wd, **SCHEDULED)
    lrs, peak = _lrs(cfg), cfg.learning_rate
    p, m, v, ref = _init(), {}, {}, []
    for t, (g, lr) in enumerate(zip(_gradients(), lrs, strict=True), start=1):
        for k in KEYS:
            decay = wd if k != "bias" else 0.0  # Levanter's default mask exempts biases
            p[k] = p[k] * (1 - lr / peak * decay)
            m[k] = b1 * m.get(k, 0) + (1 - b1) * g[k]
            v[k] = b2 * v.get(k, 0) + (1 - b2) * g[k] ** 2
            p[k] = p[k] - lr * (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
        ref.append({k: a.copy() for k, a in p.items()})
    assert_close(ours(cfg, _gradients())[0], ref)


def test_decoupled_decay_is_not_multiplied_by_the_learning_rate():
    """With wd = 0.01 the weights shrink by 1% per step at the peak, whatever the LR is."""
    zero = {k: np.zeros_like(v) for k, v in _init().items()}
    for lr in (1e-3, 1e-1):
        cfg = _cfg("decoupled_lionw", learning_rate=lr, weight_decay=0.01, lr_schedule="constant", warmup=0)
        params = {k: jnp.asarray(v, jnp.float32) for k, v in _init().items()}
        tx = cfg.build(4)
        # Zero gradient: Lion's sign(0) = 0, so only the decay moves the weights.
        u, _ = tx.update({k: jnp.asarray(v, jnp.float32) for k, v in zero.items()}, tx.init(params), params)
        np.testing.assert_allclose(np.asarray(u["w"]), -0.01 * _init()["w"], rtol=1e-5)
        np.testing.assert_array_equal(np.asarray(u["bias"]), 0.0)


def _lion_reference(cfg, grads, lr_scale=None, clip=None):
    """DecoupledLionW: p *= 1 - (lr_t / lr) wd; p -= lr_t sign(lerp(m, g, 1 - b1)); m = lerp(m, g, 1 - b2)."""
    b1, b2, wd, peak = cfg.beta1, cfg.beta2, cfg.weight_decay, cfg.learning_rate
    p, m, ref = _init(), {k: 0.0 for k in KEYS}, []
    for t, (g, lr) in enumerate(zip(grads, _lrs(cfg), strict=True)):
        if clip is not None:
            g = clip(t, g)
        for k in KEYS:
            lr_k = lr * (lr_scale(t, k, m[k], g[k]) if lr_scale else 1.0)
            decay = wd if k != "bias" else 0.0
            p[k] = p[k] * (1 - lr_k / peak * decay)
            p[k] = p[k] - lr_k * np.sign(b1 * m[k] + (1 - b1) * g[k])
            m[k] = b2 * m[k] + (1 - b2) * g[k]
        ref.append({k: a.copy() for k, a in p.items()})
    return ref


def test_decoupled_lionw_matches_the_written_rule():
    cfg = _cfg("decoupled_lionw", weight_decay=0.02, **SCHEDULED)
    assert_close(ours(cfg, _gradients())[0], _lion_reference(cfg, _gradients()))


class Detector:
    """LLM Foundry's OutlierDetector: compare with the mean of observations delay..2*delay ago."""

    def __init__(self, threshold: float, delay: int) -> None:
        self.recent: collections.deque = collections.deque(maxlen=delay)
        self.delayed: collections.deque = collections.deque(maxlen=delay)
        self.threshold = threshold

    def insert(self, obs: float) -> bool:
        if len(self.recent) >= self.recent.maxlen:
            self.delayed.append(self.recent.popleft())
        self.recent.append(obs)
        mean = self.mean()
        return mean is not None and obs > self.threshold * mean

    def mean(self) -> float | None:
        return sum(self.delayed) / len(self.delayed) if self.delayed else None


def test_delayed_mean_matches_the_deque_detector():
    rng = np.random.default_rng(3)
    delay, size = 4, 8
    history, detector = jnp.zeros((size,), jnp.float32), Detector(1.0, delay)
    for count in range(30):
        obs = float(rng.uniform(0.5, 2.0))
        history = history.at[count % size].set(obs)
        detector.insert(obs)
        mean, known = delayed_mean(history, jnp.asarray(count), delay)
        assert bool(known) == (detector.mean() is not None)
        if detector.mean() is not None:
            assert float(mean) == pytest.approx(detector.mean(), rel=1e-6)


def test_clip_outlier_norms_matches_llm_foundry():
    threshold, delay = 2.0, 3
    grads = _gradients(spikes={8: 10.0, 9: 6.0, 15: 8.0})
    detectors = {k: Detector(threshold, delay) for k in KEYS}
    tx = clip_outlier_norms(threshold, delay)
    state = tx.init({k: jnp.zeros(v.shape) for k, v in grads[0].items()})
    clipped = 0
    for g in grads:
        out, state = tx.update({k: jnp.asarray(v, jnp.float32) for k, v in g.items()}, state)
        for k in KEYS:
            norm = float(np.linalg.norm(g[k]))
            expected = g[k]
            if detectors[k].insert(norm):
                clipped += 1
                expected = g[k] / norm * detectors[k].mean() * threshold
            np.testing.assert_allclose(np.asarray(out[k]), expected, rtol=1e-5, atol=1e-6)
    assert clipped >= 3
    assert int(state.log_values()["outlier_clips"]) == clipped


def test_clip_lion_matches_the_written_rule():
    threshold, delay = 2.0, 3
    cfg = _cfg("clip_lion", weight_decay=0.02, outlier_threshold=threshold, delay_interval=delay, **SCHEDULED)
    grads = _gradients(spikes={8: 10.0, 15: 8.0})
    detectors = {k: Detector(threshold, delay) for k in KEYS}

    def clip(t, g):
        out = {}
        for k in KEYS:
            norm = float(np.linalg.norm(g[k]))
            out[k] = g[k] / norm * detectors[k].mean() * threshold if detectors[k].insert(norm) else g[k]
        return out

    result, state = ours(cfg, grads)
    assert_close(result, _lion_reference(cfg, grads, clip=clip))
    assert int(hyperparams(state)["outlier_clips"]) >= 2


def test_adalr_lion_matches_the_written_rule():
    threshold, delay, timeout, penalty, min_scale = 1.5, 2, 3, 0.5, 0.2
    cfg = _cfg(
        "adalr_lion",
        weight_decay=0.02,
        outlier_threshold=threshold,
        delay_interval=delay,
        timeout=timeout,
        lr_penalty=penalty,
        min_scale=min_scale,
        **SCHEDULED,
    )
    b2 = cfg.beta2
    grads = _gradients(spikes={6: 30.0, 7: 30.0, 8: 30.0, 14: 40.0})
    detectors = {k: Detector(threshold, delay) for k in KEYS}
    outliers: dict[str, list[int]] = {k: [] for k in KEYS}
    scales_seen = []

    def lr_scale(t, k, m, g):
        if detectors[k].insert(float(np.linalg.norm(b2 * m + (1 - b2) * g))):
            outliers[k].append(t)
        outliers[k] = [ts for ts in outliers[k] if t - ts <= timeout]
        scale = max(min_scale, penalty ** len(outliers[k]))
        scales_seen.append(scale)
        return scale

    result, state = ours(cfg, grads)
    assert_close(result, _lion_reference(cfg, grads, lr_scale=lr_scale))
    assert min(scales_seen) == min_scale  # the penalty and its floor were exercised
    last_step = scales_seen[-len(KEYS) :]  # one scale per tensor at the final step
    assert float(hyperparams(state)["adalr_min_lr_scale"]) == pytest.approx(min(last_step))


@pytest.mark.parametrize("name", ["decoupled_adamw", "decoupled_lionw", "clip_lion", "adalr_lion"])
def test_decay_must_be_a_shrink_factor(name):
    with pytest.raises(ConfigError, match="weight_decay"):
        _cfg(name, weight_decay=1.0)
