"""SOAP against its written rule (Vyas et al., 2024, arXiv:2409.11321, Algorithms 3 and 4) in numpy.

The reference below re-implements the rule from the paper, one matrix at a time, in float64 (no
call into our code): L, R = EMAs of G G^T and G^T G; bases by eigh on the first step (whose update
is zero), then one QR power-iteration step every ``precondition_frequency`` steps (with the
second moment permuted as the basis is re-sorted); Adam in the rotated coordinates. It takes
Levanter's conventions (the step count includes the first step; a refresh uses the factors from
before the step's gradient). Blocks and merged axes are cut / reshaped by hand in numpy.

Every matrix here is square with a full-rank factor: an eigenbasis is unique up to column signs
(which the update does not depend on) only then; a rank-deficient factor (a 1-D tensor's, a
padded block's) has a null space whose basis eigh picks arbitrarily, and Adam's per-coordinate
step depends on that choice. Those cases are compared against Levanter's own implementation
(tests/levanter/test_dropin_soap.py), which calls the same eigh on the same matrices.
"""

from __future__ import annotations

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from multidevice import run_on_devices

from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError
from marin_optim.optimizers.soap import SoapConfig
from marin_optim.transforms.blocks import from_stack, merge_small_dims, to_stack
from marin_optim.transforms.soap import scale_by_soap, soap_layout

B1, B2, BS, EPS = 0.9, 0.95, 0.8, 1e-8

SHARDED_TOLERANCE = 1e-4
"""8 devices vs 1, relative: the factors' products are summed in another order under sharding
(float32 rounding ~1e-7), and eigh / QR move their eigenvectors by that rounding over the
eigengap; measured 1.6e-5 (t), 3.5e-6 (v), 0 (w)."""


class RefSoap:
    """The paper's SOAP for one matrix, float64."""

    def __init__(self, shape, freq):
        self.t, self.freq = 0, freq
        self.m = np.zeros(shape)
        self.v = np.zeros(shape)
        self.f = [np.zeros((d, d)) for d in shape]
        self.q = [None, None]

    def step(self, g):
        self.t += 1
        outer = [g @ g.T, g.T @ g]
        old = self.f
        self.f = [BS * f + (1 - BS) * o for f, o in zip(self.f, outer, strict=True)]
        if self.t == 1:
            self.q = [np.linalg.eigh(f)[1][:, ::-1] for f in self.f]
            return np.zeros_like(g)
        ql, qr = self.q
        self.m = B1 * self.m + (1 - B1) * g
        self.v = B2 * self.v + (1 - B2) * (ql.T @ g @ qr) ** 2
        u = ql @ ((ql.T @ self.m @ qr) / (np.sqrt(self.v) + EPS)) @ qr.T
        u *= np.sqrt(1 - B2**self.t) / (1 - B1**self.t)
        if self.t % self.freq == 0:
            for side in (0, 1):
                q = self.q[side]
                order = np.argsort(-np.diag(q.T @ old[side] @ q), kind="stable")
                self.v = np.take(self.v, order, axis=side)
                self.q[side] = np.linalg.qr(old[side] @ q[:, order])[0]
        return u


def _ours(params, grads, steps, **kw):
    tx = scale_by_soap(b1=B1, b2=B2, shampoo_beta=BS, eps=EPS, **kw)
    state = tx.init(params)
    update = jax.jit(tx.update)
    out = []
    for i in range(steps):
        u, state = update(grads(i), state, params)
        out.append(jax.tree.map(np.asarray, u))
    return out


def _grads(shapes, seed=0):
    rng = np.random.default_rng(seed)
    table = [{k: rng.normal(size=s) for k, s in shapes.items()} for _ in range(12)]
    return lambda i: {k: jnp.asarray(v, jnp.float32) for k, v in table[i].items()}, table


@pytest.mark.parametrize("freq", [1, 3])
def test_matches_written_rule_with_blocks_and_merged_axes(freq):
    # "w" (12, 12) cut into four 6x6 blocks; "t" (2, 3, 6) merged into one 6x6 matrix.
    shapes = {"w": (12, 12), "t": (2, 3, 6)}
    grads, table = _grads(shapes)
    params = {k: jnp.zeros(s) for k, s in shapes.items()}
    steps = 8
    ours = _ours(params, grads, steps, block_size=6, target_merged_dim_size=6, precondition_frequency=freq)
    refs = {(i, j): RefSoap((6, 6), freq) for i in range(2) for j in range(2)}
    ref_t = RefSoap((6, 6), freq)
    for step in range(steps):
        g = table[step]
        u = np.zeros((12, 12))
        for (i, j), ref in refs.items():
            u[6 * i : 6 * i + 6, 6 * j : 6 * j + 6] = ref.step(g["w"][6 * i : 6 * i + 6, 6 * j : 6 * j + 6])
        ut = ref_t.step(g["t"].reshape(6, 6)).reshape(2, 3, 6)
        np.testing.assert_allclose(ours[step]["w"], u, rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(ours[step]["t"], ut, rtol=2e-4, atol=2e-5)
    assert np.abs(ours[-1]["w"]).max() > 0.1  # a real step, not zeros


def test_unrotated_axis_is_adam_on_that_side():
    # max_precond_dim=5: the 6-wide axis is not rotated, so a (6, 6) matrix with one_diag off and
    # every axis >= 5 is plain Adam (with Levanter's step count).
    shapes = {"w": (6, 6)}
    grads, table = _grads(shapes, seed=1)
    ours = _ours({"w": jnp.zeros((6, 6))}, grads, 5, block_size=None, max_precond_dim=5, merge_dims=False)
    m = v = 0
    for t in range(1, 6):
        g = table[t - 1]["w"]
        if t == 1:
            np.testing.assert_array_equal(ours[0]["w"], 0)
            continue
        m = B1 * m + (1 - B1) * g
        v = B2 * v + (1 - B2) * g**2
        u = m / (np.sqrt(v) + EPS) * np.sqrt(1 - B2**t) / (1 - B1**t)
        np.testing.assert_allclose(ours[t - 1]["w"], u, rtol=1e-5, atol=1e-6)


def test_layouts():
    # merging: the cost picks (64 * 128) = 8192 over two small axes; (6, 6) stays
    assert merge_small_dims((64, 128), 2048, (False, False)) == ((8192,), (False,))
    assert merge_small_dims((2, 3, 6), 6, (False,) * 3) == ((6, 6), (False, False))
    assert merge_small_dims((1, 1), 2048, (False, False)) == ((1,), (True,))
    lay = soap_layout(
        (300, 20000),
        max_precond_dim=10000,
        one_diag=False,
        merge_dims=False,
        target_merged_dim_size=2048,
        block_size=256,
    )
    # the big axis is neither cut nor rotated (only padded); the other is cut in two blocks of 256
    assert lay.blocks == (2, 1) and lay.block_shape == (256, 20224) and lay.rotated == (True, False)
    kw = dict(max_precond_dim=10000, merge_dims=False, target_merged_dim_size=2048, block_size=16)
    # one_diag: only the first axis is rotated, so only it is cut; the other is padded to 64
    lay = soap_layout((40, 50), one_diag=True, **kw)
    assert lay.blocks == (3, 1) and lay.block_shape == (16, 64) and lay.rotated == (True, False)
    lay = soap_layout((40, 50), one_diag=False, **kw)
    assert lay.blocks == (3, 4) and lay.block_shape == (16, 16) and lay.rotated == (True, True)
    x = jnp.arange(40 * 50, dtype=jnp.float32).reshape(40, 50)
    b = to_stack(x, lay)
    assert b.shape == (12, 16, 16)
    np.testing.assert_array_equal(b[5, :16, :2], x[16:32, 16:18])  # block (1, 1), row-major
    np.testing.assert_array_equal(b[11, :8, :2], x[32:40, 48:50])  # the last, zero-padded one
    assert float(jnp.abs(b[11, 8:]).sum()) == 0 and float(jnp.abs(b[11, :, 2:]).sum()) == 0
    np.testing.assert_array_equal(from_stack(b, lay), x)


def test_levanter_defaults_and_registry():
    cfg = OptimizerConfig.from_yaml("type: soap")
    assert isinstance(cfg, SoapConfig)
    assert (cfg.beta1, cfg.beta2, cfg.shampoo_beta, cfg.epsilon, cfg.max_grad_norm) == (
        0.95,
        0.95,
        0.95,
        1e-8,
        1.0,
    )
    assert (cfg.precondition_frequency, cfg.max_precond_dim, cfg.block_size) == (10, 10000, 256)
    assert cfg.merge_small_dims and cfg.partition_grads_into_blocks and not cfg.one_diag
    assert (cfg.target_merged_dim_size, cfg.weight_decay, cfg.schedule_list) == (2048, 0.0, None)
    with pytest.raises(ConfigError, match=r"schedule_list=\['cosine'\]: Levanter's soap declares"):
        SoapConfig(schedule_list=["cosine"])
    tx = cfg.build(100)
    params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
    state = tx.init(params)
    for _ in range(3):
        u, state = tx.update({"w": jnp.ones((4, 3)) * 0.1, "b": jnp.ones(3)}, state, params)
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(u))


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"block_size": 0}, r"soap\.block_size=0"),
        ({"block_size": 20000}, r"soap\.block_size=20000: must be < max_precond_dim=10000"),
        ({"precondition_frequency": 0}, r"soap\.precondition_frequency=0"),
        ({"shampoo_beta": 1.0}, r"soap\.shampoo_beta=1\.0"),
        ({"precond_dtype": "float16"}, r"soap\.precond_dtype='float16'"),
    ],
)
def test_bad_fields(fields, match):
    with pytest.raises(ConfigError, match=match):
        SoapConfig(**fields)


def test_preconditioner_too_big_names_the_parameter():
    cfg = SoapConfig(partition_grads_into_blocks=False, max_precond_dim=64)
    tx = cfg.build(10)
    with pytest.raises(ConfigError, match=r"soap: parameter \['layer'\]\['bias'\] of shape \(100,\)") as e:
        tx.init({"layer": {"bias": jnp.ones(100), "w": jnp.ones((8, 8))}})
    assert "\n" not in str(e.value)


SHARDING_SCRIPT = textwrap.dedent(
    """
    import json
    import jax, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P, AxisType
    from marin_optim.optimizers.soap import SoapConfig

    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto))
    specs = {"w": P("data", "model"), "t": P(None, "data", "model"), "v": P("model", "data")}
    shapes = {"w": (64, 96), "t": (16, 32, 16), "v": (48, 32)}
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    grads = [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(4)]
    # blocks of 16 with every factor full rank (see the module docstring); a refresh at step 2 and 4
    cfg = SoapConfig(merge_small_dims=False, block_size=16, precondition_frequency=2, warmup=0)
    tx = cfg.build(10)

    def run(p, gs):
        s = tx.init(p)
        for g in gs:
            u, s = tx.update(g, s, p)
        return u

    single = jax.jit(run)(params, grads)
    put = lambda tree: {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in tree.items()}
    sharded = jax.jit(run)(put(params), [put(g) for g in grads])
    out = {
        k: {
            "norm": float(np.linalg.norm(np.asarray(single[k]))),
            "rel_err": float(np.linalg.norm(np.asarray(sharded[k]) - np.asarray(single[k]))
                             / np.linalg.norm(np.asarray(single[k]))),
        }
        for k in params
    }
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.slow
def test_eight_device_update_equals_one_device():
    result = run_on_devices(SHARDING_SCRIPT)
    for leaf, r in result.items():
        assert r["norm"] > 0, (leaf, r)
        assert r["rel_err"] < SHARDED_TOLERANCE, (leaf, r)


@pytest.mark.parametrize("merge", [True, False])
def test_a_scalar_parameter_is_a_one_vector(merge):
    # a 0-d leaf (a learned temperature, a gate) has one value: preconditioned as a 1-vector,
    # its update and second moment keep its shape
    params = {"w": jnp.ones((8, 8)), "s": jnp.ones(()), "v": jnp.ones(5)}
    tx = SoapConfig(merge_small_dims=merge, warmup=0).build(10)
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update(jax.tree.map(lambda x: 0.1 * x, params), state, params)
    assert updates["s"].shape == () and np.isfinite(float(updates["s"])) and float(updates["s"]) < 0
