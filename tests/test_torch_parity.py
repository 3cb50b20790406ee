"""Trajectory parity of the issue-5 optimizers with ``torch.optim``.

Each case runs 20 steps of the same random problem in both frameworks (float32): a matrix
least-squares term, a bias vector and a 3-D tensor (so Adafactor factors a batched matrix),
``loss = 0.5 mean((X W + b - Y)^2) + 0.5 mean((T . v - Z)^2)``, whose optimum lies far enough
away that no gradient changes sign (see ``_problem``). Our side runs the registered
config with a constant schedule, no warmup and no clip (torch has neither); parameters must agree
at every step to ``rtol=2e-5, atol=2e-6`` (Adam, AdamW, Adamax and SGD are covered in
``test_optimizer_parity.py``).

Deliberate differences, each tested below:

- Weight decay is decoupled (``p -= lr * wd * p``, AdamW-style) where torch's Adagrad, Adadelta,
  RMSprop and ASGD add an L2 term ``wd * p`` to the gradient (torch's Rprop has none): ours
  matches torch with the decoupled decay done by hand, and differs from torch's
  ``weight_decay``. (For ASGD, an SGD, the two agree to first order; it is checked against the
  written rule.) NAdam, RAdam and AMSGrad match torch's ``decoupled_weight_decay=True`` /
  ``AdamW(amsgrad=True)`` directly, and Adafactor's decay is decoupled in torch too.
- Rprop's ``learning_rate`` is torch's: the initial step size; a schedule multiplies each step
  by ``lr_t / lr``. (optax's ``scale_by_rprop`` lags one step behind; ``rprop`` does not use it.)
- ``nadamw`` with ``momentum_decay: null`` is optax's simplified NAdam, not torch's.
- ``amsgrad`` takes the maximum of the raw second moment (torch), not of the bias-corrected one
  (``optax.amsgrad``), and ``radam`` puts epsilon where torch and the RAdam authors do (on
  ``sqrt(v)``, not on ``sqrt(v_hat)`` as ``optax.radam``): both differ from optax's trajectories.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError
from marin_optim.optimizers.schedule_free import eval_params

STEPS = 20
RTOL, ATOL = 2e-5, 2e-6


def _cfg(name: str, **kw):
    base = dict(lr_schedule="constant", warmup=0, max_grad_norm=None, default_weight_decay_mask=False)
    base.update(kw)
    return OptimizerConfig.get_choice_class(name)(**base)


def _problem(seed: int = 0):
    """Random data whose optimum lies ~3 away from the start in every coordinate.

    Over 20 steps no coordinate reaches its optimum, so no gradient crosses zero: sign-sensitive
    rules (Adam's normalisation, Rprop, Adafactor) then amplify float32 rounding no more than
    the formulas themselves do, and tight tolerances measure the formulas, not chaos.
    """
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.normal(size=s).astype(np.float32)
    init = dict(w=f(5, 4), b=f(4), t=f(2, 3, 4))
    x, v = np.abs(f(12, 5)) + 0.5, np.abs(f(4)) + 0.5
    far = {k: a + np.float32(3.0) for k, a in init.items()}
    y = (x @ far["w"] + far["b"]).astype(np.float32)
    z = np.einsum("ijk,k->ij", far["t"], v).astype(np.float32)
    return dict(x=x, y=y, v=v, z=z), init


def _jax_loss(data):
    x, y, v, z = (jnp.asarray(data[k]) for k in ("x", "y", "v", "z"))

    def loss(p):
        fit = 0.5 * jnp.mean((x @ p["w"] + p["b"] - y) ** 2)
        return fit + 0.5 * jnp.mean((jnp.einsum("ijk,k->ij", p["t"], v) - z) ** 2)

    return loss


def _flat(p) -> np.ndarray:
    return np.concatenate([np.asarray(p[k]).ravel() for k in ("w", "b", "t")])


def jax_trajectory(cfg, seed: int = 0, with_state: bool = False):
    data, init = _problem(seed)
    loss = _jax_loss(data)
    params = {k: jnp.asarray(v) for k, v in init.items()}
    tx = cfg.build(STEPS)
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        value, g = jax.value_and_grad(loss)(p)
        u, s = tx.update(g, s, p, loss=value, obj_fn=loss)
        return optax.apply_updates(p, u), s

    out, states = [], []
    for _ in range(STEPS):
        params, state = step(params, state)
        out.append(_flat(params))
        states.append((params, state))
    return (out, states) if with_state else out


def torch_trajectory(make_opt, seed: int = 0, before_step=None, with_opt: bool = False):
    data, init = _problem(seed)
    t = {k: torch.tensor(v) for k, v in data.items()}
    params = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
    opt = make_opt(list(params.values()))
    out = []
    for _ in range(STEPS):
        opt.zero_grad()
        fit = 0.5 * torch.mean((t["x"] @ params["w"] + params["b"] - t["y"]) ** 2)
        loss = fit + 0.5 * torch.mean((torch.einsum("ijk,k->ij", params["t"], t["v"]) - t["z"]) ** 2)
        loss.backward()
        if before_step is not None:
            with torch.no_grad():
                before_step(params)
        opt.step()
        out.append(np.concatenate([params[k].detach().numpy().ravel().copy() for k in ("w", "b", "t")]))
    return (out, opt, params) if with_opt else out


def assert_close(ours, ref, rtol=RTOL, atol=ATOL):
    for step, (a, b) in enumerate(zip(ours, ref, strict=True)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"step {step + 1}", equal_nan=False)


def max_rel_error(ours, ref) -> float:
    return max(float(np.max(np.abs(a - b) / (np.abs(b) + 1e-6))) for a, b in zip(ours, ref, strict=True))


LR = 1e-2

CASES = {
    "nadam": (
        lambda: _cfg("nadamw", learning_rate=LR, weight_decay=0.0, beta1=0.9, beta2=0.999),
        lambda p: torch.optim.NAdam(p, lr=LR, betas=(0.9, 0.999), eps=1e-8, momentum_decay=4e-3),
    ),
    "nadamw_decoupled": (
        lambda: _cfg(
            "nadamw", learning_rate=LR, weight_decay=0.1, beta1=0.8, beta2=0.95, momentum_decay=0.01
        ),
        lambda p: torch.optim.NAdam(
            p, lr=LR, betas=(0.8, 0.95), momentum_decay=0.01, weight_decay=0.1, decoupled_weight_decay=True
        ),
    ),
    "radam": (
        lambda: _cfg("radam", learning_rate=LR, weight_decay=0.0, beta1=0.9, beta2=0.999),
        lambda p: torch.optim.RAdam(p, lr=LR, betas=(0.9, 0.999)),
    ),
    "radam_decoupled_fast_rectify": (
        # beta2 = 0.9: rho_t crosses 5 at step 6, so both branches of the rule are exercised.
        lambda: _cfg("radam", learning_rate=LR, weight_decay=0.1, beta1=0.9, beta2=0.9),
        lambda p: torch.optim.RAdam(
            p, lr=LR, betas=(0.9, 0.9), weight_decay=0.1, decoupled_weight_decay=True
        ),
    ),
    "amsgrad": (
        lambda: _cfg("amsgrad", learning_rate=LR, weight_decay=0.1, beta1=0.9, beta2=0.99),
        lambda p: torch.optim.AdamW(p, lr=LR, betas=(0.9, 0.99), weight_decay=0.1, amsgrad=True),
    ),
    "adagrad": (
        lambda: _cfg("adagrad", learning_rate=LR),
        lambda p: torch.optim.Adagrad(p, lr=LR),
    ),
    "adagrad_lr_decay_init_acc": (
        lambda: _cfg(
            "adagrad", learning_rate=0.1, lr_decay=0.05, initial_accumulator_value=0.3, epsilon=1e-6
        ),
        lambda p: torch.optim.Adagrad(p, lr=0.1, lr_decay=0.05, initial_accumulator_value=0.3, eps=1e-6),
    ),
    "adadelta": (
        lambda: _cfg("adadelta", learning_rate=1.0),
        lambda p: torch.optim.Adadelta(p, lr=1.0),
    ),
    "adadelta_rho": (
        lambda: _cfg("adadelta", learning_rate=0.5, rho=0.8, epsilon=1e-5),
        lambda p: torch.optim.Adadelta(p, lr=0.5, rho=0.8, eps=1e-5),
    ),
    "rmsprop": (
        lambda: _cfg("rmsprop_plain", learning_rate=LR),
        lambda p: torch.optim.RMSprop(p, lr=LR),
    ),
    "rmsprop_momentum": (
        lambda: _cfg("rmsprop_plain", learning_rate=LR, momentum=0.9),
        lambda p: torch.optim.RMSprop(p, lr=LR, momentum=0.9),
    ),
    "rmsprop_centered": (
        lambda: _cfg("rmsprop_plain", learning_rate=LR, centered=True, beta2=0.9),
        lambda p: torch.optim.RMSprop(p, lr=LR, alpha=0.9, centered=True),
    ),
    "rmsprop_centered_momentum": (
        lambda: _cfg("rmsprop_plain", learning_rate=LR, centered=True, momentum=0.5, epsilon=1e-6),
        lambda p: torch.optim.RMSprop(p, lr=LR, centered=True, momentum=0.5, eps=1e-6),
    ),
    "asgd": (
        lambda: _cfg("asgd", learning_rate=LR),
        lambda p: torch.optim.ASGD(p, lr=LR),
    ),
    "asgd_averaging": (
        lambda: _cfg("asgd", learning_rate=0.05, lambd=0.05, alpha=0.6, t0=5.0),
        lambda p: torch.optim.ASGD(p, lr=0.05, lambd=0.05, alpha=0.6, t0=5.0),
    ),
    "rprop": (
        lambda: _cfg("rprop", learning_rate=LR),
        lambda p: torch.optim.Rprop(p, lr=LR),
    ),
    "rprop_clamped_initial_step": (
        # torch clips the initial step 1e-7 to min_step_size at the first step; so do we.
        lambda: _cfg("rprop", learning_rate=1e-7, min_step_size=1e-3),
        lambda p: torch.optim.Rprop(p, lr=1e-7, step_sizes=(1e-3, 50.0)),
    ),
    "radam_large_eps": (
        lambda: _cfg("radam", learning_rate=LR, weight_decay=0.0, beta1=0.9, beta2=0.99, epsilon=0.1),
        lambda p: torch.optim.RAdam(p, lr=LR, betas=(0.9, 0.99), eps=0.1),
    ),
    "rprop_etas": (
        lambda: _cfg(
            "rprop", learning_rate=0.05, eta_minus=0.3, eta_plus=1.5, min_step_size=1e-3, max_step_size=0.2
        ),
        lambda p: torch.optim.Rprop(p, lr=0.05, etas=(0.3, 1.5), step_sizes=(1e-3, 0.2)),
    ),
    "adafactor": (
        lambda: _cfg("adafactor", learning_rate=LR),
        lambda p: torch.optim.Adafactor(p, lr=LR),
    ),
    "adafactor_decay": (
        lambda: _cfg("adafactor", learning_rate=0.05, weight_decay=0.1, beta2_decay=-0.5, epsilon2=1e-2),
        lambda p: torch.optim.Adafactor(p, lr=0.05, weight_decay=0.1, beta2_decay=-0.5, eps=(None, 1e-2)),
    ),
    "adafactor_relative_step": (
        # lr = 0.5 > 1/sqrt(t) from t = 5 on: the relative step min(lr, 1/sqrt(t)) takes over.
        lambda: _cfg("adafactor", learning_rate=0.5, weight_decay=0.1, epsilon2=1e-2),
        lambda p: torch.optim.Adafactor(p, lr=0.5, weight_decay=0.1, eps=(None, 1e-2)),
    ),
    "adafactor_clip_threshold": (
        lambda: _cfg("adafactor", learning_rate=0.1, clip_threshold=2.0, epsilon1=1e-3),
        lambda p: torch.optim.Adafactor(p, lr=0.1, d=2.0, eps=(1e-3, 1e-3)),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_torch(case):
    ours, theirs = CASES[case]
    assert_close(jax_trajectory(ours()), torch_trajectory(theirs))


def test_asgd_eval_params_are_torchs_averaged_iterates():
    ours, states = jax_trajectory(
        _cfg("asgd", learning_rate=0.05, lambd=0.05, alpha=0.6, t0=5.0), with_state=True
    )
    theirs, opt, params = torch_trajectory(
        lambda p: torch.optim.ASGD(p, lr=0.05, lambd=0.05, alpha=0.6, t0=5.0), with_opt=True
    )
    assert_close(ours, theirs)
    last_params, last_state = states[-1]
    averaged = eval_params(last_state, last_params)
    torch_ax = np.concatenate([opt.state[params[k]]["ax"].numpy().ravel() for k in ("w", "b", "t")])
    np.testing.assert_allclose(_flat(averaged), torch_ax, rtol=RTOL, atol=ATOL)
    # Averaging has started (t0 = 5), so the average is not the last iterate.
    assert np.max(np.abs(_flat(averaged) - ours[-1])) > 1e-4


# -- decoupled decay where torch adds L2 ----------------------------------------------------------

L2_CASES = {
    "adagrad": (dict(learning_rate=LR), lambda p, wd: torch.optim.Adagrad(p, lr=LR, weight_decay=wd)),
    "adadelta": (dict(learning_rate=1.0), lambda p, wd: torch.optim.Adadelta(p, lr=1.0, weight_decay=wd)),
    "rmsprop_plain": (
        dict(learning_rate=LR, momentum=0.9),
        lambda p, wd: torch.optim.RMSprop(p, lr=LR, momentum=0.9, weight_decay=wd),
    ),
    "rprop": (dict(learning_rate=LR), lambda p, wd: torch.optim.Rprop(p, lr=LR)),
}


@pytest.mark.parametrize("name", sorted(L2_CASES))
def test_weight_decay_is_decoupled_not_torchs_l2(name):
    kw, make = L2_CASES[name]
    wd = 0.2
    lr = kw["learning_rate"]
    ours = jax_trajectory(_cfg(name, weight_decay=wd, **kw))

    def decay(params):  # p *= 1 - lr * wd, before the step (the step does not read p)
        for p in params.values():
            p.mul_(1 - lr * wd)

    assert_close(ours, torch_trajectory(lambda p: make(p, 0.0), before_step=decay))
    if name != "rprop":  # torch's Rprop has no weight decay at all
        l2 = torch_trajectory(lambda p: make(p, wd))
        assert max(float(np.max(np.abs(a - b))) for a, b in zip(ours, l2, strict=True)) > 1e-4


def test_asgd_decoupled_decay_matches_the_written_rule():
    """p <- p (1 - lambd eta) - eta g - lr wd p, with eta = lr / (1 + lambd lr (t - 1))^alpha.

    (For SGD-like rules torch's L2 term and decoupled decay agree to first order in lr, so the
    by-hand torch comparison above would not tell them apart; the written rule does.)
    """
    lr, lambd, alpha, wd = 0.05, 0.05, 0.6, 0.2
    data, init = _problem()
    loss = _jax_loss(data)
    p = {k: v.astype(np.float64) for k, v in init.items()}
    ref = []
    for t in range(1, STEPS + 1):
        g = jax.grad(loss)({k: jnp.asarray(v, jnp.float32) for k, v in p.items()})
        eta = lr / (1 + lambd * lr * (t - 1)) ** alpha
        p = {k: p[k] * (1 - lambd * eta) - eta * np.asarray(g[k], np.float64) - lr * wd * p[k] for k in p}
        ref.append(np.concatenate([p[k].ravel() for k in ("w", "b", "t")]))
    ours = jax_trajectory(_cfg("asgd", learning_rate=lr, lambd=lambd, alpha=alpha, weight_decay=wd))
    assert_close(ours, ref, rtol=1e-4, atol=1e-5)


# -- the other deliberate differences ----------------------------------------------------------


def test_radam_differs_from_optax_radam_where_epsilon_sits():
    """Ours (= torch, case radam_large_eps) adds eps to sqrt(v); optax adds it to sqrt(v_hat)."""
    ours = jax_trajectory(_cfg("radam", learning_rate=LR, weight_decay=0.0, beta2=0.99, epsilon=0.1))
    assert np.max(np.abs(ours[-1] - _optax_trajectory(optax.radam(LR, b1=0.9, b2=0.99, eps=0.1))[-1])) > 1e-4


def test_radam_threshold_is_where_the_rectifier_is_real():
    with pytest.raises(ConfigError, match=r"radam.threshold=3.0: must be in \[4, inf\)"):
        _cfg("radam", threshold=3.0)
    # rho_inf = 4 at beta2 = 0.6: never rectified (rho_t < rho_inf), with nothing divided by
    # rho_inf - 4; torch (threshold 5) takes the same branch.
    ours = jax_trajectory(_cfg("radam", learning_rate=LR, weight_decay=0.0, beta2=0.6, threshold=4.0))
    ref = torch_trajectory(lambda p: torch.optim.RAdam(p, lr=LR, betas=(0.9, 0.6)))
    assert_close(ours, ref)


def test_rprop_schedule_scales_the_step():
    """Under a schedule, each step is the constant-LR step times lr_t / lr (the step sizes themselves
    adapt as in torch)."""
    cfg = _cfg("rprop", learning_rate=LR, lr_schedule="linear", min_lr_ratio=0.5)
    constant = jax_trajectory(_cfg("rprop", learning_rate=LR))
    scheduled = jax_trajectory(cfg)
    sched = cfg.lr_scheduler(STEPS)
    deltas_c = np.diff(np.stack([_flat(_problem()[1]), *constant]), axis=0)
    deltas_s = np.diff(np.stack([_flat(_problem()[1]), *scheduled]), axis=0)
    for t in range(3):  # early steps: same signs, so the same step sizes
        np.testing.assert_allclose(deltas_s[t], deltas_c[t] * float(sched(t)) / LR, rtol=1e-5, atol=1e-6)


def _optax_trajectory(tx) -> list[np.ndarray]:
    data, init = _problem()
    loss = _jax_loss(data)
    params = {k: jnp.asarray(v) for k, v in init.items()}
    state = tx.init(params)
    out = []
    for _ in range(STEPS):
        u, state = tx.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, u)
        out.append(_flat(params))
    return out


def test_nadamw_without_momentum_decay_is_optax_nadamw():
    ours = jax_trajectory(_cfg("nadamw", learning_rate=LR, weight_decay=0.1, momentum_decay=None, beta2=0.99))
    assert_close(ours, _optax_trajectory(optax.nadamw(LR, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.1)))
    torch_ref = torch_trajectory(
        lambda p: torch.optim.NAdam(
            p, lr=LR, betas=(0.9, 0.99), weight_decay=0.1, decoupled_weight_decay=True
        )
    )
    assert np.max(np.abs(ours[-1] - torch_ref[-1])) > 1e-5


def test_amsgrad_differs_from_optax_amsgrad():
    ours = jax_trajectory(_cfg("amsgrad", learning_rate=LR, weight_decay=0.0, beta2=0.99))
    assert np.max(np.abs(ours[-1] - _optax_trajectory(optax.amsgrad(LR, b1=0.9, b2=0.99))[-1])) > 1e-5
