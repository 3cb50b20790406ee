"""AdamH (``adamH``), MuonH (``muonH``) and the Hyperball step against their written rule in NumPy.

The reference is the paper's update (Wen et al., 2026, https://arxiv.org/abs/2606.16899):
``W <- R normalize(W - lr R normalize(u))`` with Adam's ``u`` (adamH, and muonH's output head)
or Muon's Newton-Schulz-orthogonalised momentum (muonH's hidden matrices), written out in
float64. Levanter's ``adamH`` is compared in ``tests/levanter/test_dropin_new.py``, its
``muonH`` in ``tests/levanter/test_dropin_muonh.py``; 8 devices in ``tests/test_adam_mini.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from marin_optim import OptimizerConfig
from marin_optim.errors import ConfigError
from marin_optim.optimizers.hyperball import AdamHConfig, MuonHConfig
from marin_optim.transforms.hyperball import hyperball, hyperball_delta

CONSTANT = dict(lr_schedule="constant", warmup=0)

# Levanter's ``adamH`` block as Levanter dumps it (levanter 0.2.20: every field at its default).
LEVANTER_ADAMH = {
    "adam_lr": 0.0006,
    "beta1": 0.9,
    "beta2": 0.95,
    "cooldown": None,
    "cycle_length": None,
    "cycles": None,
    "decay": None,
    "default_weight_decay_mask": None,
    "epsilon": 1e-08,
    "haps": None,
    "learning_rate": 0.0006,
    "lr_schedule": "cosine",
    "max_grad_norm": 1.0,
    "min_lr_ratio": 0.1,
    "nesterov": False,
    "rewarmup": 0.0,
    "warmup": 0.01,
    "weight_decay": 0.1,
    "weight_decay_modules": None,
}

# Levanter's ``muonH`` block: adamH's fields plus Muon's (``nesterov`` is Muon's, on by default).
LEVANTER_MUONH = {
    **LEVANTER_ADAMH,
    "backend_steps": 5,
    "coefficient_type": "quintic",
    "momentum": 0.95,
    "muon_epsilon": 1e-08,
    "nesterov": True,
}

# leaf -> axes of one matrix (None: Adam branch). Plain arrays: x @ W, leading axes are batch.
MATRIX = {"w": (0, 1), "stack": (1, 2), "lm_head": (0, 1), "wte": None, "gain": None}
HEAD = "lm_head"  # muonH: Adam on the hyperball; the other matrices take Muon's direction


def _tree(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    shapes = {"w": (4, 6), "stack": (2, 5, 3), "lm_head": (4, 6), "wte": (6, 4), "gain": (5,)}
    return {k: (scale * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}


def _normalize(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return x / np.sqrt(np.sum(x * x, axis=axes, keepdims=True))


def _numpy_newton_schulz(u: np.ndarray, steps: int, eps: float) -> np.ndarray:
    """Jordan's quintic iteration with his coefficients (``coefficient_type: simple``), on the
    wide orientation of one matrix."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = u / (np.linalg.norm(u) + eps)
    wide = x.shape[0] <= x.shape[1]
    x = x if wide else x.T
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x if wide else x.T


def _numpy_muon(buf: np.ndarray, g: np.ndarray, muon: dict) -> tuple[np.ndarray, np.ndarray]:
    """Muon's momentum (``buf <- mu buf + g``) and its orthogonalised direction, per matrix (the
    last two axes, as in :data:`MATRIX`)."""
    buf = muon["momentum"] * buf + g
    u = muon["momentum"] * buf + g if muon["nesterov"] else buf
    batch = u.reshape((-1, *u.shape[-2:]))
    o = np.stack([_numpy_newton_schulz(x, muon["steps"], muon["eps"]) for x in batch])
    return buf, o.reshape(u.shape)


def _numpy_hyperball(
    params, grads, mask, *, lr, adam_lr, wd, b1, b2, eps, nesterov, max_norm, scope, muon=None
):
    """The written rule in float64 (parameters stored in float32 after each step, like ours):
    adamH, or muonH with ``muon`` (momentum, nesterov, steps, eps of the hidden matrices)."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    total = {k: np.zeros_like(x) for k, x in p.items()}
    on_muon = {k: bool(muon and MATRIX[k] and k != HEAD) for k in p}
    for t, g in enumerate(grads, start=1):
        g = {k: x.astype(np.float64) for k, x in g.items()}
        if max_norm:
            if scope == "all":
                branches = [list(g)]
            elif muon:  # Levanter's three clips: Muon matrices, the head, the Adam parameters
                branches = [[k for k in g if on_muon[k]], [HEAD], [k for k in g if not MATRIX[k]]]
            else:
                branches = [[k for k in g if MATRIX[k]], [k for k in g if not MATRIX[k]]]
            for keys in branches:
                norm = np.sqrt(sum(np.sum(g[k] ** 2) for k in keys))
                for k in keys:
                    g[k] = g[k] * min(1.0, max_norm / norm)
        for k in p:
            if on_muon[k]:
                m[k], u = _numpy_muon(m[k], g[k], muon)
            else:
                m[k] = b1 * m[k] + (1 - b1) * g[k]
                v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
                if nesterov:
                    m_hat = b1 * m[k] / (1 - b1 ** (t + 1)) + (1 - b1) * g[k] / (1 - b1**t)
                else:
                    m_hat = m[k] / (1 - b1**t)
                u = m_hat / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            if MATRIX[k]:
                axes = MATRIX[k]
                radius = np.sqrt(np.sum(p[k] ** 2, axis=axes, keepdims=True))
                new = radius * _normalize(p[k] - lr * radius * _normalize(u, axes), axes)
            else:
                new = p[k] - adam_lr * (u + (wd * p[k] if mask[k] else 0.0))
            step = new - p[k]
            stored = (p[k] + step).astype(np.float32).astype(np.float64)
            total[k] += stored - p[k]
            p[k] = stored
    return total


SIMPLE = dict(coefficient_type="simple")  # the coefficients _numpy_newton_schulz writes out


@pytest.mark.parametrize(
    ("cls", "variant"),
    [
        pytest.param(AdamHConfig, dict(), id="adamH-default"),
        pytest.param(AdamHConfig, dict(nesterov=True), id="adamH-nesterov"),
        pytest.param(
            AdamHConfig,
            dict(clip_scope="all", weight_decay_modules=["wte", "w"]),
            id="adamH-global-clip+decay-mask",
        ),
        pytest.param(
            AdamHConfig, dict(max_grad_norm=None, beta2=0.99, epsilon=1e-3), id="adamH-noclip+beta2+eps"
        ),
        pytest.param(MuonHConfig, SIMPLE, id="muonH-nesterov"),  # every clip active: norms ~2.5 > 1
        pytest.param(
            MuonHConfig,
            dict(SIMPLE, nesterov=False, momentum=0.8, backend_steps=3, muon_epsilon=1e-3, beta1=0.8),
            id="muonH-no_nesterov+momentum+steps+eps+beta1",
        ),
        pytest.param(
            MuonHConfig,
            dict(SIMPLE, clip_scope="all", weight_decay_modules=["wte", "w"]),
            id="muonH-global-clip+decay-mask",
        ),
        pytest.param(
            MuonHConfig,
            dict(SIMPLE, max_grad_norm=0.0, beta2=0.99, epsilon=1e-3),
            id="muonH-noclip+beta2+eps",
        ),
    ],
)
def test_hyperball_optimizers_match_the_written_rule(cls, variant) -> None:
    rng = np.random.default_rng(0)
    params = _tree(rng)
    grads = [_tree(rng, 0.5) for _ in range(6)]
    cfg = cls(learning_rate=0.05, adam_lr=0.01, **CONSTANT, **variant)
    muon = None
    if cls is MuonHConfig:
        muon = dict(
            momentum=cfg.momentum, nesterov=cfg.nesterov, steps=cfg.backend_steps, eps=cfg.muon_epsilon
        )
    tx = cfg.build(100)
    p = {k: jnp.asarray(x) for k, x in params.items()}
    state = tx.init(p)
    step = jax.jit(tx.update)
    for g in grads:
        updates, state = step({k: jnp.asarray(x) for k, x in g.items()}, state, p)
        p = optax.apply_updates(p, updates)
    mask = cfg.build_weight_decay_mask()(params)
    assert not any(mask[k] for k in MATRIX if MATRIX[k])  # matrices on the hyperball never decay
    expected = _numpy_hyperball(
        params,
        grads,
        mask,
        lr=0.05,
        adam_lr=0.01,
        wd=cfg.weight_decay,
        b1=cfg.beta1,
        b2=cfg.beta2,
        eps=cfg.epsilon,
        nesterov=cfg.nesterov and muon is None,  # muonH's nesterov is Muon's
        max_norm=cfg.max_grad_norm,
        scope=cfg.clip_scope,
        muon=muon,
    )
    for k in params:
        change = np.asarray(p[k], np.float64) - params[k]
        np.testing.assert_allclose(change, expected[k], rtol=1e-5, atol=1e-7, err_msg=k)
        if MATRIX[k]:  # every matrix keeps its norm
            axes = MATRIX[k]
            before = np.sqrt(np.sum(params[k].astype(np.float64) ** 2, axis=axes))
            after = np.sqrt(np.sum(np.asarray(p[k], np.float64) ** 2, axis=axes))
            np.testing.assert_allclose(after, before, rtol=1e-6, err_msg=k)
    if "weight_decay_modules" in variant:  # the embedding's decay is on
        assert mask["wte"] and not mask["gain"]


def test_the_step_is_exact_to_float32_where_the_plain_formula_loses_four_digits() -> None:
    """``R normalize(W - lr R normalize(u)) - W`` cancels: in float32 it is off by ~1e-4 of the
    step at lr = 6e-4 (the plain formula, checked here so the test could fail); ours is not."""
    rng = np.random.default_rng(0)
    p64, u64 = 0.02 * rng.standard_normal((2, 64, 128)), rng.standard_normal((2, 64, 128))
    lr, axes = 6e-4, (1, 2)
    radius = np.sqrt(np.sum(p64**2, axis=axes, keepdims=True))
    exact = radius * _normalize(p64 - lr * radius * _normalize(u64, axes), axes) - p64
    p, u = jnp.asarray(p64, jnp.float32), jnp.asarray(u64, jnp.float32)
    ours = np.asarray(jax.jit(lambda p, u: hyperball_delta(p, u, lr, axes, 1e-10))(p, u), np.float64)

    def plain(p, u):
        r = jnp.sqrt(jnp.sum(p * p, axis=axes, keepdims=True))
        moved = p - lr * u * r / jnp.sqrt(jnp.sum(u * u, axis=axes, keepdims=True))
        return moved / jnp.sqrt(jnp.sum(moved * moved, axis=axes, keepdims=True)) * r - p

    naive = np.asarray(jax.jit(plain)(p, u), np.float64)
    err = lambda x: np.linalg.norm(x - exact) / np.linalg.norm(exact)
    assert err(ours) < 1e-6 < 1e-5 < err(naive), (err(ours), err(naive))


def test_a_step_turns_each_matrix_by_the_learning_rate() -> None:
    """An update orthogonal to W turns it by atan(lr) radians, whatever the update's size."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 8))
    u = rng.standard_normal((8, 8))
    u -= np.sum(u * w) / np.sum(w * w) * w  # orthogonal to w
    tx = hyperball(0.1)
    for scale in (1e-3, 1e3):
        params = {"w": jnp.asarray(w, jnp.float32)}
        delta, _ = tx.update({"w": jnp.asarray(scale * u, jnp.float32)}, tx.init(params), params)
        new = w + np.asarray(delta["w"], np.float64)
        cos = np.sum(new * w) / (np.linalg.norm(new) * np.linalg.norm(w))
        np.testing.assert_allclose(np.arccos(min(cos, 1.0)), np.arctan(0.1), rtol=1e-4)
        np.testing.assert_allclose(np.linalg.norm(new), np.linalg.norm(w), rtol=1e-6)


def test_zero_matrices_and_zero_updates_are_fixed_points() -> None:
    tx = hyperball(0.1)
    params = {"zero": jnp.zeros((3, 4)), "w": jnp.ones((3, 4))}
    delta, _ = tx.update({"zero": jnp.ones((3, 4)), "w": jnp.zeros((3, 4))}, tx.init(params), params)
    assert np.all(np.asarray(delta["zero"]) == 0) and np.all(np.asarray(delta["w"]) == 0)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(params, tx.init(params))
    with pytest.raises(ValueError, match="matrix view"):
        tx.init({"gain": jnp.ones(3)})


def test_levanters_block_loads_unchanged_and_fields_are_validated() -> None:
    cfg = OptimizerConfig.from_dict({"type": "adamH", **LEVANTER_ADAMH})
    assert isinstance(cfg, AdamHConfig) and cfg == AdamHConfig()
    for name, value in LEVANTER_ADAMH.items():
        if name != "lr_schedule":
            assert getattr(cfg, name) == value, name
    with pytest.raises(ConfigError, match=r"adamH\.clip_scope='adam'.*branch.*all"):
        AdamHConfig(clip_scope="adam")
    with pytest.raises(ConfigError, match=r"adamH\.adam_lr=0"):
        AdamHConfig(adam_lr=0.0)
    with pytest.raises(ConfigError, match=r"adamH\.beta1=1\.5"):
        AdamHConfig(beta1=1.5)


def test_levanters_muonh_block_loads_unchanged_and_fields_are_validated() -> None:
    cfg = OptimizerConfig.from_dict({"type": "muonH", **LEVANTER_MUONH})
    assert isinstance(cfg, MuonHConfig) and cfg == MuonHConfig()
    for name, value in LEVANTER_MUONH.items():
        if name != "lr_schedule":
            assert getattr(cfg, name) == value, name
    for field, value, message in [
        (
            "coefficient_type",
            "cubic",
            r"='cubic': must be one of 'simple', 'quintic', 'polar_express', 'aol'",
        ),
        ("momentum", 1.0, r"=1\.0: must be in \[0, 1\)"),
        ("backend_steps", 0, r"=0: must be an int >= 1"),
        ("muon_epsilon", -1.0, r"=-1\.0: must be in \[0, inf\)"),
        ("clip_scope", "adam", r"='adam'.*branch.*all"),
    ]:
        with pytest.raises(ConfigError, match=rf"muonH\.{field}{message}"):
            MuonHConfig(**{field: value})


def test_param_table_says_which_parameters_are_on_the_hyperball() -> None:
    import haliax as hax
    import haliax.nn as hnn

    Embed, Mlp, Vocab = hax.Axis("embed", 8), hax.Axis("mlp", 16), hax.Axis("vocab", 12)
    key = jax.random.PRNGKey(0)
    params = {
        "embed": hnn.Embedding.init(Vocab, Embed, key=key),
        "up": hnn.Linear.init(Embed, Mlp, key=key, use_bias=True),
        "norm": hnn.RmsNorm.init(Embed),
        "lm_head": hnn.Linear.init(Embed, Vocab, key=key, use_bias=False),
    }
    cfg = AdamHConfig(weight_decay_modules=["up"])  # the Linear weight and its bias
    table = cfg.param_table(params)
    assert "matrix -> adamh" in table and "head -> adamh" in table and "embedding -> adam" in table
    decay_table = table.split("\n\n")[0]  # then the kinds and branches
    rows = {line.split()[0]: line.split() for line in decay_table.splitlines() if line.startswith("up.")}
    assert rows["up.weight"][-1] == "-" and rows["up.bias"][-1] == "0.1"  # weights never decay
