"""Matrix work divided over the devices instead of repeated on each.

A matrix optimizer's per-matrix step (Newton–Schulz, ...) needs a whole matrix, so when the
parameters are sharded (FSDP over ``data``, tensor parallel over ``model``) XLA gathers every
matrix onto every device and each device repeats every other device's work. The remedy of
distributed Muon (Liu et al., 2025, "Muon is Scalable for LLM Training", arXiv:2502.16982,
section 2.3; Ahn et al., 2025, Dion, arXiv:2504.05295): give each matrix one owner, orthogonalise
there, and send the result back.

:func:`spread_matrices` does this with the sharding annotations GSPMD understands: the matrices
of one shape (a wide ``m x n`` and a tall ``n x m`` count as one shape; the tall ones are
transposed, which every step here commutes with) are stacked into one ``[k, m, n]`` batch,
zero-padded to a multiple of the device count, and that batch axis is sharded over every axis of
the mesh; XLA moves each matrix to its owner (an all-to-all), and the results are gathered and
cut back into the parameters' layout (an all-gather of the results, the volume the undivided
path gathers of the inputs). Each device then computes ``ceil(k / N)`` of each shape's ``k`` matrices:
``total / N`` when the counts divide, and never more than one extra matrix per shape. Without a
mesh in context (``jax.set_mesh``, which haliax's ``set_mesh`` and both trainers use) or on one
device it is ``fn`` on each batch, as before. The numbers are the same either way: a step on a
matrix does not depend on where it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec


def mesh_devices() -> tuple[int, tuple[str, ...]]:
    """The device count and axis names of the mesh in context (1 and () without one)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return 1, ()
    return int(mesh.size), tuple(mesh.axis_names)


def _is_wide(x: jax.Array) -> bool:
    return x.shape[-2] <= x.shape[-1]


def _wide(x: jax.Array) -> jax.Array:
    return x if _is_wide(x) else x.mT


def spread_matrices(fn: Callable[[jax.Array], jax.Array], batches: Sequence[jax.Array]) -> list[jax.Array]:
    """``[fn(b) for b in batches]`` with the work divided over the mesh's devices (module docstring).

    Each batch is ``[k, m, n]``; ``fn`` maps a ``[k, m, n]`` batch to one of the same shape, one
    matrix at a time (vmapped) and commuting with transposition (``fn(x^T) = fn(x)^T`` per
    matrix; true of Newton–Schulz, which orients each matrix wide itself).
    """
    devices, axes = mesh_devices()
    if devices <= 1 or not batches:
        return [fn(b) for b in batches]
    groups: dict[tuple[int, int, jnp.dtype], list[int]] = {}
    for i, b in enumerate(batches):
        m, n = b.shape[-2:]
        groups.setdefault((min(m, n), max(m, n), b.dtype), []).append(i)
    spec = PartitionSpec(axes, None, None)
    out: list[jax.Array | None] = [None] * len(batches)
    for members in groups.values():
        wide = [
            batches[i] if batches[i].shape[-2] <= batches[i].shape[-1] else batches[i].mT for i in members
        ]
        sizes = [w.shape[0] for w in wide]
        total = sum(sizes)
        stack = jnp.concatenate(wide) if len(wide) > 1 else wide[0]
        pad = -total % devices
        if pad:
            stack = jnp.concatenate([stack, jnp.zeros((pad, *stack.shape[1:]), stack.dtype)])
        stack = jax.lax.with_sharding_constraint(stack, spec)
        result = jax.lax.with_sharding_constraint(fn(stack), spec)
        # gathered before it is cut back into leaves: XLA's SPMD partitioner can emit an invalid
        # slice of the sharded stack (seen in Levanter's trainer, data 4 x model 2)
        result = jax.lax.with_sharding_constraint(result, PartitionSpec())[:total]
        start = 0
        for i, size in zip(members, sizes, strict=True):
            piece = result[start : start + size]
            out[i] = piece if _is_wide(batches[i]) else piece.mT
            start += size
    return out  # type: ignore[return-value]
