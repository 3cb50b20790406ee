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
# well-conditioned Gaussian matrix. "simple" and 5-step "quintic" plateau by design (they trade
# accuracy for speed); Polar Express converges, and stays converged past its 8 rows; "aol" is a
# 4-step table, and stays near U V^T past it.
BOUNDS = {
    ("simple", 5): (0.30, (0.6, 1.25)),
    ("quintic", 5): (0.06, (0.9, 1.1)),
    ("polar_express", 5): (0.15, (0.8, 1.2)),
    ("polar_express", 8): (2e-3, (0.995, 1.005)),
    ("polar_express", 10): (2e-3, (0.995, 1.005)),
    ("aol", 4): (0.03, (0.95, 1.05)),
    ("aol", 5): (0.03, (0.95, 1.05)),
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


def _iterate_numpy(g: np.ndarray, table: list[tuple[float, float, float]]) -> np.ndarray:
    """The written iteration in float64: normalise, then one step per row of ``table``."""
    x = g.astype(np.float64)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / (np.linalg.norm(x) + 1e-8)
    for a, b, c in table:
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def test_numpy_reference_of_the_iteration() -> None:
    """The written iteration, in float64 numpy: quintic cycles its table, polar_express and aol
    repeat their last row."""
    g = np.random.default_rng(4).standard_normal((20, 12)).astype(np.float32)
    table = {name: preset.table for name, preset in NS_PRESETS.items()}
    cases = {
        ("simple", 4): [(3.4445, -4.7750, 2.0315)] * 4,
        ("quintic", 7): [table["quintic"][k % 5] for k in range(7)],
        ("polar_express", 10): [table["polar_express"][min(k, 7)] for k in range(10)],
        ("aol", 6): [table["aol"][min(k, 3)] for k in range(6)],
    }
    for (preset, steps), rows in cases.items():
        ours = np.asarray(newton_schulz(jnp.asarray(g), coefficients=preset, steps=steps, dtype="float32"))
        np.testing.assert_allclose(ours, _iterate_numpy(g, rows), rtol=2e-4, atol=2e-4, err_msg=preset)


def test_tables_are_levanters_and_their_sources() -> None:
    """The four tables Levanter (and NVIDIA's Emerging-Optimizers) ship: Jordan's simple triple,
    the 5-row quintic table, Polar Express's published rows divided by the safety factor 1.01
    (rounded to 4 decimals) and Turbo-Muon's 4 rows."""
    assert NS_PRESETS["simple"].table == ((3.4445, -4.7750, 2.0315),)
    assert (
        NS_PRESETS["quintic"].table[0] == (4.0848, -6.8946, 2.9270) and len(NS_PRESETS["quintic"].table) == 5
    )
    assert NS_PRESETS["aol"].table[0] == (4.0098, -7.0585, 2.4635) and len(NS_PRESETS["aol"].table) == 4
    published = [  # Amsel et al. 2025, Algorithm 1 (degree 5, l = 1e-3)
        (8.28721201814563, -23.595886519098837, 17.300387312530933),
        (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
        (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
        (3.3184196573706015, -2.488488024314874, 0.51004894012372),
        (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
        (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
        (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    ]
    pe = NS_PRESETS["polar_express"]
    for (a, b, c), row in zip(published, pe.table, strict=False):
        np.testing.assert_allclose(row, (a / 1.01, b / 1.01**3, c / 1.01**5), atol=1e-4)
    assert pe.table[-1] == (1.875, -1.25, 0.375) and len(pe.table) == 8
    assert pe.for_steps(10)[8:] == (pe.table[-1], pe.table[-1])
    assert NS_PRESETS["quintic"].for_steps(7)[5:] == NS_PRESETS["quintic"].table[:2]
    assert resolve_coefficients([[1.5, -0.5, 0.0]]).for_steps(3) == ((1.5, -0.5, 0.0),) * 3
    with pytest.raises(ValueError, match="preset"):
        resolve_coefficients("polar")
    with pytest.raises(ValueError, match="3 numbers"):
        resolve_coefficients([[1.0, 2.0]])


def test_cycling_polar_express_or_aol_breaks_them() -> None:
    """Why polar_express and aol repeat their last row where Levanter cycles every table: run
    again from the top, the first row takes singular values near 1 to a + b + c (1.76 and -0.59),
    so Levanter's 5-step aol (its default backend_steps) is the negated polar factor and its
    10-step polar_express (scion's default steps) a third of it; ours stay at U V^T."""
    g = np.random.default_rng(6).standard_normal((48, 32))
    u, _, vt = np.linalg.svd(g, full_matrices=False)

    def signed_singular_values(x: np.ndarray) -> np.ndarray:
        return np.diag(u.T @ x @ vt.T)

    for preset, steps in (("aol", 5), ("polar_express", 10)):
        table = NS_PRESETS[preset].table
        cycled = _iterate_numpy(g, [table[k % len(table)] for k in range(steps)])
        ours = np.asarray(
            newton_schulz(jnp.asarray(g, jnp.float32), coefficients=preset, steps=steps, dtype="float32")
        )
        assert np.all(np.abs(signed_singular_values(cycled) - 1.0) > 0.4), preset
        np.testing.assert_allclose(signed_singular_values(ours), 1.0, atol=0.05, err_msg=preset)
    a, b, c = NS_PRESETS["aol"].table[0]
    assert a + b + c < 0  # the first aol row maps a singular value of 1 to -0.59


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
