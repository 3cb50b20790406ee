"""What one optimizer update costs each device, read from XLA's analyses of the compiled program.

:func:`analyse_update` compiles ``tx.update`` (gradients, state and parameters sharded as the
speedrun shards them, under the mesh in context as its trainer runs it, with the trainer's
``loss``/``obj_fn`` arguments) and reads the per-device program: FLOPs and bytes accessed
(cost analysis), bytes of arguments and outputs (memory analysis), and the collectives in the
HLO by kind. Counts, not timings: the same on any host. On request it also runs the compiled
update on the devices (``wall_steps``) and gives the wall time of a step (mean, median, minimum),
the one number that depends on the machine. ``benchmarks/sharded_step.py`` prints them for 1, 8 and 32
simulated devices, or a machine's own accelerators; ``tests/test_distributed.py`` asserts on the
counts.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from typing import Any

import haliax as hax
import jax
import jax.numpy as jnp

from marin_optim.config import OptimizerConfig
from marin_optim.speedrun.mesh import MeshConfig, make_mesh, sharding_tree
from marin_optim.speedrun.model import ModelConfig, Transformer
from marin_optim.transforms.distributed import undivided_state

COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "reduce-scatter", "collective-permute")
_DTYPE_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "bf16": 2,
    "f16": 2,
    "s16": 2,
    "u16": 2,
    "f64": 8,
    "s64": 8,
    "u64": 8,
}


def collective_bytes(hlo: str) -> dict[str, dict[str, float]]:
    """Per collective kind in the compiled ``hlo``: how many ops and the MB of their results."""
    out = {kind: {"count": 0, "mb": 0.0} for kind in COLLECTIVES}
    for line in hlo.splitlines():
        if "=" not in line:
            continue
        rhs = line.split("=", 1)[1]
        for kind in COLLECTIVES:
            if f" {kind}(" in rhs or f" {kind}-start(" in rhs:
                result = rhs.split(kind, 1)[0]
                size = sum(
                    math.prod(int(d) for d in dims.split(",") if d) * _DTYPE_BYTES.get(dtype, 4)
                    for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", result)
                )
                out[kind]["count"] += 1
                out[kind]["mb"] += size / 1e6
                break
    return out


def _bytes(tree: Any, shardings: Any | None = None) -> int:
    """Bytes of ``tree``'s arrays, whole or (``shardings``: a prefix tree of shardings) per device."""
    if shardings is None:
        return sum(x.dtype.itemsize * math.prod(x.shape) for x in jax.tree.leaves(tree))
    per_subtree = jax.tree.map(
        lambda sh, sub: sum(
            x.dtype.itemsize * math.prod(sh.shard_shape(x.shape)) for x in jax.tree.leaves(sub)
        ),
        shardings,
        tree,
    )
    return sum(jax.tree.leaves(per_subtree))


def _leaf_shardings(shardings: Any, tree: Any) -> list[Any]:
    """One sharding per leaf of ``tree`` from the prefix tree ``shardings``."""
    out: list[Any] = []
    jax.tree.map(lambda sh, sub: out.extend([sh] * len(jax.tree.leaves(sub))), shardings, tree)
    return out


def unfused_cost(lowered: jax.stages.Lowered) -> dict[str, float]:
    """``flops`` and ``bytes accessed`` of ``lowered``'s compiled per-device program, from XLA's
    cost analysis of a compile without instruction fusion: each operation reads its operands and
    writes its result once.

    With fusion, XLA copies an element-wise producer into each of several consumers (such as
    the N slices an all-to-all is split into), and the cost analysis charges every copy for the
    producer's whole array, though each computes only the part its consumer reads: ``x * 2 + 1``
    of a 6.3 MB array per device, sent by an all-to-all over 32 devices, counts 245 MB of bytes
    accessed fused and 101 MB unfused. So the fused counts of a divided update overstate its work,
    the more the more devices share it; unfused, each operation counts once (an upper bound on the
    fused program's traffic otherwise: fusion only removes the intermediates' reads and writes)."""
    cost = lowered.compile(compiler_options={"xla_disable_hlo_passes": "fusion"}).cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {"flops": float(cost.get("flops", 0.0)), "bytes accessed": float(cost.get("bytes accessed", 0.0))}


def wall_ms(
    compiled: jax.stages.Compiled, tx: Any, model: ModelConfig, p_sh: Any, s_sh: Any, steps: int
) -> dict[str, float]:
    """Mean, median and minimum milliseconds of one call of ``compiled`` (the update of
    :func:`analyse_update`) over ``steps`` calls, after two untimed ones: parameters initialised as
    the speedrun initialises them, gradients drawn from a normal distribution at 1e-3, the state
    fed from each step to the next, every step's outputs waited for before the clock stops. The
    mean counts the steps that refresh a preconditioner every k steps (SOAP, Kron, Sophia) at
    their share; the median is the common step."""
    params = jax.jit(lambda k: Transformer.init(model, key=k), out_shardings=p_sh)(jax.random.PRNGKey(0))
    state = jax.jit(tx.init, out_shardings=s_sh)(params)

    def noise(key: jax.Array, p: Any) -> Any:
        leaves, treedef = jax.tree.flatten(p)
        keys = jax.random.split(key, len(leaves))
        return treedef.unflatten(
            [1e-3 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
        )

    grads = jax.jit(noise, out_shardings=p_sh)(jax.random.PRNGKey(1), params)
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        updates, state = compiled(grads, state, params)
        jax.block_until_ready((updates, state))
        if i >= 2:
            times.append((time.perf_counter() - start) * 1e3)
    return {
        "wall_ms": statistics.fmean(times),
        "wall_ms_median": statistics.median(times),
        "wall_ms_min": min(times),
        "wall_steps": steps,
    }


def analyse_update(
    cfg: OptimizerConfig,
    model: ModelConfig,
    mesh_cfg: MeshConfig,
    *,
    flops: bool = True,
    wall_steps: int = 0,
) -> dict[str, Any]:
    """One compiled update of ``cfg``'s optimizer for ``model``'s parameters on ``mesh_cfg``'s mesh
    (of this process's devices): per-device GFLOP, MB accessed, state bytes (at rest, from the
    shardings; and as the update leaves it, from the memory analysis of its outputs), collectives.
    GFLOP and unfused MB accessed by :func:`unfused_cost` (a second, unfused compile;
    ``flops=False`` skips it and gives ``None`` for both). ``wall_steps``: also run the update that
    many times on the devices and give its wall time per step (:func:`wall_ms`)."""
    tx = cfg.build(1000)
    mesh = make_mesh(mesh_cfg)
    mapping = mesh_cfg.parameter_mapping()
    params = jax.eval_shape(lambda k: Transformer.init(model, key=k), jax.random.PRNGKey(0))
    with hax.partitioning.set_mesh(mesh):
        state = jax.eval_shape(tx.init, params)
        p_sh, s_sh = sharding_tree(params, mapping, mesh), sharding_tree(state, mapping, mesh)

        def update(grads: Any, state: Any, params: Any) -> Any:
            def obj_fn(p: Any) -> jax.Array:  # stands in for the loss (SAM-type optimizers)
                return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(p))

            updates, state = tx.update(grads, state, params, loss=obj_fn(params), obj_fn=obj_fn)
            # the updates placed like the parameters (as applying them does); the state where
            # the update leaves it, which the memory analysis of the outputs then measures
            return jax.lax.with_sharding_constraint(updates, p_sh), state

        lowered = jax.jit(update, in_shardings=(p_sh, s_sh, p_sh)).lower(params, state, params)
        compiled = lowered.compile()
        timed = wall_ms(compiled, tx, model, p_sh, s_sh, wall_steps) if wall_steps else {}
        unfused = unfused_cost(lowered) if flops else None
    replicated = [
        x
        for x, sh in zip(jax.tree.leaves(state), _leaf_shardings(s_sh, state), strict=True)
        if sh.is_fully_replicated
    ]
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    memory = compiled.memory_analysis()
    return {
        "optimizer": cfg.kind(),
        "devices": mesh.size,
        "params": sum(math.prod(x.shape) for x in jax.tree.leaves(params)),
        "gflop": unfused["flops"] / 1e9 if unfused else None,
        "mb_accessed": cost.get("bytes accessed", 0.0) / 1e6,
        "mb_accessed_unfused": unfused["bytes accessed"] / 1e6 if unfused else None,
        "param_bytes": _bytes(params),
        "state_bytes": _bytes(state),
        "state_bytes_per_device": _bytes(state, s_sh),
        "output_bytes_per_device": int(memory.output_size_in_bytes),
        "param_bytes_per_device": _bytes(params, p_sh),
        "replicated_state_bytes": _bytes(replicated),
        "largest_replicated_state": max((math.prod(x.shape) for x in replicated), default=0),
        "undivided_state": undivided_state(state, mesh.size),
        "collectives": collective_bytes(compiled.as_text()),
        "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
        **timed,
    }
