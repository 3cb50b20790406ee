"""Dion against a numpy re-implementation of Algorithm 1 (Ahn et al. 2025, arXiv 2504.05295)."""

from __future__ import annotations

import ctypes
import glob
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from marin_optim.errors import ConfigError
from marin_optim.labels import ParamLabeler
from marin_optim.optimizers.dion import DionConfig
from marin_optim.optimizers.muon import MuonConfig
from marin_optim.state import hyperparams
from marin_optim.transforms.dion import (
    dion_rank,
    orthonormal_columns,
    randomized_cholesky_qr,
    scale_by_dion,
    sign_sketch,
)


def _single_threaded_openblas() -> None:
    """jaxlib's CPU QR calls OpenBLAS, whose threads crawl on a loaded 2-core machine."""
    import scipy

    pattern = os.path.join(os.path.dirname(scipy.__file__), os.pardir, "scipy.libs", "libscipy_openblas*.so")
    for path in glob.glob(pattern):
        setter = getattr(ctypes.CDLL(path), "scipy_openblas_set_num_threads", None)
        if setter is not None:
            setter(1)


_single_threaded_openblas()

OUT_IN = {"w": "matrix(in=1, out=0)"}  # arrays stored (out, in), as torch does
CONSTANT = dict(warmup=0, lr_schedule="constant", max_grad_norm=None)


def dion_numpy(x, grads, q0, lr, mu=0.95, wd=0.0, eps=1e-8):
    """Algorithm 1 on an m x n matrix; the low-rank factor is taken on the tall orientation."""
    m, n = x.shape
    buf = np.zeros_like(x)
    q = q0.astype(np.float64)
    updates = []
    for g in grads:
        b = buf + g
        t = b if m >= n else b.T
        p, _ = np.linalg.qr(t @ q)
        r = t.T @ p
        approx = p @ r.T
        buf = b - (1 - mu) * (approx if m >= n else approx.T)
        q = r / (np.linalg.norm(r, axis=0, keepdims=True) + eps)
        u = p @ q.T
        u = np.sqrt(m / n) * (u if m >= n else u.T)
        updates.append(u)
        x = x - lr * (u + wd * x)
    return x, updates


@pytest.mark.parametrize("qr_method", ["rcqr", "qr"])
@pytest.mark.parametrize(
    ("shape", "rank_fraction", "rank_multiple_of"),
    [((24, 16), 1.0, 1), ((16, 40), 0.5, 1), ((24, 16), 0.3, 4), ((12, 12), 1.0, 1)],
)
def test_dion_matches_numpy_algorithm(shape, rank_fraction, rank_multiple_of, qr_method) -> None:
    """Householder QR in the reference; ``rcqr`` (sketched on the first three shapes, not on the
    square one, whose sketch would be taller than the matrix) gives the same update."""
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal(shape).astype(np.float32)
    grads = [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]
    tx = scale_by_dion(
        ParamLabeler(OUT_IN).matrix_axes,
        rank_fraction=rank_fraction,
        rank_multiple_of=rank_multiple_of,
        qr_method=qr_method,
    )
    state = tx.init({"w": jnp.asarray(x0)})
    q0 = np.asarray(state.q["w"][0])
    r = dion_rank(*shape, rank_fraction, rank_multiple_of)
    assert q0.shape == (min(shape), r)
    step = jax.jit(tx.update)
    ours = []
    for g in grads:
        u, state = step({"w": jnp.asarray(g)}, state)
        ours.append(np.asarray(u["w"]))
    _, expected = dion_numpy(x0.astype(np.float64), [g.astype(np.float64) for g in grads], q0, lr=1.0)
    for k, (a, b) in enumerate(zip(ours, expected, strict=True)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=f"step {k}")
    s = np.linalg.svd(ours[-1] / math.sqrt(shape[0] / shape[1]), compute_uv=False)
    assert np.sum(s > 1e-3) == r  # a rank-r update


def _ill_conditioned(rng, batch: int, rows: int, cols: int, cond: float) -> np.ndarray:
    u = np.linalg.qr(rng.standard_normal((batch, rows, cols)))[0]
    v = np.linalg.qr(rng.standard_normal((batch, cols, cols)))[0]
    return ((u * np.logspace(0, -math.log10(cond), cols)) @ v).astype(np.float32)


def test_randomized_cholesky_qr_is_householders_q_up_to_column_signs() -> None:
    """Randomized Cholesky QR against numpy's Householder QR (float64) on matrices whose condition
    numbers reach 1e4, sketched (tall) and not (square): the same ``Q`` up to column signs, and
    orthonormal to float32 rounding; ``orthonormal_columns`` keeps that result (no fallback)."""
    rng = np.random.default_rng(3)
    for rows, cols, sketched in [(96, 16, True), (40, 32, False)]:
        p = _ill_conditioned(rng, 3, rows, cols, 1e4)
        assert (math.ceil(1.25 * cols) < rows) == sketched
        fast = np.asarray(orthonormal_columns(jnp.asarray(p), method="rcqr"))
        q = np.linalg.qr(p.astype(np.float64))[0]
        signs = np.sign(np.sum(fast * q, axis=-2, keepdims=True))
        np.testing.assert_allclose(fast, q * signs, atol=2e-3)
        np.testing.assert_allclose(fast.mT @ fast, np.broadcast_to(np.eye(cols), (3, cols, cols)), atol=1e-5)
        key = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(0), rows))[0]
        sketch = sign_sketch(key, math.ceil(1.25 * cols), rows)
        direct = randomized_cholesky_qr(jnp.asarray(p), sketch if sketched else None)
        np.testing.assert_array_equal(fast, np.asarray(direct))


def test_matrices_cholesky_qr_breaks_on_are_redone_by_householder_qr_and_zero_ones_give_zeros() -> None:
    """Cholesky QR breaks down on a ``P`` with a zero column (``B Q`` when a column of ``Q`` is
    zero: its ``R`` has a zero on the diagonal): that matrix takes Householder QR's ``Q``, an
    all-zero matrix gives zeros, and the full-rank one in the same batch keeps its own."""
    rng = np.random.default_rng(4)
    full = _ill_conditioned(rng, 1, 48, 8, 10.0)[0]
    broken = full.copy()
    broken[:, 3] = 0.0
    p = jnp.asarray(np.stack([full, broken, np.zeros_like(full)]))
    assert not np.all(np.isfinite(np.asarray(randomized_cholesky_qr(p[1:2], None))))
    rcqr = jax.jit(lambda x: orthonormal_columns(x, method="rcqr"))
    out, alone = np.asarray(rcqr(p)), np.asarray(rcqr(p[:1]))
    householder = np.asarray(jax.jit(lambda x: orthonormal_columns(x, method="qr"))(p))
    assert np.abs(householder[0] - alone[0]).max() > 0.1  # the two differ in column signs here
    np.testing.assert_allclose(out[0], alone[0], atol=1e-6)
    np.testing.assert_array_equal(out[1], householder[1])
    np.testing.assert_array_equal(out[2], 0.0)
    np.testing.assert_allclose(out[1].T @ out[1], np.eye(8), atol=1e-5)


def test_sign_sketch_entries() -> None:
    s = np.asarray(sign_sketch(jax.random.PRNGKey(0), 40, 70))
    assert s.shape == (40, 70)
    assert np.unique(np.abs(s)).size == 1 and np.abs(s[0, 0]) == pytest.approx(1 / math.sqrt(40))
    assert abs(np.mean(s > 0) - 0.5) < 0.05  # 2,800 fair signs: 5 sigma is 0.047
    assert not np.array_equal(s, np.asarray(sign_sketch(jax.random.PRNGKey(1), 40, 70)))


def test_dion_rank() -> None:
    assert dion_rank(768, 3072, 1.0, 1) == 768
    assert dion_rank(768, 3072, 0.25, 1) == 192
    assert dion_rank(100, 60, 0.1, 8) == 8
    assert dion_rank(10, 6, 0.9, 4) == 6  # capped at min(m, n)


def test_full_rank_dion_approaches_muon() -> None:
    """At full rank, on a fixed gradient, Dion's amortised power iteration converges to the polar
    factor that Muon's Newton-Schulz approximates (both scaled by sqrt(out/in) for a tall matrix).
    """
    rng = np.random.default_rng(1)
    u, _ = np.linalg.qr(rng.standard_normal((48, 32)))
    v, _ = np.linalg.qr(rng.standard_normal((32, 32)))
    g = (u * np.linspace(1.0, 4.0, 32)) @ v.T  # distinct singular values
    params, grads = {"w": np.zeros((48, 32), np.float32)}, {"w": g.astype(np.float32)}

    def last_update(cfg, steps: int) -> np.ndarray:
        tx = cfg.build(1000)
        state = tx.init(jax.tree.map(jnp.asarray, params))
        step = jax.jit(tx.update)
        for _ in range(steps):
            upd, state = step(jax.tree.map(jnp.asarray, grads), state, jax.tree.map(jnp.asarray, params))
        return np.asarray(upd["w"])

    common = dict(learning_rate=1.0, weight_decay=0.0, param_labels=OUT_IN, **CONSTANT)
    dion = last_update(DionConfig(**common), 40)
    exact_muon = last_update(
        MuonConfig(coefficient_type="polar_express", backend_steps=8, ns_dtype="float32", **common), 1
    )
    default_muon = last_update(MuonConfig(coefficient_type="simple", ns_dtype="bfloat16", **common), 1)
    polar = -math.sqrt(48 / 32) * (u @ v.T)
    rel = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b)
    assert rel(dion, polar) < 0.02
    assert rel(dion, exact_muon) < 0.02
    assert rel(dion, default_muon) < 0.3  # the standard 5-step Newton-Schulz plateaus near 0.2


def test_zero_gradient_keeps_the_factor() -> None:
    tx = scale_by_dion(ParamLabeler(OUT_IN).matrix_axes)
    state = tx.init({"w": jnp.zeros((8, 6))})
    u, new = jax.jit(tx.update)({"w": jnp.zeros((8, 6))}, state)
    assert np.all(np.asarray(u["w"]) == 0)
    np.testing.assert_array_equal(np.asarray(new.q["w"]), np.asarray(state.q["w"]))


def test_dion_config_head_learning_rate_and_branches() -> None:
    rng = np.random.default_rng(2)
    params = {
        "w": jnp.asarray(rng.standard_normal((16, 12)), jnp.float32),
        "wte": jnp.asarray(rng.standard_normal((10, 12)), jnp.float32),
        "lm_head": jnp.asarray(rng.standard_normal((12, 10)), jnp.float32),  # x @ W: d_model = 12
        "gain": jnp.ones(12),
    }
    grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)
    cfg = DionConfig(learning_rate=0.02, adam_lr=1e-3, weight_decay=0.0, **CONSTANT)
    tx = cfg.build(10)
    state = tx.init(params)
    upd, state = jax.jit(tx.update)(grads, state, params)
    hp = hyperparams(state)
    assert float(hp["learning_rate"]) == pytest.approx(0.02)
    assert float(hp["adam_learning_rate"]) == pytest.approx(1e-3)
    assert float(hp["lm_head/learning_rate"]) == pytest.approx(0.02 / math.sqrt(12))
    # first AdamW step moves every coordinate by about its learning rate
    assert float(jnp.max(jnp.abs(upd["lm_head"]))) == pytest.approx(0.02 / math.sqrt(12), rel=1e-3)
    assert float(jnp.max(jnp.abs(upd["wte"]))) == pytest.approx(1e-3, rel=1e-3)
    assert "head -> lm_head" in cfg.describe_labels(params)
    unscaled = DionConfig(scale_head_lr=False, weight_decay=0.0, **CONSTANT)
    assert "head -> adam" in unscaled.describe_labels(params)
    tx2 = unscaled.build(10)
    upd2, _ = jax.jit(tx2.update)(grads, tx2.init(params), params)
    assert float(jnp.max(jnp.abs(upd2["lm_head"]))) == pytest.approx(6e-4, rel=1e-3)


def test_dion_config_validation() -> None:
    for kwargs, match in [
        ({"rank_fraction": 0.0}, "rank_fraction"),
        ({"rank_fraction": 1.5}, "rank_fraction"),
        ({"rank_multiple_of": 0}, "rank_multiple_of"),
        ({"dion_epsilon": -1.0}, "dion_epsilon"),
        ({"momentum": 1.0}, "momentum"),
        ({"adam_lr": -1.0}, "adam_lr"),
        ({"qr_method": "householder"}, r"dion\.qr_method='householder': expected one of 'rcqr', 'qr'"),
        ({"rcqr_oversample": 0.5}, r"dion\.rcqr_oversample=0\.5: must be in \[1, inf\)"),
    ]:
        with pytest.raises(ConfigError, match=match):
            DionConfig(**kwargs)


def test_optax_chain_compatibility() -> None:
    """The transform composes with plain optax pieces and jit without recompiling."""
    tx = optax.chain(scale_by_dion(ParamLabeler(OUT_IN).matrix_axes), optax.scale(-0.1))
    params = {"w": jnp.ones((6, 4))}
    state = tx.init(params)
    step = jax.jit(tx.update)
    for _ in range(2):
        _, state = step({"w": jnp.ones((6, 4))}, state)
    assert step._cache_size() == 1
