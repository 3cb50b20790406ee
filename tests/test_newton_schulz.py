"""Newton–Schulz orthogonalisation against the exact polar factor from an SVD.

Run with ``-s`` to see the table of errors per preset and compute dtype.
"""

from __future__ import annotations

import dataclasses

import haliax as hax
import haliax.nn as hnn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from marin_optim.labels import MatrixAxes
from marin_optim.transforms.newton_schulz import (
    NS_PRESETS,
    newton_schulz,
    orthogonalize_by_newton_schulz,
    resolve_coefficients,
)


def _polar(g: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(g.astype(np.float64), full_matrices=False)
    return u @ vt


def _errors(x: np.ndarray, g: np.ndarray) -> tuple[float, float, float]:
    """(distance to U V^T relative to its norm, min and max singular value of x)."""
    x = x.astype(np.float64)
    p = _polar(g)
    s = np.linalg.svd(x, compute_uv=False)
    return float(np.linalg.norm(x - p) / np.linalg.norm(p)), float(s.min()), float(s.max())


# (preset, steps) -> (max relative distance to U V^T, singular-value interval) in float32 on a
# well-conditioned Gaussian matrix. "standard" and 5-step "quintic" plateau by design (they trade
# accuracy for speed); Polar Express converges.
BOUNDS = {
    ("standard", 5): (0.30, (0.6, 1.25)),
    ("quintic", 5): (0.06, (0.9, 1.1)),
    ("polar_express", 5): (0.15, (0.8, 1.2)),
    ("polar_express", 8): (2e-3, (0.995, 1.005)),
}
BF16_SLACK = 0.06  # bfloat16 carries 8 bits of mantissa: add this to each float32 bound


def test_polar_factor_error_per_preset_and_dtype(capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    g = rng.standard_normal((64, 112)).astype(np.float32)
    rows = []
    for (preset, steps), (bound, (lo, hi)) in BOUNDS.items():
        for dtype in ("float32", "bfloat16"):
            x = np.asarray(newton_schulz(jnp.asarray(g), coefficients=preset, steps=steps, dtype=dtype))
            err, smin, smax = _errors(x, g)
            orth = float(np.linalg.norm(x @ x.T - np.eye(x.shape[0])) / np.sqrt(x.shape[0]))
            rows.append((preset, steps, dtype, err, orth, smin, smax))
            slack = 0.0 if dtype == "float32" else BF16_SLACK
            assert err <= bound + slack, (preset, steps, dtype, err)
            assert lo - slack <= smin and smax <= hi + slack, (preset, steps, dtype, smin, smax)
    with capsys.disabled():
        print("\nNewton-Schulz on a 64x112 Gaussian matrix vs the SVD polar factor U V^T")
        head = ("preset", "steps", "dtype", "|X-UV^T|/|UV^T|", "rms(XX^T-I)", "sv range")
        print(f"{head[0]:14s} {head[1]:>5s} {head[2]:9s} {head[3]:>16s} {head[4]:>12s} {head[5]}")
        for preset, steps, dtype, err, orth, smin, smax in rows:
            print(f"{preset:14s} {steps:5d} {dtype:9s} {err:16.4f} {orth:12.4f} [{smin:.3f}, {smax:.3f}]")


def test_bfloat16_is_really_used() -> None:
    g = jnp.asarray(np.random.default_rng(1).standard_normal((32, 48)), jnp.float32)
    x32 = newton_schulz(g, dtype="float32")
    x16 = newton_schulz(g, dtype="bfloat16")
    assert x16.dtype == jnp.float32  # result keeps the input dtype
    diff = float(jnp.max(jnp.abs(x32 - x16)))
    assert 1e-4 < diff < 0.1


def test_tall_matrices_are_transposed_consistently() -> None:
    g = np.random.default_rng(2).standard_normal((80, 24)).astype(np.float32)
    tall = np.asarray(newton_schulz(jnp.asarray(g), dtype="float32"))
    wide = np.asarray(newton_schulz(jnp.asarray(g.T), dtype="float32"))
    np.testing.assert_allclose(tall, wide.T, rtol=1e-5, atol=1e-5)
    assert _errors(tall, g)[0] < 0.3


def test_batched_equals_loop() -> None:
    g = np.random.default_rng(3).standard_normal((2, 2, 16, 24)).astype(np.float32)
    batched = np.asarray(newton_schulz(jnp.asarray(g), coefficients="quintic", dtype="float32"))
    for i in range(2):
        for j in range(2):
            single = np.asarray(newton_schulz(jnp.asarray(g[i, j]), coefficients="quintic", dtype="float32"))
            np.testing.assert_allclose(batched[i, j], single, rtol=1e-5, atol=1e-6)


def test_numpy_reference_of_the_iteration() -> None:
    """The written iteration, in float64 numpy, with the per-step coefficient tables."""
    g = np.random.default_rng(4).standard_normal((20, 12)).astype(np.float32)

    def reference(table: list[tuple[float, float, float]], scale: float) -> np.ndarray:
        x = g.astype(np.float64).T  # tall -> wide
        x = x / (scale * np.linalg.norm(x) + 1e-8)
        for a, b, c in table:
            gram = x @ x.T
            x = a * x + (b * gram + c * gram @ gram) @ x
        return x.T

    quintic = NS_PRESETS["quintic"].table
    cases = {
        ("standard", 4): ([(3.4445, -4.7750, 2.0315)] * 4, 1.0),
        ("quintic", 7): ([quintic[k % 5] for k in range(7)], 1.0),
    }
    pe = NS_PRESETS["polar_express"].table
    cases[("polar_express", 10)] = ([pe[min(k, len(pe) - 1)] for k in range(10)], 1.01)
    for (preset, steps), (table, scale) in cases.items():
        ours = np.asarray(newton_schulz(jnp.asarray(g), coefficients=preset, steps=steps, dtype="float32"))
        np.testing.assert_allclose(ours, reference(table, scale), rtol=2e-4, atol=2e-4, err_msg=preset)


def test_polar_express_table_has_the_safety_factor() -> None:
    pe = NS_PRESETS["polar_express"]
    a0, b0, c0 = pe.table[0]
    assert a0 == pytest.approx(8.28721201814563 / 1.01)
    assert b0 == pytest.approx(-23.595886519098837 / 1.01**3)
    assert c0 == pytest.approx(17.300387312530933 / 1.01**5)
    assert pe.table[-1] == (1.875, -1.25, 0.375)
    assert pe.for_steps(10)[8:] == (pe.table[-1], pe.table[-1])
    assert resolve_coefficients([[1.5, -0.5, 0.0]]).for_steps(3) == ((1.5, -0.5, 0.0),) * 3
    with pytest.raises(ValueError, match="preset"):
        resolve_coefficients("polar")
    with pytest.raises(ValueError, match="3 numbers"):
        resolve_coefficients([[1.0, 2.0]])


def test_transform_on_haliax_tree_keeps_axes_and_rejects_vectors() -> None:
    In, Out, L = hax.Axis("embed", 12), hax.Axis("mlp", 20), hax.Axis("layers", 2)

    lin = jax.eval_shape(lambda: hnn.Linear.init(In, Out, key=jax.random.PRNGKey(0), use_bias=False))
    # a scan-stacked layer: the weight carries an extra "layers" axis that is not In or Out
    stacked = np.random.default_rng(5).standard_normal((L.size, Out.size, In.size)).astype(np.float32)
    lin = dataclasses.replace(lin, weight=hax.named(jnp.asarray(stacked), (L, Out, In)))
    tx = orthogonalize_by_newton_schulz(dtype="float32")
    out, _ = tx.update(lin, tx.init(lin))
    assert out.weight.axes == lin.weight.axes
    # each layer is orthogonalised on its own (rows of the 20 x 12 matrix span 12 dims)
    for layer in range(2):
        w = np.asarray(out.weight.array[layer])  # (mlp, embed)
        assert _errors(w, np.asarray(lin.weight.array[layer]))[0] < 0.3
    with pytest.raises(ValueError, match="without a matrix view"):
        tx.update({"bias": jnp.ones(3)}, optax.EmptyState())


def test_matrix_axes_roundtrip_multi_axis() -> None:
    x = jnp.arange(2 * 3 * 4 * 5, dtype=jnp.float32).reshape(2, 3, 4, 5)
    view = MatrixAxes.of(x.shape, fan_in=(3, 1), fan_out=0)  # batch axis 2
    m = view.to_matrices(x)
    assert m.shape == (4, 2, 15)
    np.testing.assert_array_equal(np.asarray(view.from_matrices(m)), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(m[1, 0]), np.asarray(x[0, :, 1, :]).T.reshape(-1))
