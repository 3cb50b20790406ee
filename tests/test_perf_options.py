"""Correctness of the performance options: moment dtypes, skip-aware transforms, copy-free steps.

No timing here: the speed claims live in benchmarks/optimizer_step.py. What is checked is what
the speed relies on and could silently break: the fast transforms compute the same numbers as
their references, a guarded step still leaves the state unchanged when it skips, the compiled
step holds no full-size temporary buffer or copy, and every optimizer's state can be donated.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

from marin_optim import AdamConfig, AdamWConfig, ConfigError, OptimizerConfig
from marin_optim.transforms import tree_select
from marin_optim.transforms.adam import scale_by_adam
from marin_optim.transforms.guards import skip_step_guard
from marin_optim.transforms.skipping import update_keeping_state_on_skip

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _tree(seed: int, scale: float = 1.0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(scale * rng.normal(size=(6, 5)), jnp.float32),
        "b": jnp.asarray(scale * rng.normal(size=(5,)), jnp.float32),
    }


def _run(tx: optax.GradientTransformation, steps: int = 6, **extra) -> list[tuple]:
    """Updates and states over a few steps of fixed-seed gradients."""
    params = _tree(0)
    state = tx.init(params)
    out = []
    for t in range(steps):
        updates, state = tx.update(_tree(10 + t), state, params, **extra)
        out.append((updates, state))
    return out


def _close(a, b, rtol=1e-6, atol=1e-7):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=atol)


# -- the transforms compute the same numbers as optax's -----------------------------------------


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("eps_root", [0.0, 1e-6])
def test_scale_by_adam_matches_optax(nesterov, eps_root):
    ours = _run(scale_by_adam(0.8, 0.95, 1e-6, eps_root, nesterov=nesterov))
    ref = _run(optax.scale_by_adam(0.8, 0.95, 1e-6, eps_root, nesterov=nesterov))
    for (u, s), (ru, rs) in zip(ours, ref, strict=True):
        _close(u, ru, rtol=2e-6)
        _close(s, rs)
        assert isinstance(s, optax.ScaleByAdamState)


def test_bf16_moments_follow_the_rule_with_bf16_storage():
    """Written rule in numpy, rounding both moments to bfloat16 after every step."""
    b1, b2, eps = 0.9, 0.95, 1e-8
    tx = scale_by_adam(b1, b2, eps, mu_dtype="bfloat16", nu_dtype=jnp.bfloat16)
    params = _tree(0)
    state = tx.init(params)
    assert {x.dtype for x in jax.tree.leaves((state.mu, state.nu))} == {jnp.dtype(jnp.bfloat16)}
    bf16 = ml_dtypes.bfloat16
    m = {k: np.zeros(v.shape, bf16) for k, v in params.items()}
    v = {k: np.zeros(p.shape, bf16) for k, p in params.items()}
    for t in range(1, 8):
        g = _tree(10 + t)
        updates, state = tx.update(g, state, params)
        for k in params:
            gk = np.asarray(g[k], np.float32)
            m[k] = (b1 * m[k].astype(np.float32) + (1 - b1) * gk).astype(bf16)
            v[k] = (b2 * v[k].astype(np.float32) + (1 - b2) * gk * gk).astype(bf16)
            mh = m[k].astype(np.float32) / (1 - b1**t)
            vh = v[k].astype(np.float32) / (1 - b2**t)
            np.testing.assert_allclose(np.asarray(updates[k]), mh / (np.sqrt(vh) + eps), rtol=1e-5)
            np.testing.assert_array_equal(np.asarray(state.mu[k]).view(np.uint16), m[k].view(np.uint16))
            np.testing.assert_array_equal(np.asarray(state.nu[k]).view(np.uint16), v[k].view(np.uint16))


def test_adam_config_moment_dtypes():
    params = _tree(0)
    state = AdamWConfig(mu_dtype="bfloat16", nu_dtype="float32").build(10).init(params)
    leaves = {
        str(x.dtype) for x in jax.tree.leaves(state) if getattr(x, "ndim", 0) >= 1 and x.size in (30, 5)
    }
    assert leaves == {"bfloat16", "float32"}
    for bad in ("float16", "bf16", "fp32"):
        with pytest.raises(ConfigError, match="mu_dtype"):
            AdamConfig(mu_dtype=bad)
    with pytest.raises(ConfigError, match="nu_dtype"):
        AdamConfig(nu_dtype="int8")
    cfg = AdamConfig(mu_dtype="bfloat16")
    assert OptimizerConfig.from_yaml(cfg.to_yaml()) == cfg


def test_bf16_moments_train_like_fp32():
    """A quadratic: bf16 moments reach (about) the same point as fp32 moments."""
    target = _tree(3)

    def fit(cfg):
        tx = cfg.build(200)
        p = jax.tree.map(jnp.zeros_like, target)
        s = tx.init(p)

        @jax.jit
        def step(p, s):
            g = jax.grad(lambda q: sum(jnp.sum((q[k] - target[k]) ** 2) for k in q))(p)
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        for _ in range(200):
            p, s = step(p, s)
        return p

    base = dict(learning_rate=0.05, weight_decay=0.0, warmup=0, lr_schedule="constant")
    p32 = fit(AdamWConfig(**base))
    p16 = fit(AdamWConfig(**base, mu_dtype="bfloat16", nu_dtype="bfloat16"))
    _close(p16, target, rtol=0.05, atol=0.05)
    _close(p16, p32, rtol=0.05, atol=0.05)


# -- skipped steps keep the old state, computed copy-free ---------------------------------------

GUARDED_TRANSFORMS = {
    "adam": lambda: scale_by_adam(0.9, 0.95),
    "adam-bf16": lambda: scale_by_adam(0.9, 0.95, mu_dtype="bfloat16", nu_dtype="bfloat16"),
    "optax-adam": lambda: optax.scale_by_adam(0.9, 0.95),
    "optax-trace-nesterov": lambda: optax.trace(0.9, nesterov=True),
    "optax-belief": lambda: optax.scale_by_belief(),
    "optax-amsgrad": lambda: optax.scale_by_amsgrad(),
    "optax-adafactor": lambda: optax.scale_by_factored_rms(min_dim_size_to_factor=4),
    "optax-lion": lambda: optax.scale_by_lion(0.9, 0.99),  # reads the old state: XLA still copies
}


@pytest.mark.parametrize("name", sorted(GUARDED_TRANSFORMS))
def test_guarded_nan_step_is_a_no_op(name):
    """Steps with a NaN gradient in the middle give the same result as the steps without it."""
    make = GUARDED_TRANSFORMS[name]
    tx = skip_step_guard(optax.chain(make(), optax.scale(-0.1)))
    clean_tx = optax.chain(make(), optax.scale(-0.1))
    params = _tree(0)
    grads = [_tree(10 + t) for t in range(5)]
    nan = jax.tree.map(lambda g: g.at[0].set(jnp.nan), grads[2])

    update = jax.jit(tx.update)
    p, s = params, tx.init(params)
    for g in [*grads[:2], nan, *grads[2:]]:
        u, s = update(g, s, p)
        p = optax.apply_updates(p, u)
    q, cs = params, clean_tx.init(params)
    for g in grads:
        u, cs = clean_tx.update(g, cs, q)
        q = optax.apply_updates(q, u)
    assert int(s.skipped_steps) == 1
    _close(p, q)
    _close(s.inner_state, cs)


@pytest.mark.parametrize("skipped", [False, True])
def test_update_keeping_state_equals_update_then_select(skipped):
    tx = optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(0.1), optax.scale(-0.01))
    params = _tree(0)
    state = tx.update(_tree(1), tx.init(params), params)[1]
    grads = _tree(2)
    pred = jnp.bool_(skipped)
    step = jax.jit(lambda g, st, p: update_keeping_state_on_skip(tx.update, pred, g, st, p))
    u, s = step(grads, state, params)
    ref_u, ref_s = jax.jit(tx.update)(grads, state, params)
    # Two different XLA programs: floating-point contraction may differ by an ulp or so.
    _close(s, tree_select(pred, state, ref_s), rtol=1e-6, atol=1e-9)
    if not skipped:  # on a skipped step the update is garbage that the guard zeroes
        _close(u, ref_u, rtol=1e-5, atol=1e-9)


def test_update_that_cannot_be_traced_falls_back_to_the_plain_select():
    """An update that reads concrete values (eager only) still works, through the plain path."""

    def update(updates, state, params=None):
        scale = float(jnp.sum(state))  # a host read: fails under make_jaxpr
        return jax.tree.map(lambda g: g * (1.0 + scale), updates), state + 1.0

    tx = skip_step_guard(optax.GradientTransformation(lambda p: jnp.zeros(()), update))
    params = _tree(0)
    s0 = tx.init(params)
    _, s1 = tx.update(_tree(1), s0, params)
    assert float(s1.inner_state) == 1.0
    _, s2 = tx.update(jax.tree.map(lambda g: g * jnp.nan, _tree(1)), s1, params)
    assert float(s2.inner_state) == 1.0 and int(s2.skipped_steps) == 1


# -- what the speed relies on: no full-size temporaries or copies in the compiled step ----------


def _compiled_step(tx, params, grads):
    state = tx.init(params)

    def step(p, s, g):
        u, s = tx.update(g, s, p, loss=jnp.float32(1.0))
        return optax.apply_updates(p, u), s

    return jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()


def _full_size_copies(hlo: str, min_elems: int) -> int:
    import math
    import re

    count = 0
    for line in hlo.split("ENTRY", 1)[-1].splitlines():
        m = re.search(r"= \w+\[([0-9,]+)\][^ ]* copy\(", line)
        if m and math.prod(int(d) for d in m.group(1).split(",")) >= min_elems:
            count += 1
    return count


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks XLA:CPU's buffer assignment")
@pytest.mark.parametrize(
    "cfg",
    [
        AdamWConfig(),
        AdamWConfig(max_grad_norm=None),
        AdamWConfig(mu_dtype="bfloat16", nu_dtype="bfloat16"),
        AdamWConfig(skip_nonfinite=False, max_grad_norm=None),
        AdamWConfig(nesterov=True),
    ],
    ids=["default", "guard-no-clip", "bf16-moments", "bare", "nesterov"],
)
def test_adamw_step_is_copy_free(cfg):
    """The donated AdamW step updates every buffer in place (the guard's select included)."""
    params = {"w1": jnp.ones((64, 256)), "w2": jnp.ones((256, 64)), "g": jnp.ones((64,))}
    grads = jax.tree.map(lambda x: 1e-3 * x, params)
    exe = _compiled_step(cfg.build(100), params, grads)
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    assert exe.memory_analysis().temp_size_in_bytes < 0.05 * param_bytes
    assert _full_size_copies(exe.as_text(), 64 * 64) == 0


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks XLA:CPU's buffer assignment")
@pytest.mark.parametrize("name", ["optax-adam", "optax-trace-nesterov", "optax-belief", "optax-amsgrad"])
def test_guarded_optax_transforms_are_copy_free(name):
    """The guard around plain optax transforms: copy-free, where the textbook select copies."""
    params = {"w1": jnp.ones((64, 256)), "w2": jnp.ones((256, 64))}
    grads = jax.tree.map(lambda x: 1e-3 * x, params)
    inner = optax.chain(GUARDED_TRANSFORMS[name](), optax.scale(-1e-3))
    exe = _compiled_step(skip_step_guard(inner), params, grads)
    assert _full_size_copies(exe.as_text(), 64 * 64) == 0
    assert exe.memory_analysis().temp_size_in_bytes < 0.05 * 4 * 2 * 64 * 256

    def textbook_guard(updates, state, params=None, **extra):
        skipped = ~jnp.isfinite(sum(jnp.sum(g) for g in jax.tree.leaves(updates)))
        u, new = inner.update(updates, state, params)
        return jax.tree.map(lambda x: jnp.where(skipped, 0.0, x), u), tree_select(skipped, state, new)

    control = _compiled_step(optax.GradientTransformationExtraArgs(inner.init, textbook_guard), params, grads)
    assert _full_size_copies(control.as_text(), 64 * 64) > 0


def _buffers(tree):
    return [x.unsafe_buffer_pointer() for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)]


@pytest.mark.parametrize("name", sorted(OptimizerConfig.registered()))
def test_state_can_be_donated(name):
    """No two state leaves, and no state leaf and parameter, share a buffer (XLA refuses to
    donate one buffer twice, and trainers donate both)."""
    tx = OptimizerConfig.get_choice_class(name)().build(10)  # every optimizer builds with its defaults
    params = {
        "embed": jnp.ones((16, 8)),
        "layer": {"w": jnp.ones((8, 8)), "norm": jnp.ones((8,))},
        "lm_head": jnp.ones((8, 16)),
    }
    state = tx.init(params)
    state_ptrs = _buffers(state)
    assert len(state_ptrs) == len(set(state_ptrs)), "state leaves share a buffer"
    assert not set(state_ptrs) & set(_buffers(params)), "a state leaf aliases a parameter"


# -- the benchmark itself still runs -----------------------------------------------------------


@pytest.fixture
def benchmark_module():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import opt_bench

        yield opt_bench
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_llama_shapes_hit_the_target(benchmark_module):
    for target in (50_000_000, 1_000_000_000):
        shape = benchmark_module.llama_shape(target)
        assert abs(shape.num_params() / target - 1) < 0.1
        assert shape.hidden % 128 == 0 and shape.layers >= 2
    assert benchmark_module.parse_count("1.5B") == 1_500_000_000


def test_benchmark_layouts_keep_the_size(benchmark_module):
    import jax

    shape = benchmark_module.llama_shape(50_000_000)

    def leaves(layout):
        return jax.tree.leaves(shape.shapes(layout), is_leaf=benchmark_module.is_shape)

    n = shape.num_params()
    assert len(leaves("stacked")) == 12 and shape.num_params("stacked") == n
    uniform = leaves("uniform")
    assert len(uniform) == len(leaves("llama")) and len(set(uniform)) == 1
    assert abs(shape.num_params("uniform") / n - 1) < 0.01
    assert leaves("single") == [(round(n / shape.hidden), shape.hidden)]
    with pytest.raises(ValueError, match="layout 'flat'"):
        shape.shapes("flat")


@pytest.mark.parametrize("name", ["cautious_wrapper", "sam"])
def test_benchmark_bare_rows_of_a_wrapper_set_its_base(benchmark_module, name):
    # A wrapper refuses the common fields itself: the bare row must reach its base.
    bare = benchmark_module.config_with(OptimizerConfig.registered()[name], **benchmark_module.BARE)
    common = benchmark_module.common_config(bare)
    assert common is bare.base
    assert (common.max_grad_norm, common.skip_nonfinite) == (None, False)
    schedule = bare.lr_scheduler(100)
    assert [float(schedule(t)) for t in (0, 50, 99)] == pytest.approx([common.learning_rate] * 3)


@pytest.mark.slow
@pytest.mark.extended
def test_benchmark_quick_run_writes_json(benchmark_module, tmp_path):
    out = tmp_path / "result.json"
    argv = ["--quick", "--optimizers", "adamw", "--params", "100k", "--out", str(out)]
    result = benchmark_module.main(argv)
    data = json.loads(out.read_text())
    assert data["meta"]["n_params"] == result["meta"]["n_params"] > 0
    rows = {(r["optimizer"], r["variant"], r["framework"]): r for r in data["rows"]}
    ours = rows[("adamw", "default", "marin_optim")]
    assert ours["skipped"] is None and ours["ms"] > 0
    assert ours["bytes_per_param"] == pytest.approx(32.0, rel=0.01)  # p, g, m, v + the norm's read
    assert ours["state_bytes_per_param"] == pytest.approx(8.0, rel=0.01)
    bf16 = rows[("adamw", "default, bf16 moments", "marin_optim")]
    assert bf16["state_bytes_per_param"] == pytest.approx(4.0, rel=0.01)
    assert rows[("adamw", "bare", "marin_optim")]["bytes_per_param"] == pytest.approx(28.0, rel=0.01)
    assert ours["vs_optax"] > 0 and ours["vs_optax_row"] == "optax clip+sched"
    assert ours["vs_torch"] > 0 and ours["vs_torch_row"] == "torch clip+sched"
    assert set(data["headline"]) >= {"vs_torch_bare", "vs_torch_clip_sched", "of_memory_pass_bare"}
    assert data["headline"]["vs_torch_bare"] > 0
