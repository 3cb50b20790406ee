"""Tensors as batches of small blocks: the layout the Kronecker-factored preconditioners share.

SOAP (:mod:`marin_optim.transforms.soap`) and PSGD Kron (:mod:`marin_optim.transforms.kron`)
keep one preconditioner matrix per axis of a tensor, which is affordable only for short axes.
Both first reshape each tensor (each layer of a scan-stacked one) the way Levanter's
implementations do, so that the same blocks get the same preconditioners:

1. merge consecutive small axes (:func:`merge_small_dims`), a heuristic that aims every merged
   axis at ``target_merged_dim_size``;
2. cut every axis that gets a full preconditioner and is longer than ``block_size`` into blocks
   of ``block_size``, and zero-pad every axis of a block to a multiple of ``block_size``
   (:func:`block_layout`, :func:`to_stack`, :func:`from_stack`).

An axis that stays *diagonal* (no full matrix) is never cut. The blocks of one tensor form a
leading batch axis, in row-major order of their positions (the first axis slowest).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import haliax.nn as hnn
import jax
import jax.numpy as jnp

from marin_optim.errors import ConfigError
from marin_optim.transforms.distributed import divided_along, mesh_devices, stack_axis


def _merge_cost(size: int, target: int) -> float:
    """How far a merged axis of ``size`` is from ``target`` (log2 units; far too small or far too
    large is penalised steeply). The heuristic of Levanter's SOAP and Kron, so the same axes merge."""
    if size < target:
        cost = math.log2(target / size)
        if size < target / 8:
            cost += 100 * math.log2(target / 8 / size)
        return cost
    cost = 10 * math.log2(size / target)
    if size > 8 * target:
        cost += 1000 * math.log2(size / (8 * target))
    return cost


def _contiguous_groupings(n: int, start: int = 0) -> Iterator[list[range]]:
    """Every split of axes ``start..n-1`` into consecutive runs, shortest first run first."""
    if start == n:
        yield []
        return
    for end in range(start + 1, n + 1):
        for rest in _contiguous_groupings(n, end):
            yield [range(start, end), *rest]


def merge_small_dims(
    shape: Sequence[int], target: int, diagonal: Sequence[bool]
) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """Merges consecutive axes of ``shape`` so that each merged size is close to ``target``.

    Returns the merged shape and, per merged axis, whether it stays diagonal (all of its axes
    were). Of the groupings of consecutive axes the first with the least total
    :func:`_merge_cost` wins. A scalar stays a scalar; an all-ones shape becomes ``(1,)``.
    """
    if not shape:
        return (), ()
    if all(s == 1 for s in shape):
        return (1,), (True,)
    best, best_cost = None, math.inf
    for grouping in _contiguous_groupings(len(shape)):
        cost = 0.0
        for group in grouping:
            cost += _merge_cost(math.prod(shape[i] for i in group), target)
        if cost < best_cost:
            best, best_cost = grouping, cost
    assert best is not None
    merged = tuple(math.prod(shape[i] for i in g) for g in best)
    return merged, tuple(all(diagonal[i] for i in g) for g in best)


class BlockLayout(NamedTuple):
    """How one tensor (one layer of a scan-stacked one) is reshaped, blocked and preconditioned."""

    shape: tuple[int, ...]
    """The tensor's own shape (without a stacked layer axis)."""
    merged: tuple[int, ...]
    """The shape after merging small axes (``shape`` when merging is off)."""
    blocks: tuple[int, ...]
    """Number of blocks along each merged axis (all 1 without blocking)."""
    block_shape: tuple[int, ...]
    """Shape of one (zero-padded) block."""
    rotated: tuple[bool, ...]
    """Per block axis, whether it gets a full matrix (SOAP's factor and basis, Kron's triangular
    ``Q``) rather than a diagonal (or nothing)."""

    @property
    def num_blocks(self) -> int:
        return math.prod(self.blocks)


def block_layout(
    shape: Sequence[int],
    diagonal: Sequence[bool],
    *,
    merge_dims: bool,
    target_merged_dim_size: int,
    block_size: int | None,
) -> BlockLayout:
    """The layout of a tensor of ``shape`` whose axes ``diagonal`` get no full matrix: merge small
    axes, cut each full-matrix axis longer than ``block_size`` into blocks, zero-pad every block
    axis to a multiple of ``block_size``. ``block_size=None``: no blocks and no padding.
    ``rotated`` is ``not diagonal`` per merged axis (a caller may refine it for the blocks)."""
    shape = tuple(int(s) for s in shape)
    merged, diag = shape, tuple(bool(d) for d in diagonal)
    if merge_dims:
        merged, diag = merge_small_dims(shape, target_merged_dim_size, diag)
    if block_size is None:
        blocks, block_shape = (1,) * len(merged), merged
    else:
        blocks = tuple(
            -(-d // block_size) if (block_size < d and not u) else 1
            for d, u in zip(merged, diag, strict=True)
        )
        # a cut axis has blocks of block_size; an uncut one is padded up to a multiple of it
        block_shape = tuple(
            block_size if n > 1 else -(-d // block_size) * block_size
            for d, n in zip(merged, blocks, strict=True)
        )
    return BlockLayout(shape, merged, blocks, block_shape, tuple(not d for d in diag))


MAX_PADDING = 16
"""A layout whose zero-padded blocks hold more than this many times the tensor's values, and more
than :data:`MAX_PADDED_VALUES`, is refused: short axes left unmerged, each padded up to
``block_size``, multiply (a preconditioner state and its temporaries of that size would not fit)."""
MAX_PADDED_VALUES = 2**24


def padding_problem(layout: BlockLayout, block_size: int | None) -> str | None:
    """Why ``layout`` wastes too much (:data:`MAX_PADDING`), as the end of an error message, or
    None. E.g. an unmerged ``(2, 2, 32, 128)`` tensor in blocks of 256 is one ``256^4`` block."""
    if block_size is None:
        return None
    padded = layout.num_blocks * math.prod(layout.block_shape)
    values = max(math.prod(layout.shape), 1)
    if padded <= MAX_PADDING * values or padded <= MAX_PADDED_VALUES:
        return None
    return (
        f"is cut into {layout.num_blocks} block(s) of {layout.block_shape} (axes {layout.merged} each "
        f"zero-padded to a multiple of block_size={block_size}): {padded / values:.0f}x its "
        f"{values} values; set merge_small_dims: true or a smaller block_size"
    )


def layout_error(who: str, tree: Any, index: int, problem: str) -> ConfigError:
    """``"<who>: parameter <path> of shape <shape> <problem>"`` for leaf ``index`` of ``tree``."""
    path, leaf = jax.tree_util.tree_leaves_with_path(tree)[index]
    return ConfigError(
        f"{who}: parameter {jax.tree_util.keystr(path)} of shape {tuple(leaf.shape)} {problem}"
    )


def _merged_from_one_axis(layout: BlockLayout) -> list[bool]:
    """Per merged axis, whether it is one axis of the tensor (with any axes of size 1)."""
    out, dims = [], iter(layout.shape)
    for size in layout.merged:
        product, longer = 1, 0
        while product < size:  # the merged axes are runs of the tensor's, in order
            d = next(dims)
            product, longer = product * d, longer + (d > 1)
        out.append(longer <= 1)
    return out


def _cut_axis(layout: BlockLayout) -> int | None:
    """The axis of the merged tensor to divide over the mesh before it is cut into blocks: one that
    is not padded, whose blocks the device count divides, and whose runs per device line up with
    the blocks (a device holds whole blocks along it, or a whole number of devices share each);
    an axis that is one of the tensor's own first (a sharded tensor is divided along one of its
    axes, not along heads x head_dim merged), then the first. None if no axis qualifies."""
    devices, _ = mesh_devices()
    fits = []
    for i, (d, n, b) in enumerate(zip(layout.merged, layout.blocks, layout.block_shape, strict=True)):
        run = d // devices
        if n * b == d and d % devices == 0 and b % devices == 0 and (run % b == 0 or b % run == 0):
            fits.append(i)
    own = _merged_from_one_axis(layout)
    return next((i for i in fits if own[i]), fits[0] if fits else None)


def _steps(layout: BlockLayout, lead: int) -> tuple[int | None, int | None, int | None]:
    """The axes :func:`to_stack` divides, in turn (None: that step moves nothing): of the merged
    tensor, :func:`_cut_axis`; of it split into (blocks, rows) per axis, that axis's rows, then
    the rows of the axis the stack is divided along (:func:`stack_axis`). ``lead`` batch axes first."""
    cut, inner = _cut_axis(layout), stack_axis(layout.block_shape)
    stacked = None if inner is None else lead + 2 * inner + 1
    if cut is None:
        return None, None, stacked
    return lead + cut, lead + 2 * cut + 1, stacked


def to_stack(x: jax.Array, layout: BlockLayout, lead: int = 0) -> jax.Array:
    """``x`` (``lead`` batch axes, such as a stacked leaf's layers, then ``layout.shape``) as
    ``(*lead axes, num_blocks, *block_shape)``, zero-padded.

    On a mesh the stack comes out laid out as
    :func:`~marin_optim.transforms.distributed.divided_inside` lays out a stack (one axis of every
    block divided over the devices). Cutting a sharded tensor into blocks is a reshape XLA's SPMD
    partitioner often cannot follow from the tensor's layout to the stack's (a device's 64 of 512
    columns are a quarter of the columns of one of two 256-wide blocks); where it finds no move it
    gathers the whole tensor on every device first ("Involuntary full rematerialization"). So the
    cut goes in steps each of which is one all-to-all at most: the merged tensor divided along an
    axis whose runs line up with the blocks (:func:`_cut_axis`), then that axis's block rows
    divided, then the stack's axis."""
    front = x.shape[:lead]
    k = len(layout.merged)
    merged, rows, inner = _steps(layout, lead)
    padded = [n * b for n, b in zip(layout.blocks, layout.block_shape, strict=True)]
    x = divided_along(x.reshape((*front, *layout.merged)), merged)
    x = jnp.pad(x, [(0, 0)] * lead + [(0, p - d) for p, d in zip(padded, layout.merged, strict=True)])
    pairs = zip(layout.blocks, layout.block_shape, strict=True)
    x = x.reshape((*front, *(v for n, b in pairs for v in (n, b))))
    x = divided_along(divided_along(x, rows), inner)
    x = x.transpose([*range(lead), *(lead + 2 * i for i in range(k)), *(lead + 2 * i + 1 for i in range(k))])
    return x.reshape((*front, layout.num_blocks, *layout.block_shape))


def from_stack(y: jax.Array, layout: BlockLayout, lead: int = 0) -> jax.Array:
    """The inverse of :func:`to_stack` (the padding dropped), through the same layouts backwards."""
    front = y.shape[:lead]
    k = len(layout.merged)
    merged, rows, inner = _steps(layout, lead)
    x = y.reshape((*front, *layout.blocks, *layout.block_shape))
    x = x.transpose([*range(lead), *(v for i in range(k) for v in (lead + i, lead + k + i))])
    x = divided_along(divided_along(x, inner), rows)
    x = x.reshape((*front, *(n * b for n, b in zip(layout.blocks, layout.block_shape, strict=True))))
    x = divided_along(x[(..., *(slice(0, d) for d in layout.merged))], merged)
    return x.reshape((*front, *layout.shape))


def stacked_leaves(params: Any) -> list[bool]:
    """Per leaf of ``params``, whether it sits in a haliax ``Stacked``/``ArrayStacked`` module (its
    leading axis is a batch of layers, each preconditioned on its own)."""
    is_stack = lambda x: isinstance(x, (hnn.Stacked, hnn.ArrayStacked))
    out: list[bool] = []
    for node in jax.tree.leaves(params, is_leaf=is_stack):
        out.extend([is_stack(node)] * (len(jax.tree.leaves(node)) if is_stack(node) else 1))
    return out


def batched(fn: Callable, batch: int) -> Callable:
    """``fn`` vmapped over ``batch`` leading axes of every argument."""
    for _ in range(batch):
        fn = jax.vmap(fn)
    return fn


def per_matrix(fn: Callable, *args: Any) -> Any:
    """``fn`` over the leading (batch) axis of every array in ``args``: batched (``vmap``), except
    on a CPU, where one matrix after another (``lax.map``).

    Eigendecompositions, QR and triangular solves go through it: jaxlib's batched CPU kernels
    split a batch over the XLA thread pool and wait for it there, which deadlocks when as many
    batched kernels as pool threads run at once (seen on a 2-core host, Levanter's SOAP
    included). Accelerators' batched kernels have no such wait."""
    if not jax.tree.leaves(args):  # nothing to map (a leaf without rotations)
        return fn(*args)
    if jax.default_backend() == "cpu":
        return jax.lax.map(lambda a: fn(*a), args)
    return jax.vmap(fn)(*args)
