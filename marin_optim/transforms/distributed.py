"""Matrix work divided over the devices instead of repeated on each, and state kept divided.

A matrix optimizer's per-matrix step (Newton–Schulz, an eigendecomposition, a triangular solve)
needs a whole matrix, so when the parameters are sharded (FSDP over ``data``, tensor parallel over
``model``) XLA gathers every matrix onto every device and each device repeats every other
device's work. The remedy of distributed Muon (Liu et al., 2025, "Muon is Scalable for LLM
Training", arXiv:2502.16982, section 2.3) and of distributed Shampoo (Shi et al., 2023,
arXiv:2309.06497): give each matrix (or block) one owner, compute there, and send the result
back.

:func:`on_owners` is that primitive: a function of a batch of independent items runs under
``jax.shard_map`` with the batch divided over every axis of the mesh in context (``jax.set_mesh``,
which haliax's ``set_mesh`` and both trainers use), padded with copies of its last item to a
multiple of the device count. An all-to-all moves each item to its owner and one moves each
result back to the devices that hold its parameter's pieces (:func:`divided_inside`). Each device computes
``ceil(k / N)`` of ``k`` items: ``total / N`` when the count divides, never more than one extra.
:func:`spread_matrices` stacks every leaf's matrices of one shape into such a batch
(Newton–Schulz, Dion's step); :func:`spread_blocks` does the same with SOAP's and Kron's blocks.
With fewer matrices of each shape than devices (28 matrices of two shapes on 32 devices), each
device would run one of every shape; where ``fn`` commutes with zero padding (Newton–Schulz does)
the stacks of several shapes are padded to a common one and shared out together when that lowers
the most work any device does (:func:`padded_stacks`): one 512 x 1536 matrix a device instead
of one of those and one 512 x 512.
Without a mesh, or on one device, ``fn`` runs as it is. The numbers are the same either way: a
step on an item does not depend on where it runs.

The state that is not shaped like a parameter (SOAP's and Kron's per-block matrices, Dion's
``Q``, NorMuon's per-neuron moment) is kept divided too: :func:`state_spec` places such an array
along its first axis that the device count divides (the batch of blocks when it does, else a
matrix's rows). The speedrun's trainer places plain arrays by it at rest
(``marin_optim.speedrun.mesh.sharding_tree``) and the transforms constrain the state they make
to it (:func:`shard_state`); a trainer that places plain arrays itself (Levanter's keeps them
whole) keeps its own placement at rest. An array no axis of which divides stays whole on every
device; :func:`undivided_state` names those for the run header.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import haliax as hax
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

SMALL_STATE = 1024
"""Plain state arrays with fewer values than this stay replicated (step counts, keys, short
histories): at most 4 KB each in float32."""


def mesh_devices() -> tuple[int, tuple[str, ...]]:
    """The device count and axis names of the mesh in context (1 and () without one)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return 1, ()
    return int(mesh.size), tuple(mesh.axis_names)


def on_owners(fn: Callable[..., Any], lead: int, *args: Any) -> Any:
    """``fn(*args)`` with its batch divided over the mesh's devices (module docstring).

    Every array in ``args`` (any pytree) starts with the same ``lead`` batch axes; ``fn`` takes
    them flattened into one batch axis, maps each item independently (vmapped, or one at a time)
    and returns arrays with that batch axis first. The outputs get the ``lead`` axes back.

    Inputs and outputs are stacks laid out by :func:`divided_inside`; inside ``jax.shard_map``
    one all-to-all per array takes each device's share of the items to it, and one brings the
    results back (an all-gather for a stack too small to divide). Written out rather than left to
    XLA's SPMD partitioner (sharding constraints on both sides of the ``shard_map``): the same
    moves, with 6 to 14% fewer bytes accessed per device on 8 devices (benchmarks/sharded_step.py).
    """
    leaves, treedef = jax.tree.flatten(args)
    if not leaves:
        return fn(*args)
    lead_shape = leaves[0].shape[:lead]
    k = math.prod(lead_shape)
    flat = [x.reshape((k, *x.shape[lead:])) for x in leaves]
    devices, axes = mesh_devices()
    if devices <= 1 or k <= 1:
        out = fn(*jax.tree.unflatten(treedef, flat))
        return jax.tree.map(lambda y: y.reshape((*lead_shape, *y.shape[1:])), out)
    flat = [divided_inside(x) for x in flat]
    pad = -k % devices
    if pad:  # copies of the last item: a valid input for any fn, dropped afterwards
        flat = [jnp.concatenate([x, jnp.broadcast_to(x[-1:], (pad, *x.shape[1:]))]) for x in flat]
    share = (k + pad) // devices
    in_specs = [_inside_spec(x.shape[1:], devices, axes) for x in flat]
    items = [jax.ShapeDtypeStruct((share, *x.shape[1:]), x.dtype) for x in flat]
    out_shapes = jax.eval_shape(lambda *xs: fn(*jax.tree.unflatten(treedef, xs)), *items)
    out_specs = jax.tree.map(lambda y: _inside_spec(y.shape[1:], devices, axes), out_shapes)

    def body(*xs: jax.Array) -> Any:
        mine = [_to_owners(x, spec, axes, share) for x, spec in zip(xs, in_specs, strict=True)]
        out = fn(*jax.tree.unflatten(treedef, mine))
        return jax.tree.map(lambda y, spec: _from_owners(y, spec, axes), out, out_specs)

    out = jax.shard_map(body, in_specs=tuple(in_specs), out_specs=out_specs, check_vma=False)(*flat)
    if pad:
        out = jax.tree.map(lambda y: y[:k], out)
    return jax.tree.map(lambda y: y.reshape((*lead_shape, *y.shape[1:])), out)


def _inside_spec(item_shape: Sequence[int], devices: int, axes: tuple[str, ...]) -> PartitionSpec:
    return PartitionSpec(None, *state_spec(item_shape, devices, axes))


def _divided_axis(spec: PartitionSpec) -> int | None:
    return next((i for i, a in enumerate(spec) if a is not None), None)


def _to_owners(x: jax.Array, spec: PartitionSpec, axes: tuple[str, ...], share: int) -> jax.Array:
    """This device's ``share`` items, whole, from the stack laid out by ``spec`` (inside shard_map)."""
    axis = _divided_axis(spec)
    if axis is None:  # the whole stack is here: take this device's items
        return jax.lax.dynamic_slice_in_dim(x, jax.lax.axis_index(axes) * share, share)
    # the divided axis moved next to the batch axis for the all-to-all (a no-op when it is there):
    # XLA:CPU's HLO verifier rejects some all-to-alls that join one item per device along a later
    # axis (grug_muon's 4 x 512 norm gains on 8 devices: "operands with different shapes")
    x = jnp.moveaxis(x, axis, 1)
    return jnp.moveaxis(jax.lax.all_to_all(x, axes, 0, 1, tiled=True), 1, axis)


def _from_owners(y: jax.Array, spec: PartitionSpec, axes: tuple[str, ...]) -> jax.Array:
    """This device's results sent back into the stack laid out by ``spec`` (inside shard_map)."""
    axis = _divided_axis(spec)
    if axis is None:
        return jax.lax.all_gather(y, axes, axis=0, tiled=True)
    y = jnp.moveaxis(y, axis, 1)  # as in _to_owners
    return jnp.moveaxis(jax.lax.all_to_all(y, axes, 1, 0, tiled=True), 1, axis)


def divided_inside(y: jax.Array) -> jax.Array:
    """A stack of items (one batch axis first) laid out to be cut or joined along that axis without
    moving anything: the batch axis whole and an inner axis divided over the devices
    (:func:`state_spec` of an item's shape), or the whole stack on every device when no inner axis
    divides. Between this layout and the owners' (the batch divided) ``1 / N`` of the stack moves
    into each device (an all-to-all, :func:`on_owners`). Cutting or joining the batch axis while it
    is divided instead makes each device gather the whole stack, and can make XLA's SPMD
    partitioner emit an invalid slice (seen in Levanter's trainer, data 4 x model 2)."""
    devices, axes = mesh_devices()
    return jax.lax.with_sharding_constraint(y, _inside_spec(y.shape[1:], devices, axes))


def divided_along(x: jax.Array, axis: int | None) -> jax.Array:
    """``x`` divided along ``axis`` over every axis of the mesh in context, in runs of
    ``x.shape[axis] / N`` (``x`` as it is without a mesh, with ``axis=None``, or when the device
    count does not divide that axis)."""
    devices, axes = mesh_devices()
    if devices <= 1 or axis is None or x.shape[axis] % devices:
        return x
    spec = [None] * x.ndim
    spec[axis] = axes
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*spec))


def stack_axis(block_shape: Sequence[int]) -> int | None:
    """The axis of a block that :func:`divided_inside` divides in a stack of blocks of
    ``block_shape`` on the mesh in context (None: the stack stays whole)."""
    devices, axes = mesh_devices()
    return _divided_axis(state_spec(block_shape, devices, axes)) if devices > 1 else None


def _is_wide(x: jax.Array) -> bool:
    return x.shape[-2] <= x.shape[-1]


def spread_matrices(
    fn: Callable[[Any], Any],
    batches: Sequence[Any],
    *,
    transposable: bool = True,
    padded_cost: Callable[[tuple[int, ...]], float] | None = None,
) -> list[Any]:
    """``[fn(b) for b in batches]``, the batches of one shape stacked and divided over the mesh.

    Each batch is a ``[k, m, n]`` array, or a tuple of arrays that share ``k`` (a matrix and its
    optimizer's factor); ``fn`` maps a batch to arrays with the same leading ``k``, one item at a
    time. Batches stack when their arrays' shapes past ``k`` and dtypes are equal. With
    ``transposable`` (single arrays only), ``fn`` commutes with transposition (``fn(x^T) =
    fn(x)^T`` per matrix, true of Newton–Schulz), so a tall ``n x m`` and a wide ``m x n`` batch
    stack as one shape, the tall ones transposed.

    ``padded_cost`` (single arrays only) says ``fn`` commutes with zero padding (``fn`` of a
    matrix padded with zero rows and columns is ``fn`` of the matrix, padded: true of
    Newton–Schulz, whose Frobenius norm and products the zeros leave alone) and gives the cost of
    ``fn`` on one item of a shape; stacks of different shapes are then padded to a common shape
    and shared out as one where :func:`padded_stacks` finds that it lowers the most work a device
    does. Without a mesh nothing is padded.
    """
    devices, _ = mesh_devices()
    if devices <= 1 or not batches:
        return [fn(b) for b in batches]
    flips = [transposable and not _is_wide(b) for b in batches]
    parts = [b.mT if f else b for b, f in zip(batches, flips, strict=True)]
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, part in enumerate(parts):
        key = (jax.tree.structure(part), *((x.shape[1:], x.dtype) for x in jax.tree.leaves(part)))
        groups.setdefault(key, []).append(i)
    stacks = list(groups.values())
    if padded_cost is not None and all(hasattr(p, "shape") for p in parts):
        by_dtype: dict[Any, list[list[int]]] = {}
        for members in stacks:
            by_dtype.setdefault(parts[members[0]].dtype, []).append(members)
        stacks = []
        for same in by_dtype.values():
            shapes = [parts[m[0]].shape[1:] for m in same]
            counts = [sum(parts[i].shape[0] for i in m) for m in same]
            for joined in padded_stacks(shapes, counts, devices, padded_cost):
                stacks.append([i for j in joined for i in same[j]])
    out: list[Any] = [None] * len(batches)
    for members in stacks:
        sizes = [jax.tree.leaves(parts[i])[0].shape[0] for i in members]
        padded = [parts[i] for i in members]
        items: list[tuple[int, ...]] = [()] * len(members)  # each member's item shape, if padded
        if len({getattr(x, "shape", (0,))[1:] for x in padded}) > 1:  # joined by padded_stacks
            common = tuple(max(dims) for dims in zip(*(x.shape[1:] for x in padded), strict=True))
            items = [x.shape[1:] for x in padded]
            padded = [_zero_padded(x, common) for x in padded]
        stack = jax.tree.map(
            lambda *xs: jnp.concatenate([divided_inside(x) for x in xs]) if len(xs) > 1 else xs[0], *padded
        )
        result = on_owners(fn, 1, stack)  # laid out to be cut into the members' pieces
        start = 0
        for i, size, item in zip(members, sizes, items, strict=True):
            cut = (slice(start, start + size), *(slice(0, n) for n in item))
            piece = jax.tree.map(lambda y, cut=cut: y[cut], result)
            out[i] = piece.mT if flips[i] else piece
            start += size
    return out


def _zero_padded(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """The stack ``x`` with zeros after each item's axes up to ``shape``."""
    if x.shape[1:] == shape:
        return x
    return jnp.pad(x, [(0, 0), *((0, n - m) for m, n in zip(x.shape[1:], shape, strict=True))])


MAX_PADDED_SHAPES = 8
""":func:`padded_stacks` tries every way of joining up to this many shapes (4,140 for 8); with
more, each shape keeps its own stack."""


def padded_stacks(
    shapes: Sequence[tuple[int, ...]],
    counts: Sequence[int],
    devices: int,
    cost: Callable[[tuple[int, ...]], float],
) -> list[list[int]]:
    """Which stacks (``counts[i]`` items of ``shapes[i]``) to zero-pad to a common shape and share
    out together over ``devices``: the partition of the stacks that minimises the work of the
    busiest device, ``sum over joined stacks of ceil(items / devices) * cost(common shape)``, the
    common shape being the largest of each axis. Ties keep the stacks apart (no padding). With 16
    matrices of 512 x 512 and 12 of 512 x 1536, on 8 devices each shape keeps its stack (2 + 2
    items a device); on 32 they are joined (one 512 x 1536 a device instead of one of each)."""
    n = len(shapes)
    if n <= 1 or n > MAX_PADDED_SHAPES:
        return [[i] for i in range(n)]

    def price(partition: list[list[int]]) -> tuple[float, int]:
        work, volume = 0.0, 0
        for joined in partition:
            common = tuple(max(dims) for dims in zip(*(shapes[i] for i in joined), strict=True))
            items = sum(counts[i] for i in joined)
            work += math.ceil(items / devices) * cost(common)
            volume += items * math.prod(common)
        return work, volume

    return sorted(min(_partitions(list(range(n))), key=price))


def _partitions(items: list[int]) -> Iterator[list[list[int]]]:
    """Every partition of ``items`` into non-empty lists (Bell(len(items)) of them)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in _partitions(rest):
        yield [[first], *partition]
        for i in range(len(partition)):
            yield [*partition[:i], [first, *partition[i]], *partition[i + 1 :]]


def spread_blocks(fn: Callable[[Any], Any], items: Sequence[Any], leads: Sequence[int]) -> list[Any]:
    """:func:`spread_matrices` (not transposable) over ``items`` whose arrays start with
    ``leads[i]`` batch axes (a stacked leaf's layers and its blocks): flattened into one batch
    axis for ``fn``, restored in its results. Every leaf's blocks of one shape are shared out
    together, so a leaf with fewer blocks than devices costs no device more than its share."""
    shapes = [jax.tree.leaves(item)[0].shape[:n] for item, n in zip(items, leads, strict=True)]
    flat = [
        jax.tree.map(lambda x, n=n: x.reshape((-1, *x.shape[n:])), item)
        for item, n in zip(items, leads, strict=True)
    ]
    out = spread_matrices(fn, flat, transposable=False)
    return [
        jax.tree.map(lambda y, s=s: y.reshape((*s, *y.shape[1:])), o)
        for o, s in zip(out, shapes, strict=True)
    ]


def state_spec(shape: Sequence[int], devices: int, axes: tuple[str, ...]) -> PartitionSpec:
    """Where a plain state array of ``shape`` lives on a mesh of ``devices`` (axes ``axes``): its
    first axis that ``devices`` divides, split over every mesh axis; replicated when the array is
    small (:data:`SMALL_STATE`) or no axis divides."""
    if devices <= 1 or math.prod(shape) < SMALL_STATE:
        return PartitionSpec()
    for i, size in enumerate(shape):
        if size % devices == 0:
            return PartitionSpec(*([None] * i), axes)
    return PartitionSpec()


def shard_state(tree: Any) -> Any:
    """``tree``'s plain arrays constrained to :func:`state_spec` on the mesh in context (a no-op
    without one): the transforms call it on the state they create, so the state's layout is the
    same in any trainer that does not pin it otherwise. NamedArrays are left to the axis mapping."""
    devices, axes = mesh_devices()
    if devices <= 1:
        return tree

    def one(x: Any) -> Any:
        if isinstance(x, hax.NamedArray):
            return x
        return jax.lax.with_sharding_constraint(x, state_spec(x.shape, devices, axes))

    return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, hax.NamedArray))


def undivided_state(state: Any, devices: int) -> list[str]:
    """Paths of ``state``'s plain arrays of at least :data:`SMALL_STATE` values that no axis of
    which ``devices`` divides: they stay whole on every device (the fallback the run header names)."""
    if devices <= 1:
        return []
    out = []
    is_named = lambda x: isinstance(x, hax.NamedArray)
    for path, x in jax.tree_util.tree_leaves_with_path(state, is_leaf=is_named):
        if is_named(x) or not hasattr(x, "shape") or math.prod(x.shape) < SMALL_STATE:
            continue
        if all(size % devices for size in x.shape):
            out.append(jax.tree_util.keystr(path))
    return out
