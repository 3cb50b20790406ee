"""Sophia-H against its written rule in NumPy, on quadratics whose Hessian is known.

``L(w) = 0.5 sum_i d_i w_i^2 - b^T w`` has the diagonal Hessian ``diag(d)``, so a Rademacher
probe ``u`` (``u_i^2 = 1``) gives Hutchinson's estimate ``u * (H u) = d`` exactly at every draw:
the whole run is then deterministic and can be written out by hand.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError
from marin_optim.state import hyperparams
from marin_optim.transforms.sophia import hutchinson_diagonal, hutchinson_probes

D = np.array([0.5, 2.0, 8.0, 30.0, 0.05])
B = np.array([1.0, -2.0, 0.5, 3.0, -0.2])
W0 = np.array([0.7, -1.2, 2.0, 0.3, -3.0])


def objective(p):
    w = p["w"]
    return 0.5 * jnp.sum(jnp.asarray(D, jnp.float32) * w * w) - jnp.asarray(B, jnp.float32) @ w


def config(**kw):
    fields = dict(
        type="sophia",
        learning_rate=0.05,
        lr_schedule="constant",
        warmup=0,
        weight_decay=0.1,
        default_weight_decay_mask=False,
        beta1=0.9,
        beta2=0.5,
        gamma=0.2,
        update_interval=3,
        hessian_probe="rademacher",
    )
    fields.update(kw)
    return OptimizerConfig.from_dict(fields)


def make_step(tx):
    @jax.jit
    def step(p, s):
        g = jax.grad(objective)(p)
        u, s = tx.update(g, s, p, obj_fn=objective, loss=objective(p))
        return optax.apply_updates(p, u), s

    return step


def run(cfg, steps, params=None, state=None):
    tx = cfg.build(100)
    params = {"w": jnp.asarray(W0, jnp.float32)} if params is None else params
    state = tx.init(params) if state is None else state
    step = make_step(tx)
    trace = []
    for _ in range(steps):
        params, state = step(params, state)
        trace.append((np.asarray(params["w"]), hyperparams(state), sophia_state(state)))
    return params, state, trace


def sophia_state(state):
    found = [s for s in jax.tree.leaves(state, is_leaf=lambda x: type(x).__name__ == "SophiaState")]
    found = [s for s in found if type(s).__name__ == "SophiaState"]
    assert len(found) == 1
    return found[0]


def written_rule(steps, *, lr, wd, b1, b2, gamma, eps, clip, k, max_norm):
    """Sophia-H by hand (float64): global clip, bias-corrected momentum, the preconditioned
    clipped step, decoupled decay, and an estimate ``h_hat = D`` after steps k, 2k, ..."""
    w, m, h = W0.copy(), np.zeros_like(W0), np.zeros_like(W0)
    out = []
    for t in range(1, steps + 1):
        g = D * w - B
        g = g * min(1.0, max_norm / np.linalg.norm(g))
        m = b1 * m + (1 - b1) * g
        r = m / (1 - b1**t) / np.maximum(gamma * h, eps)
        unclipped = np.mean(np.abs(r) < clip)
        u = np.clip(r, -clip, clip)
        w_before = w
        w = w - lr * (u + wd * w)
        if t % k == 0:
            h = b2 * h + (1 - b2) * (D * np.ones_like(w_before))  # the estimate at w_before: D
        out.append((w, unclipped))
    return out


def test_the_hutchinson_estimate_is_exact_in_expectation():
    params = {"w": jnp.asarray(W0, jnp.float32)}
    # Rademacher probes on a diagonal Hessian: every single draw is the diagonal
    for seed in range(3):
        probes = hutchinson_probes(jax.random.PRNGKey(seed), params, "rademacher")
        np.testing.assert_allclose(hutchinson_diagonal(objective, params, probes)["w"], D, rtol=1e-6)
    # a full Hessian: the mean over all 2^n sign vectors is exactly its diagonal
    a = np.array([[3.0, 0.5, -1.0], [0.5, 2.0, -0.3], [-1.0, -0.3, 1.0]])

    def full(p):
        return 0.5 * p["w"] @ jnp.asarray(a, jnp.float32) @ p["w"]

    x = {"w": jnp.asarray([0.3, -0.1, 0.2], jnp.float32)}
    draws = [
        hutchinson_diagonal(full, x, {"w": jnp.asarray(s, jnp.float32)})["w"]
        for s in itertools.product([-1.0, 1.0], repeat=3)
    ]
    assert not np.allclose(draws[0], np.diag(a))  # a single draw is not exact off the diagonal case
    np.testing.assert_allclose(np.mean(draws, axis=0), np.diag(a), rtol=1e-6)
    # Gaussian probes (the default): d * u^2 per draw, d on average
    keys = jax.random.split(jax.random.PRNGKey(0), 20_000)

    def draw(key):
        return hutchinson_diagonal(objective, params, hutchinson_probes(key, params))["w"]

    est = jax.vmap(draw)(keys)
    assert np.std(np.asarray(est)[:, 0]) > 0.1 * D[0]
    np.testing.assert_allclose(np.mean(np.asarray(est), axis=0), D, rtol=0.05)


@pytest.mark.parametrize("clip_threshold", [1.0, 0.3])
def test_the_written_rule(clip_threshold):
    steps = 14
    _, _, trace = run(config(clip_threshold=clip_threshold), steps)
    want = written_rule(
        steps, lr=0.05, wd=0.1, b1=0.9, b2=0.5, gamma=0.2, eps=1e-12, clip=clip_threshold, k=3, max_norm=1.0
    )
    fractions = []
    for t, ((w, hp, _), (w_ref, unclipped)) in enumerate(zip(trace, want, strict=True), start=1):
        np.testing.assert_allclose(w, w_ref, rtol=2e-5, atol=1e-6, err_msg=f"step {t}")
        np.testing.assert_allclose(hp["unclipped_fraction"], unclipped, atol=1e-6, err_msg=f"step {t}")
        assert int(hp["hessian_updates"]) == t // 3
        fractions.append(unclipped)
    # h = 0 for the first k steps: every coordinate is clipped (a sign step); afterwards the clip
    # binds on some coordinates and not on others
    assert fractions[:3] == [0.0, 0.0, 0.0]
    assert any(0.0 < f < 1.0 for f in fractions[3:])


def test_the_estimate_runs_every_update_interval_steps_under_a_cond():
    cfg = config(update_interval=4, hessian_probe="gaussian")
    _, _, trace = run(cfg, 9)
    h = [np.asarray(s.h["w"]) for _, _, s in trace]
    keys = [tuple(np.asarray(s.key).tolist()) for _, _, s in trace]
    for t in range(1, 9):  # h and the key change exactly at steps 4 and 8
        changed = not np.array_equal(h[t], h[t - 1])
        assert changed == ((t + 1) % 4 == 0), t + 1
        assert (keys[t] != keys[t - 1]) == changed
    assert len(set(keys)) == 3  # never reused
    tx = cfg.build(100)
    params = {"w": jnp.asarray(W0, jnp.float32)}
    update = functools.partial(tx.update, obj_fn=objective)
    jaxpr = jax.make_jaxpr(update)(params, tx.init(params), params)
    assert "cond[" in str(jaxpr)


def test_a_resumed_run_continues_the_same_key_stream():
    cfg = config(hessian_probe="gaussian", update_interval=2)
    _, _, straight = run(cfg, 11)
    params, state, first = run(cfg, 5)
    # a checkpoint: host arrays, restored into a fresh build of the same config
    leaves, treedef = jax.tree.flatten(jax.tree.map(np.asarray, (params, state)))
    params, state = jax.tree.unflatten(treedef, [jnp.asarray(x) for x in leaves])
    _, _, rest = run(cfg, 6, params, state)
    for (w, _, s), (w_ref, _, s_ref) in zip(first + rest, straight, strict=True):
        np.testing.assert_array_equal(w, w_ref)
        np.testing.assert_array_equal(np.asarray(s.key), np.asarray(s_ref.key))
    other, _, _ = run(config(hessian_probe="gaussian", update_interval=2, rng_seed=1), 11)
    assert not np.array_equal(other["w"], straight[-1][0])  # the seed matters


def test_without_obj_fn_the_error_says_what_to_pass():
    tx = config().build(100)
    params = {"w": jnp.asarray(W0, jnp.float32)}
    expected = r"^sophia .*obj_fn=obj_fn\) with obj_fn\(params\) -> scalar loss"
    with pytest.raises(ValueError, match=expected) as e:
        tx.update(params, tx.init(params), params)
    assert "\n" not in str(e.value)


def test_levanters_name_and_fields_load():
    block = (
        "type: sophia-h\nlearning_rate: 3.0e-4\nweight_decay: 0.1\nbeta1: 0.96\nbeta2: 0.99\n"
        "epsilon: 1.0e-12\ngamma: 0.01\nclip_threshold: 1.0\nupdate_interval: 10\nrng_seed: 0\n"
        "max_grad_norm: 1.0\n"
    )
    cfg = OptimizerConfig.from_yaml(block)
    assert cfg.kind() == "sophia-h"
    assert OptimizerConfig.from_yaml(cfg.to_yaml()) == cfg
    plain = OptimizerConfig.from_dict({"type": "sophia"})
    for name in ("beta1", "beta2", "epsilon", "gamma", "clip_threshold", "update_interval", "rng_seed"):
        assert getattr(plain, name) == getattr(cfg, name), name


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("gamma", 0.0, r"sophia\.gamma=0\.0: must be in \(0, inf\)"),
        ("epsilon", 0.0, r"sophia\.epsilon=0\.0: must be in \(0, inf\)"),
        ("clip_threshold", -1.0, r"sophia\.clip_threshold=-1\.0"),
        ("update_interval", 0, r"sophia\.update_interval=0: must be an int >= 1"),
        ("beta2", 1.0, r"sophia\.beta2=1\.0: must be in \[0, 1\)"),
        ("hessian_probe", "normal", r"hessian_probe.*'normal'.*gaussian, rademacher"),
        ("group_overrides", [{"params": ["w"], "weight_decay": 0.0}], r"sophia\.group_overrides: "),
    ],
)
def test_bad_values_are_refused_at_construction(field, value, message):
    with pytest.raises(ConfigError, match=message):
        OptimizerConfig.from_dict({"type": "sophia", field: value})
    with pytest.raises(ConfigError, match=field):
        OptimizerConfig.get_choice_class("sophia")(**{field: value})


@pytest.mark.skipif(not hasattr(optax.contrib, "sophia"), reason="this optax has no contrib.sophia")
def test_optax_contrib_sophia_agrees_when_both_estimate_every_step():
    """optax's Sophia estimates at steps 1, k+1, ... and ours (Levanter's order) at k, 2k, ...;
    with update_interval 1 both estimate after every step, and on a diagonal Hessian a Rademacher
    probe is exact whatever the key, so the two runs must agree."""
    kw = dict(b1=0.9, b2=0.5, eps=1e-12, gamma=0.2, clip_threshold=0.3, weight_decay=0.1)
    ref = optax.contrib.sophia(learning_rate=0.05, update_interval=1, **kw)
    params = {"w": jnp.asarray(W0, jnp.float32)}
    state = ref.init(params)
    want = []
    for _ in range(12):
        g = jax.grad(objective)(params)
        u, state = ref.update(g, state, params, obj_fn=objective)
        params = optax.apply_updates(params, u)
        want.append(np.asarray(params["w"]))
    _, _, trace = run(config(update_interval=1, max_grad_norm=None, clip_threshold=0.3), 12)
    for t, ((w, _, _), w_ref) in enumerate(zip(trace, want, strict=True), start=1):
        np.testing.assert_allclose(w, w_ref, rtol=1e-6, atol=1e-7, err_msg=f"step {t}")
