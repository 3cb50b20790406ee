"""Matrix work divided over devices (``marin_optim.transforms.distributed``): same numbers, 1/N work.

On 8 simulated CPU devices with the speedrun's sharding (FSDP over ``data``; and data 4 x model
2), under a mesh in context as both trainers set it: each matrix optimizer's (Newton–Schulz,
Dion, SOAP, Kron) 5-step trajectory equals its one-device trajectory, its per-device FLOPs (XLA's
cost analysis of the compiled per-device program, ``unfused_cost``: a count, not a timing)
are within 1.25x of the one-device FLOPs / 8, its bytes accessed per device fall with the device
count (``TRAFFIC``), and its state takes 1/8 of its bytes per device;
every other registered optimizer's compiled update keeps its state divided (the memory analysis
of its outputs).
"""

from __future__ import annotations

import json
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from multidevice import run_on_devices

import marin_optim  # noqa: F401  (registers every optimizer)
from marin_optim.config import OptimizerConfig
from marin_optim.transforms.distributed import SMALL_STATE, spread_matrices

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import haliax as hax, jax, numpy as np
    from jax.sharding import Mesh
    from marin_optim import OptimizerConfig
    from marin_optim.speedrun.analysis import unfused_cost
    from marin_optim.speedrun.mesh import MeshConfig, make_mesh, sharding_tree
    from marin_optim.speedrun.model import ModelConfig, Transformer
    from marin_optim.transforms.distributed import SMALL_STATE

    # 4 stacked layers of q, k, v, o (64 x 64) and gate, up (192 x 64), down (64 x 192): 28
    # matrices of two shapes (up to transposition), plus embedding, head and norms
    model = ModelConfig(hidden_dim=64, intermediate_dim=192, num_heads=4, num_kv_heads=4, num_layers=4)
    params = Transformer.init(model, key=jax.random.PRNGKey(0))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), 5 * len(leaves))
    draw = lambda t: [0.01 * jax.random.normal(keys[5 * i + t], x.shape) for i, x in enumerate(leaves)]
    grads = [jax.tree.unflatten(treedef, draw(t)) for t in range(5)]
    tx = OptimizerConfig.from_dict(json.loads(sys.argv[1])).build(100)


    def trajectory(mesh, mesh_cfg, flops=True):
        # one compiled update, the trainers' way (shardings in, mesh in context), run for the 5
        # steps; its FLOPs, its state's bytes at rest and its all-to-alls
        mapping = mesh_cfg.parameter_mapping()
        state = jax.eval_shape(tx.init, params)
        p_sh, s_sh = sharding_tree(params, mapping, mesh), sharding_tree(state, mapping, mesh)
        with hax.partitioning.set_mesh(mesh):
            lowered = jax.jit(tx.update, in_shardings=(p_sh, s_sh, p_sh)).lower(params, state, params)
            step = lowered.compile()
            p, s = params, tx.init(params)
            for g in grads:  # placed as the step was compiled for (the update leaves them as it likes)
                p, s = jax.device_put(p, p_sh), jax.device_put(s, s_sh)
                u, s = step(jax.device_put(g, p_sh), s, p)
                p = jax.tree.map(lambda a, b: a + b, p, u)
        per_device = sum(
            x.dtype.itemsize * int(np.prod(sh.shard_shape(x.shape)))
            for x, sh in zip(jax.tree.leaves(state), jax.tree.leaves(s_sh), strict=True)
        )
        small = sum(x.dtype.itemsize * x.size for x in jax.tree.leaves(state) if x.size < SMALL_STATE)
        return {
            "params": [np.asarray(x) for x in jax.tree.leaves(p)],
            "cost": unfused_cost(lowered) if flops else None,
            "state_per_device": per_device,
            "state_total": sum(x.dtype.itemsize * x.size for x in jax.tree.leaves(state)),
            "small_state": small,
            "all_to_all": step.as_text().count(" all-to-all("),
        }


    single = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    one = trajectory(single, MeshConfig(data=1, model=1))
    den = sum(float(np.sum((y - np.asarray(x)) ** 2)) for y, x in zip(one["params"], leaves, strict=True))
    out = {}
    for layout, (data, mdl) in {"fsdp": (8, 1), "data4_model2": (4, 2)}.items():
        mesh_cfg = MeshConfig(data=data, model=mdl)
        r = trajectory(make_mesh(mesh_cfg), mesh_cfg, flops=layout in json.loads(sys.argv[2]))
        num = sum(float(np.sum((a - b) ** 2)) for a, b in zip(r.pop("params"), one["params"], strict=True))
        cost = r.pop("cost")
        ratios = {
            f"{k}_ratio": None if cost is None else cost[c] / (one["cost"][c] / 8)
            for k, c in (("flop", "flops"), ("bytes", "bytes accessed"))
        }
        out[layout] = {"rel_err": (num / den) ** 0.5, **ratios, **r}
    print("RESULT" + json.dumps(out))
    """
)

OPTIMIZERS = {
    "muon": {"type": "muon", "ns_dtype": "float32", "warmup": 0, "learning_rate": 0.02},
    # normuon, scion, namo, namoD, muonH, grug_muon take muon's path (map_orthogonalized)
    # rank 1/4: the factorisations (on a CPU loops, which the cost analysis counts once, not once
    # per matrix) stay small beside the matmuls the count is about; the 192-row matrices are
    # sketched (randomized Cholesky QR), the 64-row ones not
    "dion": {"type": "dion", "warmup": 0, "rank_fraction": 0.25},
    # blocks of 32: each 64 x 64 matrix is 4 blocks, each 64 x 192 one 12. No clip: the global
    # norm is summed over the devices' shards in another order, so with the clip on every gradient
    # differs from the one-device one in its last bit; the factors of these noise gradients have
    # near-equal small eigenvalues, whose eigenvectors eigh then picks differently (both bases
    # diagonalise the factor to float32 rounding), and SOAP's trajectories part (rel err 0.86). With
    # equal inputs the 8-device work is the one-device work bit for bit.
    "soap": {
        "type": "soap",
        "warmup": 0,
        "block_size": 32,
        "precondition_frequency": 2,
        "max_grad_norm": 0.0,
    },
    "kron": {"type": "kron", "warmup": 0, "block_size": 32, "preconditioner_update_probability": 1.0},
}

TOLERANCE = {"kron": 1e-4}
"""8 devices vs 1 over 5 steps, relative to the parameters' change: the same float32 work on the
same matrices, only reductions (the embedding's, the norms', a factor's ``G G^T``) summed in
another order; Kron's triangular fits carry that rounding a little further."""
DEFAULT_TOLERANCE = 1e-5

TRAFFIC = {"muon": 2.0, "dion": 3.0, "kron": 2.75, "soap": 6.0}
"""The most bytes a device may access (``unfused_cost``) on 8 devices, in multiples of a fair share
(one device's / 8); undivided, Muon's is 4.8x on the benchmark's model. Measured on this tree
(2026-12-04): muon 1.48, Kron 2.43, SOAP 5.30; Dion with its randomized Cholesky QR 2.38 (2.62 on
data 4 x model 2; 2026-12-06). This tree is
small enough that SOAP and Kron merge each of its tensors into one axis, cut into vectors of 32
values (``block_size`` 32): stacks of items under ``SMALL_STATE``, which stay whole on every device
(docs/performance.md, pod scale); the benchmark's model is cut into 256 x 256 blocks without a
gather (``test_blocks_are_cut_without_gathering_the_parameters``)."""


EXTENDED = ("dion", "kron", "soap")
"""Their trajectories here take 1-4 minutes each on 2 cores: the extended tier's (pytest
--extended). The default tier runs muon's, which moves every stack of matrices to its owners as
theirs do (``on_owners``), and checks Kron's and SOAP's 8-device steps against one device (data 4
x model 2) in tests/test_kron.py and tests/test_soap.py."""


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.extended) if n in EXTENDED else n for n in OPTIMIZERS]
)
def test_matrix_work_divides_over_eight_devices_with_the_same_numbers(name, extended):
    # FLOPs (a second, unfused compile) on FSDP; on data 4 x model 2 too in the extended tier
    counted = ["fsdp", "data4_model2"] if extended else ["fsdp"]
    result = run_on_devices(SCRIPT, json.dumps(OPTIMIZERS[name]), json.dumps(counted))
    for layout, r in result.items():
        print(f"{name} {layout}: {r}")
    for layout, r in result.items():
        assert r["rel_err"] <= TOLERANCE.get(name, DEFAULT_TOLERANCE), (layout, r)
        assert r["all_to_all"] > 0, (layout, "the matrices were not moved to their owners")
        # state sharded like the parameters: 1/8 per device, but for arrays too small to divide
        assert r["state_per_device"] <= r["state_total"] / 8 + r["small_state"], (layout, r)
        # per-device FLOPs: each device's share of the matrices, and at most one extra matrix
        # (or block) per shape; 28 matrices of two shapes over 8 devices: ceil(16/8) +
        # ceil(12/8) = 4 per device for 3.5
        if layout in counted:
            assert r["flop_ratio"] <= 1.25, (layout, r)
            assert r["bytes_ratio"] <= TRAFFIC[name], (layout, r)


BLOCKS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from marin_optim import OptimizerConfig
    from marin_optim.speedrun.analysis import analyse_update
    from marin_optim.speedrun.mesh import MeshConfig
    from marin_optim.speedrun.model import ModelConfig

    # the benchmark's layers (512 x 512 and 512 x 1536 matrices in 256 x 256 blocks), two of them;
    # FSDP divides the input projections along their rows, the output ones along their columns
    model = ModelConfig(hidden_dim=512, intermediate_dim=1536, num_heads=8, num_kv_heads=8, num_layers=2)
    out = {}
    for name in ("soap", "kron"):
        for data, mdl in json.loads(sys.argv[1]):
            cfg = OptimizerConfig.from_dict({"type": name})
            r = analyse_update(cfg, model, MeshConfig(data=data, model=mdl), flops=False)
            out[f"{name} data {data} x model {mdl}"] = {
                "gathered": r["collectives"]["all-gather"]["mb"] * 1e6,
                "moved": r["collectives"]["all-to-all"]["mb"] * 1e6,
                "params": r["param_bytes"],
            }
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.slow
def test_blocks_are_cut_without_gathering_the_parameters(extended):
    # SOAP's and Kron's blocks are cut from each parameter in steps XLA's partitioner moves with
    # all-to-alls (marin_optim.transforms.blocks.to_stack); cut straight from the parameter's layout
    # it gathered them whole on every device: 174 MB (SOAP) and 59 MB (Kron) of all-gathers on
    # FSDP over 8 devices, 265 and 115 MB on data 4 x model 2, for these 28 MB of parameters
    meshes = [(8, 1), (4, 2)] if extended else [(8, 1)]
    result = run_on_devices(BLOCKS_SCRIPT, json.dumps(meshes))
    assert len(result) == 2 * len(meshes)
    for case, r in result.items():
        print(case, r)
        assert r["moved"] > 0.5 * r["params"], (case, r)  # the blocks did go to their owners
        # what is still gathered: counters and small state (74 KB measured), not parameters
        assert r["gathered"] < 0.01 * r["params"], (case, r)


def test_without_a_mesh_each_batch_is_its_own_call():
    calls = []

    def fn(x):
        calls.append(x.shape)
        return 2 * x

    batches = [jnp.ones((2, 3, 5)), jnp.ones((1, 5, 3))]
    out = spread_matrices(fn, batches)
    assert calls == [(2, 3, 5), (1, 5, 3)]
    np.testing.assert_array_equal(np.asarray(out[1]), 2 * np.ones((1, 5, 3)))


def test_padded_stacks_join_shapes_only_where_the_busiest_device_gains():
    from marin_optim.transforms.distributed import padded_stacks
    from marin_optim.transforms.newton_schulz import newton_schulz_step_flops as cost

    # the speedrun's d=512 model: 16 matrices of 512 x 512, 12 of 512 x 1536 (oriented wide).
    # 8 devices: 2 + 2 items a device apart, 4 joined; 16: 1 + 1 apart (4.0 + 9.4 GFLOP) against
    # 2 of 512 x 1536 joined (18.8); 32: one 512 x 1536 a device joined, one of each apart
    shapes, counts = [(512, 512), (512, 1536)], [16, 12]
    assert padded_stacks(shapes, counts, 8, cost) == [[0], [1]]
    assert padded_stacks(shapes, counts, 16, cost) == [[0], [1]]
    assert padded_stacks(shapes, counts, 32, cost) == [[0, 1]]
    # three shapes: the small ones join the big one only where a device has room for them
    shapes, counts = [(64, 64), (64, 256), (32, 48)], [2, 4, 2]
    assert padded_stacks(shapes, counts, 8, cost) == [[0, 1, 2]]
    assert padded_stacks(shapes, counts, 4, cost) == [[0, 2], [1]]
    # ties keep the stacks apart (no padding for nothing); one stack, or too many to try, as given
    assert padded_stacks([(8, 8), (8, 16)], [4, 4], 2, lambda s: 1.0) == [[0], [1]]
    assert padded_stacks([(64, 64)], [3], 8, cost) == [[0]]
    assert padded_stacks([(i, 64) for i in range(1, 10)], [1] * 9, 8, cost) == [[i] for i in range(9)]


PADDED_SCRIPT = textwrap.dedent(
    """
    import json
    import haliax as hax, jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from marin_optim.speedrun.analysis import unfused_cost
    from marin_optim.transforms.distributed import spread_matrices
    from marin_optim.transforms.newton_schulz import newton_schulz, newton_schulz_step_flops

    ns = lambda m: newton_schulz(m, steps=5, dtype=jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    # 6 matrices of three shapes (one tall) for 8 devices: apart, each device would run one of
    # each shape; joined, one 64 x 192 a device
    batches = [
        jax.random.normal(keys[0], (3, 64, 64)),
        jax.random.normal(keys[1], (2, 192, 64)),
        jax.random.normal(keys[2], (1, 32, 48)),
    ]
    mesh = Mesh(np.array(jax.devices()).reshape(8, 1), ("data", "model"))
    shard = [NamedSharding(mesh, P(None, ("data", "model"))) for _ in batches]

    def spread(*bs, cost):
        return spread_matrices(ns, list(bs), padded_cost=cost)

    out = {}
    with hax.partitioning.set_mesh(mesh):
        for name, cost in (("joined", newton_schulz_step_flops), ("apart", None)):
            fn = jax.jit(lambda *bs, cost=cost: spread(*bs, cost=cost), in_shardings=shard)
            lowered = fn.lower(*batches)
            got = lowered.compile()(*batches)
            err = max(float(jnp.max(jnp.abs(g - ns(b)))) for g, b in zip(got, batches))
            out[name] = {"flops": unfused_cost(lowered)["flops"], "max_abs_err": err}
    one = jax.jit(ns).lower(jax.ShapeDtypeStruct((1, 64, 192), jnp.float32))
    out["one_64x192"] = unfused_cost(one)["flops"]
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.slow
def test_matrices_of_several_shapes_padded_to_one_share_out_with_the_same_numbers():
    r = run_on_devices(PADDED_SCRIPT)
    print(r)
    # zero padding leaves Newton-Schulz alone: the results are the unpadded ones (float32)
    assert r["joined"]["max_abs_err"] < 1e-5 and r["apart"]["max_abs_err"] < 1e-5, r
    # joined, each device orthogonalises one 64 x 192 matrix (the moves and pads add a little);
    # apart it would also run a 64 x 64 and a 32 x 48 one
    assert r["joined"]["flops"] <= 1.1 * r["one_64x192"], r
    assert r["apart"]["flops"] >= 1.3 * r["one_64x192"], r


STATE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import marin_optim
    from marin_optim.config import OptimizerConfig
    from marin_optim.speedrun.analysis import analyse_update
    from marin_optim.speedrun.mesh import MeshConfig
    from marin_optim.speedrun.model import ModelConfig

    model = ModelConfig(hidden_dim=64, intermediate_dim=256, num_heads=4, num_kv_heads=4, num_layers=2)
    out = {}
    for name in json.loads(sys.argv[1]):
        cfg = OptimizerConfig.from_dict({"type": name})
        r = analyse_update(cfg, model, MeshConfig(data=8, model=1), flops=False)
        out[name] = {k: v for k, v in r.items() if k != "collectives"}
    print("RESULT" + json.dumps(out))
    """
)

GALORE = "optax_galore"
"""optax's GaLore cannot initialise a tree with ``None`` leaves (the speedrun model's absent
biases): its ``init`` reads ``p.dtype`` of each leaf, a failure of optax's, on one device too."""


REPRESENTATIVES = [
    "adam",  # two moments like each parameter
    "adafactor",  # factored: row and column statistics
    "ademamix",  # three moments
    "mini",  # one second moment per block (per head)
    "normuon",  # Muon's momentum and per-neuron statistics, and its Adam branch
    "sophia",  # a Hessian estimate and its key
    "sam",  # a wrapped optimizer's state
    "prodigy",  # scalars beside the moments
    "optax_sm3",  # an optax optimizer's own state
    "grug_muon",  # raw arrays; 4 x 512 gain matrices moved to their owners (an XLA:CPU verifier case)
]
"""The default tier's state check: one optimizer of each kind of state. Every other registered
optimizer is the extended tier's (pytest --extended)."""


def _state_chunks(n: int) -> list[list[str]]:
    # those of OPTIMIZERS have their state checked above, with the trajectories
    names = sorted(set(OptimizerConfig.registered()) - {GALORE} - set(OPTIMIZERS) - set(REPRESENTATIVES))
    return [names[i::n] for i in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "chunk",
    [REPRESENTATIVES, *(pytest.param(c, marks=pytest.mark.extended) for c in _state_chunks(3))],
    ids=lambda c: f"{c[0]}..",
)
def test_every_optimizers_state_is_divided_over_eight_devices(chunk):
    """Every registered optimizer, its update compiled on 8 devices (FSDP): every state array of
    ``SMALL_STATE`` values or more is divided, and the memory analysis of the compiled update's
    outputs (the updates, placed like the parameters, and the new state, where the update leaves
    it) is 1/8 of the parameters' and state's bytes, plus the small arrays kept whole."""
    result = run_on_devices(STATE_SCRIPT, json.dumps(chunk))
    bad = []
    for name, r in result.items():
        divided = (r["param_bytes"] + r["state_bytes"] - r["replicated_state_bytes"]) / 8
        bound = divided + r["replicated_state_bytes"] + 8192
        print(f"{name}: outputs {r['output_bytes_per_device']} per device, bound {bound:.0f}")
        if r["largest_replicated_state"] >= SMALL_STATE or r["undivided_state"]:
            bad.append((name, "state kept whole", r["largest_replicated_state"], r["undivided_state"]))
        if r["output_bytes_per_device"] > bound:
            bad.append((name, "outputs not divided", r["output_bytes_per_device"], bound))
    assert not bad, bad


def test_state_placement_rule():
    from jax.sharding import PartitionSpec as P

    from marin_optim.transforms.distributed import state_spec, undivided_state

    axes = ("data", "model")
    # the first axis the device count divides; small arrays and single devices: whole
    assert state_spec((4, 16, 256, 256), 8, axes) == P(None, axes)
    assert state_spec((16, 256, 256), 8, axes) == P(axes)
    assert state_spec((3, 5, 7), 8, axes) == P()
    assert state_spec((7, 7, 7, 7), 8, axes) == P()
    assert state_spec((8,), 8, axes) == P()  # under SMALL_STATE values
    assert state_spec((16, 256), 1, ()) == P()
    state = {"q": jnp.zeros((7, 7, 7, 7)), "v": jnp.zeros((16, 256)), "count": jnp.zeros(())}
    assert undivided_state(state, 8) == ["['q']"]
    assert undivided_state(state, 1) == []


def test_the_update_is_timed_on_this_machines_devices_with_its_state_fed_forward(monkeypatch):
    """``analyse_update(..., wall_steps=k)`` runs the compiled update k times after two untimed
    calls (what ``benchmarks/sharded_step.py --devices local --wall k`` reports on a GPU), each
    call on the state the one before left; its counts are those of the untimed analysis. No time
    is asserted, only what was run."""
    import optax

    from marin_optim.speedrun import analysis
    from marin_optim.speedrun.mesh import MeshConfig
    from marin_optim.speedrun.model import ModelConfig

    model = ModelConfig(hidden_dim=32, intermediate_dim=64, num_heads=2, num_kv_heads=2, num_layers=2)
    cfg, mesh = OptimizerConfig.from_dict({"type": "adamw"}), MeshConfig(data=1, model=1)
    seen, original = [], analysis.wall_ms

    def spying(compiled, *args):
        def call(grads, state, params):  # the step count each call is given
            seen.append(int(optax.tree_utils.tree_get_all_with_path(state, "count")[0][1]))
            return compiled(grads, state, params)

        return original(call, *args)

    monkeypatch.setattr(analysis, "wall_ms", spying)
    timed = analysis.analyse_update(cfg, model, mesh, flops=False, wall_steps=3)
    monkeypatch.undo()
    assert seen == [0, 1, 2, 3, 4] and timed["wall_steps"] == 3
    assert 0 < timed["wall_ms_min"] <= timed["wall_ms_median"] and timed["wall_ms_min"] <= timed["wall_ms"]
    untimed = analysis.analyse_update(cfg, model, mesh, flops=False)
    assert {k: v for k, v in timed.items() if not k.startswith("wall")} == untimed


def test_sharded_step_table_and_device_arguments():
    """The benchmark's table shows the wall-time column only when a row has one and a dash where
    no unfused compile ran; a device count that is neither positive nor ``local`` is refused; an
    optimizer may carry its fields (a spec as ``compare`` takes it), and a bad one is refused."""
    import subprocess
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "sharded_step.py"
    sys.path.insert(0, str(path.parent))
    try:
        import sharded_step
    finally:
        sys.path.remove(str(path.parent))
    none = {k: {"count": 0, "mb": 0.0} for k in ("all-gather", "all-reduce", "all-to-all")}
    row = {
        "optimizer": "muon",
        "devices": 1,
        "gflop": 2.0,
        "mb_accessed": 30.0,
        "mb_accessed_unfused": 40.0,
        "state_bytes_per_device": 5e6,
        "state_bytes": 5e6,
        "collectives": none,
    }
    plain = sharded_step.table([row])
    assert "wall" not in plain and "| `muon` | 1 | 2.000 | 2.000 | 1.00 | 40 (30) | 5.00 (5.00) |" in plain
    gpu = {**row, "gflop": None, "platform": "gpu", "wall_ms": 3.5, "wall_ms_median": 3.25}
    timed = sharded_step.table([gpu]).splitlines()
    assert timed[0].endswith("wall ms/step mean (median) |")
    assert timed[2].startswith("| `muon` | 1 gpu | — | — | — | — (30) |") and timed[2].endswith(
        "| 3.50 (3.25) |"
    )
    assert all(line.count("|") == timed[0].count("|") for line in timed)
    bad = subprocess.run([sys.executable, str(path), "--devices", "8,0"], capture_output=True, text=True)
    assert (
        bad.returncode == 2 and "--devices: '0' is neither a positive device count nor 'local'" in bad.stderr
    )
    specs = sharded_step.optimizer_specs("dion,dion:qr_method=qr,rcqr_oversample=2,soap")
    assert specs == ["dion", "dion:qr_method=qr,rcqr_oversample=2", "soap"]
    bad = subprocess.run(
        [sys.executable, str(path), "--optimizers", "dion:rcqr_oversample=0.5"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "--optimizers: dion.rcqr_oversample=0.5: must be in [1, inf)" in bad.stderr
