"""The issue-5 optimizers torch lacks, against their written update rules in float64 numpy.

Each reference below is the paper's rule re-implemented from scratch (no call into our code or
optax), run on the same random least-squares problem as our config for 20 steps. The problem has
a matrix ``w``, a ``bias`` (exempt from decay under the default mask) and a 3-D tensor ``t``.
Our side is float32, so the tolerance is ``rtol=1e-4, atol=1e-5``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError
from marin_optim.optimizers.adaptive import duration_steps
from marin_optim.optimizers.schedule_free import eval_params
from marin_optim.state import hyperparams

STEPS = 20
KEYS = ("w", "bias", "t")


def _cfg(name: str, **kw):
    base = dict(lr_schedule="constant", warmup=0, max_grad_norm=None, default_weight_decay_mask=False)
    base.update(kw)
    return OptimizerConfig.get_choice_class(name)(**base)


def _problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.normal(size=s)
    data = dict(x=f(12, 5), y=f(12, 4), v=f(4), z=f(2, 3))
    init = dict(w=f(5, 4), bias=f(4), t=f(2, 3, 4))
    return data, init


def _grad64(data):
    """Exact float64 gradient of the loss, written out."""
    x, y, v, z = data["x"], data["y"], data["v"], data["z"]

    def grad(p):
        r = (x @ p["w"] + p["bias"] - y) / y.size
        s = (np.einsum("ijk,k->ij", p["t"], v) - z) / z.size
        return {"w": x.T @ r, "bias": r.sum(0), "t": np.einsum("ij,k->ijk", s, v)}

    return grad


def _loss32(data):
    x, y, v, z = (jnp.asarray(data[k], jnp.float32) for k in ("x", "y", "v", "z"))

    def loss(p):
        fit = 0.5 * jnp.mean((x @ p["w"] + p["bias"] - y) ** 2)
        return fit + 0.5 * jnp.mean((jnp.einsum("ijk,k->ij", p["t"], v) - z) ** 2)

    return loss


def _flat(p) -> np.ndarray:
    return np.concatenate([np.asarray(p[k], np.float64).ravel() for k in KEYS])


def ours(cfg, steps: int = STEPS, with_state: bool = False):
    data, init = _problem()
    loss = _loss32(data)
    params = {k: jnp.asarray(v, jnp.float32) for k, v in init.items()}
    tx = cfg.build(steps)
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        value, g = jax.value_and_grad(loss)(p)
        u, s = tx.update(g, s, p, loss=value, obj_fn=loss)
        return optax.apply_updates(p, u), s

    out = []
    for _ in range(steps):
        params, state = step(params, state)
        out.append(_flat(params))
    return (out, params, state) if with_state else out


def reference(rule, steps: int = STEPS):
    """Runs ``rule(p, g, state, t) -> p`` (dicts of float64 arrays; ``state`` a dict it may fill)."""
    data, init = _problem()
    grad = _grad64(data)
    p = {k: np.array(v, np.float64) for k, v in init.items()}
    state: dict = {"p0": {k: v.copy() for k, v in p.items()}}
    out = []
    for t in range(1, steps + 1):
        p = rule(p, grad(p), state, t)
        out.append(_flat(p))
    return out


def assert_close(a, b, rtol=1e-4, atol=1e-5):
    for step, (x, y) in enumerate(zip(a, b, strict=True)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=f"step {step + 1}", equal_nan=False)


def _zeros(p):
    return {k: np.zeros_like(v) for k, v in p.items()}


def _moment(state, name, p):
    return state.setdefault(name, _zeros(p))


LR = 1e-2


def test_adabelief():
    b1, b2, eps, eps_root, wd = 0.9, 0.99, 1e-8, 1e-12, 0.1

    def rule(p, g, s, t):
        m, v = _moment(s, "m", p), _moment(s, "s", p)
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * (g[k] - m[k]) ** 2 + eps_root
            u = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            p[k] = p[k] - LR * (u + wd * p[k])
        return p

    cfg = _cfg("adabelief", learning_rate=LR, weight_decay=wd, beta2=b2, epsilon=eps, epsilon_root=eps_root)
    assert_close(ours(cfg), reference(rule))


@pytest.mark.parametrize("warmup", [None, 10])
def test_ademamix(warmup):
    b1, b2, b3, alpha, eps, wd = 0.9, 0.99, 0.999, 4.0, 1e-8, 0.1

    def schedules(step):  # the paper's warmups, evaluated at the step count before the update
        if warmup is None:
            return alpha, b3
        frac = min(step / warmup, 1.0)
        lb1, lb3 = math.log(b1), math.log(b3)
        return min(step * alpha / warmup, alpha), min(
            math.exp(lb1 * lb3 / ((1 - frac) * lb3 + frac * lb1)), b3
        )

    def rule(p, g, s, t):
        a_t, b3_t = schedules(t - 1)
        m1, m2, v = _moment(s, "m1", p), _moment(s, "m2", p), _moment(s, "v", p)
        for k in p:
            m1[k] = b1 * m1[k] + (1 - b1) * g[k]
            m2[k] = b3_t * m2[k] + (1 - b3_t) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            u = (m1[k] / (1 - b1**t) + a_t * m2[k]) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            p[k] = p[k] - LR * (u + wd * p[k])
        return p

    cfg = _cfg(
        "ademamix",
        learning_rate=LR,
        weight_decay=wd,
        beta2=b2,
        beta3=b3,
        alpha=alpha,
        alpha_beta3_warmup=warmup,
    )
    assert_close(ours(cfg), reference(rule))


def test_ademamix_logs_its_schedules():
    cfg = _cfg("ademamix", alpha_beta3_warmup=8)
    _, _, state = ours(cfg, steps=4, with_state=True)
    logged = hyperparams(state)  # the values injected for the last update (step count 3)
    frac, lb1, lb3 = 3 / 8, math.log(0.9), math.log(0.9999)
    assert float(logged["ademamix_alpha"]) == pytest.approx(5.0 * 3 / 8)
    expected_b3 = math.exp(lb1 * lb3 / ((1 - frac) * lb3 + frac * lb1))
    assert float(logged["ademamix_beta3"]) == pytest.approx(expected_b3, rel=1e-6)


def test_cautious_ademamix_masks_the_scheduled_direction():
    """cautious_wrapper around AdEMAMix: the mask acts on the direction built with this step's injected
    alpha and beta3 (the warmup), and the decay stays unmasked."""
    b1, b2, b3, alpha, eps, wd, warmup = 0.9, 0.99, 0.999, 4.0, 1e-8, 0.1, 10
    lb1, lb3 = math.log(b1), math.log(b3)

    def rule(p, g, s, t):
        frac = min((t - 1) / warmup, 1.0)
        a_t = min((t - 1) * alpha / warmup, alpha)
        b3_t = min(math.exp(lb1 * lb3 / ((1 - frac) * lb3 + frac * lb1)), b3)
        m1, m2, v = _moment(s, "m1", p), _moment(s, "m2", p), _moment(s, "v", p)
        for k in p:
            m1[k] = b1 * m1[k] + (1 - b1) * g[k]
            m2[k] = b3_t * m2[k] + (1 - b3_t) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            u = (m1[k] / (1 - b1**t) + a_t * m2[k]) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            phi = (u * g[k] > 0).astype(np.float64)
            u = u * phi * phi.size / (phi.sum() + 1)
            p[k] = p[k] - LR * (u + wd * p[k])
        return p

    base = _cfg(
        "ademamix",
        learning_rate=LR,
        weight_decay=wd,
        beta2=b2,
        beta3=b3,
        alpha=alpha,
        alpha_beta3_warmup=warmup,
    )
    cfg = OptimizerConfig.get_choice_class("cautious_wrapper")(base=base)
    assert_close(ours(cfg), reference(rule))


def test_token_durations_round_like_the_schedules():
    """10 tokens at 4 tokens per step are 3 steps (rounded up) for AdEMAMix's warmup, as for the
    learning-rate warmup."""
    cfg = _cfg(
        "ademamix",
        lr_schedule="linear",
        warmup=10,
        alpha_beta3_warmup=10,
        schedule_units="tokens",
        tokens_per_step=4,
    )
    n = 20
    assert duration_steps(cfg, 10, n) == cfg.schedule_context(n).duration_steps(10, n) == 3
    lr, alpha = cfg.lr_scheduler(n), cfg.hyperparameter_schedules(n)["ademamix_alpha"]
    assert float(lr(2)) < cfg.learning_rate and float(alpha(2)) < cfg.alpha
    assert float(lr(3)) == pytest.approx(cfg.learning_rate) and float(alpha(3)) == pytest.approx(cfg.alpha)
    assert duration_steps(cfg, 0.25, n) == cfg.schedule_context(n).duration_steps(0.25, n) == 5


@pytest.mark.parametrize("nesterov", [False, True])
def test_adopt_paper_form(nesterov):
    """``form: paper``: the paper's algorithm with clipping (the default form: the next test)."""
    b1, b2, eps, wd = 0.9, 0.99, 1e-6, 0.1

    def rule(p, g, s, t):
        m, v = _moment(s, "m", p), _moment(s, "v", p)
        if t == 1:  # initialise v with g0^2; no move
            for k in p:
                v[k] = g[k] ** 2
            return {k: p[k] - LR * wd * p[k] for k in p}
        bound = (t - 1) ** 0.25
        for k in p:
            n = np.clip(g[k] / np.maximum(np.sqrt(v[k]), eps), -bound, bound)
            m[k] = b1 * m[k] + (1 - b1) * n
            u = b1 * m[k] + (1 - b1) * n if nesterov else m[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            p[k] = p[k] - LR * (u + wd * p[k])
        return p

    cfg = _cfg(
        "adopt", form="paper", learning_rate=LR, weight_decay=wd, beta2=b2, epsilon=eps, nesterov=nesterov
    )
    assert_close(ours(cfg), reference(rule))


@pytest.mark.parametrize(("nesterov", "clip"), [(False, None), (True, None), (False, True)])
def test_adopt_levanter_form(nesterov, clip):
    """The default form, Levanter's rule: zero-initialised averages, ``v`` bias-corrected over the
    earlier steps and ``epsilon`` added, ``m`` bias-corrected counting the first (zero) step; no
    clip unless ``clip: true``."""
    b1, b2, eps, wd = 0.9, 0.99, 1e-6, 0.1
    clipped = []

    def rule(p, g, s, t):
        k = t - 1  # steps before this one
        m, v = _moment(s, "m", p), _moment(s, "v", p)
        for key in p:
            n = np.zeros_like(g[key]) if k == 0 else g[key] / (np.sqrt(v[key] / (1 - b2**k)) + eps)
            if clip and k > 0:
                clipped.append(bool(np.any(np.abs(n) > k**0.25)))
                n = np.clip(n, -(k**0.25), k**0.25)
            m[key] = b1 * m[key] + (1 - b1) * n
            v[key] = b2 * v[key] + (1 - b2) * g[key] ** 2
            u = b1 * m[key] + (1 - b1) * n if nesterov else m[key]
            p[key] = p[key] - LR * (u / (1 - b1 ** (k + 1)) + wd * p[key])
        return p

    cfg = _cfg(
        "adopt", learning_rate=LR, weight_decay=wd, beta2=b2, epsilon=eps, nesterov=nesterov, clip=clip
    )
    assert cfg.form == "levanter"
    assert_close(ours(cfg), reference(rule))
    assert any(clipped) == bool(clip)  # with clip: true, the clip was active at least once


@pytest.mark.parametrize("c_max", [0.05, 0.0])
def test_mars(c_max):
    """Levanter's MARS: ``max_grad_norm`` clips the corrected gradient ``c`` (0: no clip), never ``g``."""
    b1, b2, gamma, eps, wd = 0.95, 0.99, 0.025, 1e-8, 0.1

    def rule(p, g, s, t):
        prev = s.setdefault("prev", _zeros(p))
        m, v = _moment(s, "m", p), _moment(s, "v", p)
        c = {k: g[k] + gamma * b1 / (1 - b1) * (g[k] - prev[k]) for k in p}
        norm = math.sqrt(sum(float(np.sum(c[k] ** 2)) for k in p))
        if c_max:
            assert norm > c_max  # the clip is active
            c = {k: c[k] * min(1.0, c_max / norm) for k in p}
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * c[k]
            v[k] = b2 * v[k] + (1 - b2) * c[k] ** 2
            u = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            p[k] = p[k] - LR * (u + wd * p[k])
        s["prev"] = g
        return p

    # 0.05 is small enough that the clip is active at every step (g is larger too)
    cfg = _cfg("mars", learning_rate=LR, weight_decay=wd, max_grad_norm=c_max)
    assert_close(ours(cfg), reference(rule))


def test_levanter_rmsprop():
    b1, b2, eps, wd = 0.9, 0.99, 1e-30, 0.1

    def rule(p, g, s, t):
        ms, mom = _moment(s, "ms", p), _moment(s, "mom", p)
        for k in p:
            ms[k] = b2 * ms[k] + (1 - b2) * g[k] ** 2
            r = g[k] / (np.sqrt(ms[k] / (1 - b2**t)) + eps)
            mom[k] = b1 * mom[k] + (1 - b1) * r
            p[k] = p[k] - LR * (mom[k] / (1 - b1**t) + wd * p[k])
        return p

    assert_close(ours(_cfg("rmsprop", learning_rate=LR, weight_decay=wd)), reference(rule))


def _trust(p, u):
    pn, un = np.linalg.norm(p), np.linalg.norm(u)
    return 1.0 if pn == 0 or un == 0 else pn / un


def test_lamb_with_the_default_mask():
    """The bias is exempt from both decay and trust ratio (Levanter's default mask)."""
    b1, b2, eps, wd = 0.9, 0.999, 1e-6, 0.1

    def rule(p, g, s, t):
        m, v = _moment(s, "m", p), _moment(s, "v", p)
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            r = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            if k != "bias":
                r = r + wd * p[k]
                r = _trust(p[k], r) * r
            p[k] = p[k] - LR * r
        return p

    cfg = _cfg("lamb", learning_rate=LR, weight_decay=wd, default_weight_decay_mask=None)
    assert_close(ours(cfg), reference(rule))


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_with_the_default_mask(nesterov):
    lr, mom, coef, wd = 0.5, 0.9, 0.01, 1e-3

    def rule(p, g, s, t):
        b = _moment(s, "b", p)
        for k in p:
            r = g[k]
            if k != "bias":
                r = r + wd * p[k]
                pn, rn = np.linalg.norm(p[k]), np.linalg.norm(r)
                r = (coef * pn / rn if pn > 0 and rn > 0 else 1.0) * r
            b[k] = mom * b[k] + r
            u = r + mom * b[k] if nesterov else b[k]
            p[k] = p[k] - lr * u
        return p

    cfg = _cfg(
        "lars",
        learning_rate=lr,
        weight_decay=wd,
        momentum=mom,
        nesterov=nesterov,
        trust_coefficient=coef,
        default_weight_decay_mask=None,
    )
    assert_close(ours(cfg), reference(rule))


@pytest.mark.parametrize("safeguard", [False, True])
def test_prodigy_with_the_default_mask(safeguard):
    """Prodigy's Adam form (Mishchenko & Defazio, 2023), decay only on w and t."""
    b1, b2, eps, d0, coef, wd, lr = 0.9, 0.99, 1e-8, 1e-3, 1.0, 0.1, 1.0
    b3 = math.sqrt(b2)

    def rule(p, g, s, t):
        d = s.setdefault("d", d0)
        m, v, sums = _moment(s, "m", p), _moment(s, "v", p), _moment(s, "s", p)
        dlr = d * lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        inner = sum(float(np.sum(g[k] * (s["p0"][k] - p[k]))) for k in p)
        s["r"] = b3 * s.get("r", 0.0) + (d / d0) * dlr * inner
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * d * g[k]
            v[k] = b2 * v[k] + (1 - b2) * (d * g[k]) ** 2
            sums[k] = b3 * sums[k] + (d * d / d0 if safeguard else d * dlr / d0) * g[k]
        d_hat = coef * s["r"] / sum(float(np.sum(np.abs(sums[k]))) for k in p)
        for k in p:
            decay = wd * p[k] if k != "bias" else 0.0
            p[k] = p[k] - dlr * (m[k] / (np.sqrt(v[k]) + d * eps) + decay)
        s["d"] = max(d, d_hat)
        return p

    cfg = _cfg(
        "prodigy",
        learning_rate=lr,
        weight_decay=wd,
        beta2=b2,
        estim_lr0=d0,
        safeguard_warmup=safeguard,
        default_weight_decay_mask=None,
    )
    assert_close(ours(cfg), reference(rule), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("name", ["schedule_free_adamw", "optax_schedule_free_adamw"])
def test_schedule_free_adamw_and_its_eval_params(name):
    """Defazio et al., 2024, Algorithm 1 (AdamW form, decay at y), with warmup 5 then constant."""
    lr, b1, b2, eps, wd, power, warm = 0.05, 0.9, 0.99, 1e-8, 0.05, 2.0, 5

    def rule(p, g, s, t):
        z = s.setdefault("z", {k: v.copy() for k, v in p.items()})
        v = _moment(s, "v", p)
        lr_t = lr * (t - 1) / warm if t - 1 < warm else lr  # the schedule at the count before the update
        s["max_lr"] = max(s.get("max_lr", 0.0), lr_t)
        weight = s["max_lr"] ** power
        s["weight_sum"] = s.get("weight_sum", 0.0) + weight
        c = weight / s["weight_sum"] if s["weight_sum"] > 0 else 0.0
        y_new = {}
        for k in p:
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            step = g[k] / (np.sqrt(v[k] / (1 - b2**t)) + eps) + wd * p[k]
            x_prev = (p[k] - (1 - b1) * z[k]) / b1
            z[k] = z[k] - lr_t * step
            x = (1 - c) * x_prev + c * z[k]
            y_new[k] = b1 * x + (1 - b1) * z[k]
        s["x"] = {k: (y_new[k] - (1 - b1) * z[k]) / b1 for k in p}
        return y_new

    common = dict(learning_rate=lr, weight_decay=wd, warmup=warm, lr_schedule="constant")
    if name == "schedule_free_adamw":
        cfg = _cfg(name, beta1=b1, beta2=b2, epsilon=eps, weight_lr_power=power, **common)
    else:
        cfg = _cfg(name, b1=b1, b2=b2, eps=eps, weight_lr_power=power, **common)
    trajectory, params, state = ours(cfg, with_state=True)
    ref_state: dict = {}

    def recording(p, g, s, t):
        out = rule(p, g, s, t)
        ref_state.update(s)
        return out

    assert_close(trajectory, reference(recording))
    np.testing.assert_allclose(_flat(eval_params(state, params)), _flat(ref_state["x"]), rtol=1e-4, atol=1e-5)
    assert np.max(np.abs(_flat(eval_params(state, params)) - _flat(params))) > 1e-4


def test_eval_params_is_the_identity_without_an_average():
    _, params, state = ours(_cfg("adamw"), steps=2, with_state=True)
    assert eval_params(state, params) is params


def test_cautious_adamw():
    """C-AdamW (Liang et al., 2024, Algorithm 1): mask the Adam direction, rescale by n / (nnz + 1)."""
    b1, b2, eps, wd = 0.9, 0.95, 1e-8, 0.1

    def rule(p, g, s, t):
        m, v = _moment(s, "m", p), _moment(s, "v", p)
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            u = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            phi = (u * g[k] > 0).astype(np.float64)
            u = u * phi * phi.size / (phi.sum() + 1)
            p[k] = p[k] - LR * (u + wd * p[k])
        return p

    base = _cfg("adamw", learning_rate=LR, weight_decay=wd, beta1=b1, beta2=b2, epsilon=eps)
    cfg = OptimizerConfig.get_choice_class("cautious_wrapper")(base=base)
    assert_close(ours(cfg), reference(rule))


def test_cautious_on_a_whole_step_masks_the_step():
    """optax_adamw builds its whole step itself: the mask then applies to -lr (u + wd p)."""
    b1, b2, eps, wd = 0.9, 0.95, 1e-8, 0.1

    def rule(p, g, s, t):
        m, v = _moment(s, "m", p), _moment(s, "v", p)
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            step = -LR * ((m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps) + wd * p[k])
            phi = (step * g[k] < 0).astype(np.float64)
            p[k] = p[k] + step * phi * phi.size / (phi.sum() + 1)
        return p

    base = _cfg("optax_adamw", learning_rate=LR, weight_decay=wd, b1=b1, b2=b2, eps=eps)
    cfg = OptimizerConfig.get_choice_class("cautious_wrapper")(base=base)
    assert_close(ours(cfg), reference(rule))


@pytest.mark.parametrize("adamc", [False, True])
def test_cautious_is_levanters_c_adamw(adamc):
    """``cautious``: Adam's direction masked where it disagrees with ``g`` and rescaled by
    ``1 / (mean(phi) + eps)`` (Levanter's); ``adamc_weight_decay`` decays by ``wd lr_t / lr``."""
    b1, b2, eps, wd = 0.95, 0.95, 1e-8, 0.1
    cfg = _cfg("cautious", learning_rate=LR, weight_decay=wd, adamc_weight_decay=adamc, lr_schedule="linear")
    schedule = cfg.lr_scheduler(STEPS)
    masked = []

    def rule(p, g, s, t):
        lr = float(schedule(t - 1))
        decay = wd * lr / LR if adamc else wd
        m, v = _moment(s, "m", p), _moment(s, "v", p)
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            u = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            phi = (u * g[k] > 0).astype(np.float64)
            masked.append(phi.mean() < 1)
            u = u * phi / (phi.mean() + eps)
            p[k] = p[k] - lr * (u + decay * p[k])
        return p

    assert float(schedule(STEPS - 1)) < 0.5 * LR  # AdamC's factor moves
    assert_close(ours(cfg), reference(rule))
    assert any(masked)


def test_cautious_refuses_a_base_and_names_the_wrapper():
    with pytest.raises(ConfigError, match=r"cautious.base=\{type: lion, ...\}: .* type: cautious_wrapper"):
        OptimizerConfig.from_dict({"type": "cautious", "base": {"type": "lion"}})
    wrapped = OptimizerConfig.from_dict({"type": "cautious_wrapper", "base": {"type": "lion"}})
    assert type(wrapped.base).__name__ == "LionConfig"


def test_fields_levanter_declares_but_never_reads_are_refused_when_set():
    with pytest.raises(ConfigError, match=r"adopt.schedule_list=\['cosine'\]: .* never reads it"):
        OptimizerConfig.from_dict({"type": "adopt", "schedule_list": ["cosine"]})
    with pytest.raises(ConfigError, match=r"cautious.gamma=0.05: .* never reads it"):
        OptimizerConfig.from_dict({"type": "cautious", "gamma": 0.05})
    assert OptimizerConfig.from_dict({"type": "adopt", "schedule_list": None})
    assert OptimizerConfig.from_dict({"type": "cautious", "gamma": 0.025})


def test_noop_keeps_params_and_every_statistic():
    base = _cfg("adamw", learning_rate=LR, max_grad_norm=0.5)
    cfg = OptimizerConfig.get_choice_class("noop")(base=base)
    trajectory, _, state = ours(cfg, steps=5, with_state=True)
    _, init = _problem()
    for flat in trajectory:
        np.testing.assert_array_equal(flat, _flat({k: np.float32(v) for k, v in init.items()}))
    # The base optimizer's state advanced exactly as in training (same clip, same moments).
    _, _, trained_state = ours(base, steps=1, with_state=True)
    logged = hyperparams(state)
    assert float(logged["grad_norm"]) > 0.5  # the clip saw (and logged) the real gradient norm
    assert float(logged["learning_rate"]) == pytest.approx(LR)
    moments = [x for x in jax.tree.leaves(state) if getattr(x, "shape", ()) == (5, 4)]
    assert moments and any(float(jnp.max(jnp.abs(m))) > 0 for m in moments)
    assert hyperparams(trained_state).keys() == logged.keys()


def test_plain_noop_changes_nothing_and_logs_the_gradient_norm():
    trajectory, _, state = ours(_cfg("noop", max_grad_norm=1.0), steps=3, with_state=True)
    _, init = _problem()
    np.testing.assert_array_equal(trajectory[-1], _flat({k: np.float32(v) for k, v in init.items()}))
    assert float(hyperparams(state)["grad_norm"]) > 0
