"""PSGD Kron against its written rule in NumPy (float64), and its layout, schedule, state and errors.

The reference re-implements the rule of ``marin_optim.transforms.kron``'s docstring (Li's PSGD
Kron, as psgd_torch and Levanter have it) one tensor at a time: momentum with bias correction,
the damped momentum, ``A = Q G``, ``B = Q^-T V`` by explicit inverses, the per-axis Lie-group
steps (triangular: normalised by the written spectral-norm lower bound; diagonal: by the largest
entry), the rebalancing, and ``P G = Q^T Q G`` along each axis. The probes ``V`` are drawn from the
documented stream (the state's key, split once per step, then once per leaf), which is what makes
a run reproducible; everything else is written here from the rule.
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
from marin_optim.optimizers.kron import KronConfig
from marin_optim.transforms.kron import diagonal_axes, scale_by_kron, update_probability

B1, LR_P = 0.9, 0.1
EPS_DAMP = np.sqrt(np.finfo(np.float32).eps)


def _apply(x, m, axis):
    """``m`` applied along ``axis`` of ``x`` (a vector ``m`` is a diagonal)."""
    if m.ndim == 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        return x * m.reshape(shape)
    return np.moveaxis(np.tensordot(m, x, axes=(1, axis)), 0, axis)


def _unfold_gram(x, axis, diagonal):
    others = tuple(j for j in range(x.ndim) if j != axis)
    return np.sum(x * x, axis=others) if diagonal else np.tensordot(x, x, axes=(others, others))


def _lower_bound(a):
    """The written bound: one power step from the column of largest norm, on ``a / max|a|``."""
    s = np.max(np.abs(a))
    if s == 0:
        return 0.0
    b = a / s
    x = b[:, np.argmax(np.sum(b * b, axis=0))] @ b
    return s * np.linalg.norm((x / np.linalg.norm(x)) @ b.T)


class RefKron:
    """PSGD Kron for one tensor (no merging or blocks), float64."""

    def __init__(self, shape, diagonal, flat_start, min_prob, balance_every=100):
        self.t, self.counter, self.fits = 0, 0, 0
        self.m = np.zeros(shape)
        scale = 1.0 ** (1 / len(shape))
        self.q = [
            scale * (np.ones(d) if diag else np.eye(d)) for d, diag in zip(shape, diagonal, strict=True)
        ]
        self.flat_start, self.min_prob, self.balance_every = flat_start, min_prob, balance_every

    def step(self, g, v):
        self.t += 1
        self.m = B1 * self.m + (1 - B1) * g
        m = self.m / (1 - B1**self.t)
        prob = float(np.clip(np.exp(-0.001 * (self.t - self.flat_start)), self.min_prob, 1.0))
        self.counter += 1
        if self.counter >= 1 / prob:
            self.counter = 0
            self.fit(m + EPS_DAMP * np.mean(np.abs(m)) * v, v)
        out = m
        for i, q in enumerate(self.q):
            out = _apply(out, q * q, i) if q.ndim == 1 else _apply(_apply(out, q, i), q.T, i)
        return out

    def fit(self, g, v):
        self.fits += 1
        if self.fits >= self.balance_every:
            self.fits = 0
            norms = np.array([np.max(np.abs(q)) for q in self.q])
            target = np.exp(np.mean(np.log(norms)))
            self.q = [q * target / n for q, n in zip(self.q, norms, strict=True)]
        a, b = g, v
        for i, q in enumerate(self.q):
            a = _apply(a, q, i)
            b = _apply(b, 1 / q if q.ndim == 1 else np.linalg.inv(q).T, i)
        new = []
        for i, q in enumerate(self.q):
            diag = q.ndim == 1
            t1, t2 = _unfold_gram(a, i, diag), _unfold_gram(b, i, diag)
            if diag:
                new.append(q - LR_P / np.max(np.abs(t1 + t2)) * (t1 - t2) * q)
            else:
                new.append(q - LR_P / _lower_bound(t1 + t2) * np.triu(t1 - t2) @ q)
        self.q = new


def _probes(key, shapes, steps):
    """The documented stream: per step ``key, sub = split(key)``, then ``split(sub, leaves)``."""
    out = []
    for _ in range(steps):
        key, sub = jax.random.split(key)
        keys = jax.random.split(sub, len(shapes))
        out.append(
            [
                np.asarray(jax.random.normal(k, s, jnp.float32), np.float64)
                for k, s in zip(keys, shapes, strict=True)
            ]
        )
    return out


SHAPES = {"a_matrix": (12, 20), "b_tensor": (4, 6, 5), "c_vector": (9,)}


@pytest.mark.parametrize(
    "flat_start, min_prob, mode, balance_every",
    [(100, 0.05, None, 100), (0, 0.4, "one_diag", 2)],
    ids=["every-step", "annealed-one_diag-rebalanced"],
)
def test_matches_written_rule(flat_start, min_prob, mode, balance_every, monkeypatch):
    """12 steps: a matrix, a 3-D tensor and a vector, each with its own factors; ``every-step`` fits
    at every step, the other anneals from step 0 to probability 0.4 (p just below 1: fits at steps
    2, 4, 6, ...), one
    diagonal axis per tensor and a rebalancing every 2 fits."""
    monkeypatch.setattr("marin_optim.transforms.kron.BALANCE_EVERY", balance_every)
    tx = scale_by_kron(
        b1=B1,
        preconditioner_update_probability=min_prob,
        update_prob_flat_start=flat_start,
        memory_save_mode=mode,
        precond_update_precision="float32",
        precond_grads_precision="float32",
        merge_dims=False,
        block_size=None,
        seed=3,
    )
    rng = np.random.default_rng(0)
    steps = 12
    grads = [{k: rng.normal(size=s) for k, s in SHAPES.items()} for _ in range(steps)]
    params = {k: jnp.zeros(s) for k, s in SHAPES.items()}
    state, update = tx.init(params), jax.jit(tx.update)
    refs = {
        k: RefKron(s, diagonal_axes(s, 25000, 2, mode), flat_start, min_prob, balance_every)
        for k, s in SHAPES.items()
    }
    probes = _probes(jax.random.PRNGKey(3), list(SHAPES.values()), steps)
    for t in range(steps):
        u, state = update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), grads[t]), state, params)
        for i, (k, ref) in enumerate(refs.items()):
            expected = ref.step(grads[t][k], probes[t][i])
            got = np.asarray(u[k], np.float64)
            assert np.linalg.norm(got - expected) <= 2e-4 * np.linalg.norm(expected), (t, k)
    # one_diag: the larger axis (20) of the matrix is diagonal
    assert [q.ndim for q in refs["a_matrix"].q] == ([2, 1] if mode else [2, 2])


def test_diagonal_axes_and_schedule():
    assert diagonal_axes((12, 20), 25000, 2, None) == (False, False)
    assert diagonal_axes((12, 20), 25000, 2, "one_diag") == (False, True)
    assert diagonal_axes((20, 20), 25000, 2, "one_diag") == (False, True)  # the last of equal ones
    assert diagonal_axes((12, 20), 25000, 2, "all_diag") == (True, True)
    assert diagonal_axes((12, 1, 30000), 25000, 2, None) == (False, True, True)
    assert diagonal_axes((64,), 25000, 2, None) == (True,)
    with pytest.raises(ConfigError, match=r"memory_save_mode='some_diag': must be one of \[None, 'one_diag'"):
        diagonal_axes((4, 4), 25000, 2, "some_diag")
    # flat at 1 until flat_start, then exp(-0.001 (t - flat_start)) down to the floor
    p = [float(update_probability(jnp.int32(t), 0.05, 500)) for t in (1, 500, 1193, 2500, 10_000)]
    np.testing.assert_allclose(p, [1.0, 1.0, np.exp(-0.693), np.exp(-2.0), 0.05], rtol=1e-6)


def _run(cfg, params, grads):
    tx = cfg.build(100)
    state, update = tx.init(params), jax.jit(tx.update)
    out = []
    for g in grads:
        u, state = update(g, state, params)
        out.append(u)
    return out, state


def test_fit_schedule_counts_and_resume_continues_the_probe_stream():
    """With flat_start 0, p(t) = exp(-0.001 t) is just below 1 from step 1, so the counter must
    reach 2 (>= 1/p): the fits fall on steps 2, 4, 6 (as in Levanter, whose default anneal does
    the same from step 501);
    a run stopped after 6 steps and resumed from its state gives the uninterrupted run's updates
    bitwise (the probes' key is in the state), and another rng_seed gives other updates."""
    cfg = KronConfig(
        warmup=0, preconditioner_update_probability=0.25, update_prob_flat_start=0, merge_small_dims=False
    )
    params = {"w": jnp.zeros((8, 6))}
    rng = np.random.default_rng(1)
    grads = [{"w": jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)} for _ in range(10)]
    full, _ = _run(cfg, params, grads)
    tx = cfg.build(100)
    update = jax.jit(tx.update)
    state, counters, qs = tx.init(params), [], []
    for g in grads[:6]:
        _, state = update(g, state, params)
        kron = state.inner_state.inner_state[1][0][0]
        counters.append(int(kron.update_counter))
        qs.append(np.asarray(kron.preconditioners[0][0]))
    assert counters == [1, 0, 1, 0, 1, 0]
    changed = [not np.array_equal(a, b) for a, b in zip(qs[1:], qs[:-1], strict=True)]
    assert changed == [True, False, True, False, True]
    restored = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), state)  # as a checkpoint would
    for t, g in enumerate(grads[6:], start=6):
        u, restored = update(g, restored, params)
        np.testing.assert_array_equal(np.asarray(u["w"]), np.asarray(full[t]["w"]))
    other, _ = _run(KronConfig(**{**_fields(cfg), "rng_seed": 1}), params, grads)
    assert not np.array_equal(np.asarray(other[-1]["w"]), np.asarray(full[-1]["w"]))


def _fields(cfg):
    return {k: v for k, v in cfg.to_dict().items() if k != "type"}


def test_levanter_defaults_chain_and_registry():
    cfg = OptimizerConfig.from_yaml("type: kron")
    assert isinstance(cfg, KronConfig)
    assert (cfg.beta1, cfg.weight_decay, cfg.max_grad_norm, cfg.learning_rate) == (0.9, 0.1, 1.0, 6e-4)
    assert (cfg.preconditioner_update_probability, cfg.update_prob_flat_start) == (0.05, 500)
    assert (cfg.max_size_triangular, cfg.min_ndim_triangular, cfg.memory_save_mode) == (25000, 2, None)
    assert (cfg.preconditioner_lr, cfg.preconditioner_init_scale, cfg.precond_update_precision) == (
        0.1,
        1.0,
        "tensorfloat32",
    )
    assert (cfg.target_merged_dim_size, cfg.block_size, cfg.lax_map_batch_size) == (8192, 256, 8)
    assert cfg.merge_small_dims and cfg.partition_grads_into_blocks and not cfg.normalize_grads
    assert cfg.clip_norm == 1.0 and KronConfig(normalize_grads=True).clip_norm is None
    # the update is clipped to RMS 1.1 per leaf: a huge gradient gives a bounded step
    params = {"w": jnp.zeros((6, 5)), "s": jnp.zeros(())}
    u, _ = _run(
        KronConfig(warmup=0, max_grad_norm=0, learning_rate=1.0, weight_decay=0.0),
        params,
        [{"w": jnp.full((6, 5), 1e4), "s": jnp.float32(-1e4)}],
    )
    rms = float(jnp.sqrt(jnp.mean(u[0]["w"] ** 2)))
    assert rms == pytest.approx(1.1, rel=1e-5) and float(u[0]["s"]) == pytest.approx(1.1, rel=1e-5)


def test_layouts_in_the_state():
    """Merged axes and blocks as Levanter lays them out: a (40, 300) matrix merges into one axis
    of 12000, cut into 47 blocks of 256 with a triangular factor each; a vector gets one diagonal
    factor padded to 256; a scan-stacked leaf has a leading layer axis."""
    import haliax as hax
    import haliax.nn as hnn

    tx = KronConfig().build(10)
    layer = hax.Axis("layer", 3)
    embed = hax.Axis("embed", 16)
    stacked = hnn.Stacked.init(layer, hnn.Linear, gradient_checkpointing=False)(
        embed, hax.Axis("out", 24), key=jax.random.split(jax.random.PRNGKey(0), 3)
    )
    params = {"w": jnp.zeros((40, 300)), "v": jnp.zeros(7), "stack": stacked}
    kron = tx.init(params).inner_state.inner_state[1][0][0]
    shapes = [[q.shape for q in qs] for qs in kron.preconditioners]
    leaves = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    by_name = dict(zip(leaves, shapes, strict=True))
    assert by_name["['w']"] == [(47, 256, 256)]
    assert by_name["['v']"] == [(1, 256)]
    weight = next(v for k, v in by_name.items() if "weight" in k)
    assert weight == [(3, 2, 256, 256)]  # 3 layers; 16x24 merged to 384, cut into 2 blocks


@pytest.mark.parametrize("batch", [1, 2])
def test_mapping_the_blocks_a_few_at_a_time_changes_nothing_but_memory(batch):
    # lax_map_scanned_layers maps the same per-block update over the blocks, a few at a time
    params = {"w": jnp.zeros((48, 40)), "v": jnp.zeros(7)}
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(p.size), p.shape), params)
    common = dict(block_size=16, target_merged_dim_size=16, preconditioner_update_probability=1.0, warmup=0)
    outs = []
    for mapped in (False, True):
        tx = KronConfig(**common, lax_map_scanned_layers=mapped, lax_map_batch_size=batch).build(10)
        state = tx.init(params)
        for _ in range(3):
            updates, state = tx.update(grads, state, params)
        outs.append(updates)
    for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "fields, match",
    [
        (
            {"preconditioner_update_probability": 0.0},
            r"kron\.preconditioner_update_probability=0\.0: must be in \(0",
        ),
        (
            {"memory_save_mode": "two_diag"},
            r"kron\.memory_save_mode='two_diag': must be one of None, 'one_diag'",
        ),
        ({"block_size": 0}, r"kron\.block_size=0"),
        ({"precond_update_precision": "float16"}, r"kron\.precond_update_precision='float16'"),
        (
            {"preconditioner_sharding": ["data"]},
            r"kron\.preconditioner_sharding=\['data'\]: accepted as null only",
        ),
        ({"beta1": 1.0}, r"kron\.beta1=1\.0"),
    ],
)
def test_bad_fields(fields, match):
    with pytest.raises(ConfigError, match=match):
        KronConfig(**fields)


def test_preconditioner_too_big_names_the_parameter():
    tx = KronConfig(partition_grads_into_blocks=False, max_size_triangular=1000).build(10)
    with pytest.raises(ConfigError, match=r"kron: parameter \['layer'\]\['w'\] of shape \(40, 300\)") as e:
        tx.init({"layer": {"w": jnp.ones((40, 300)), "b": jnp.ones(8)}})
    assert "1000" in str(e.value) and "\n" not in str(e.value)


SHARDING_SCRIPT = textwrap.dedent(
    """
    import json
    import jax, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P, AxisType
    from marin_optim.optimizers.kron import KronConfig

    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto))
    specs = {"w": P("data", "model"), "t": P(None, "data", "model"), "v": P("data")}
    shapes = {"w": (64, 96), "t": (16, 32, 16), "v": (48,)}
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    grads = [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(5)]
    cfg = KronConfig(merge_small_dims=False, block_size=32, warmup=0, precond_update_precision="float32")
    tx = cfg.build(10)

    def run(p, gs):
        s = tx.init(p)
        for g in gs:
            u, s = tx.update(g, s, p)
        return u, s

    single, _ = jax.jit(run)(params, grads)
    put = lambda tree: {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in tree.items()}
    sharded, state = jax.jit(run)(put(params), [put(g) for g in grads])
    kron = state.inner_state.inner_state[1][0][0]
    rel = lambda a, b: float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))
    out = {k: rel(sharded[k], single[k]) for k in params}
    out["mu_sharded_like_params"] = all(
        kron.mu[k].sharding.is_equivalent_to(NamedSharding(mesh, specs[k]), len(shapes[k])) for k in params
    )
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.slow
@pytest.mark.extended
def test_eight_device_update_equals_one_device():
    """Data 4 x model 2, blocks of 32 (the matrices cut into 2x3 and 1x1x1 blocks): 5 steps on
    sharded parameters equal the one-device steps to float32 rounding of the fits, and the
    momentum is sharded like the parameters."""
    result = run_on_devices(SHARDING_SCRIPT)
    assert result.pop("mu_sharded_like_params") is True
    for leaf, rel in result.items():
        assert rel <= 1e-4, (leaf, rel)


def test_padding_blowup_names_the_parameter():
    """Unmerged short axes are each padded up to block_size: an attention weight of shape
    (2, 2, 32, 128) would be one 256^4 block (4.3e9 values for 16384); refused before any
    allocation, naming the parameter (soap shares the layout and the check)."""
    tx = KronConfig(merge_small_dims=False).build(10)
    with pytest.raises(
        ConfigError, match=r"kron: parameter \['attn'\]\['q'\] of shape \(2, 2, 32, 128\) is cut"
    ) as e:
        tx.init({"attn": {"q": jnp.ones((2, 2, 32, 128))}, "w": jnp.ones((40, 300))})
    assert "262144x" in str(e.value) and "merge_small_dims: true" in str(e.value)
    KronConfig().build(10).init({"attn": {"q": jnp.ones((2, 2, 32, 128))}})  # merged: (128, 128)
    soap = OptimizerConfig.from_dict({"type": "soap", "merge_small_dims": False}).build(10)
    with pytest.raises(ConfigError, match=r"soap: parameter \['q'\] of shape \(2, 2, 32, 128\) is cut"):
        soap.init({"q": jnp.ones((2, 2, 32, 128))})
