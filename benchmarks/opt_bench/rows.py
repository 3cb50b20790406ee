"""Rows: what one timed configuration is, and the JAX steps behind them.

A :class:`Row` holds one configuration's setup and everything measured about it; its setup
returns a :class:`Runner`. The JAX setups here compile the donated step once (recording what
XLA reports about its memory, :func:`compiled_memory`) and step it in place; the in-place
memory pass (:func:`memory_pass_setup`) is the bandwidth every row is compared with.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import optax

from .trees import distinct_buffers, fresh_copy, tree_bytes


@dataclass
class Row:
    """One timed configuration and everything measured about it."""

    optimizer: str
    variant: str
    framework: str  # "marin_optim", "optax", "torch", "memory"
    setup: Callable[[], Any] = field(repr=False)
    bytes_per_param: float = 0.0
    state_bytes_per_param: float | None = None
    compare_optax: str | None = None  # key of the optax row this one is compared with
    compare_torch: str | None = None  # key of the torch row
    times: list[list[float]] = field(default_factory=list)
    memory: dict[str, float] = field(default_factory=dict)
    skipped: str | None = None
    note: str = ""

    @property
    def key(self) -> str:
        """``optimizer/variant/framework``: what other rows name this one by."""
        return f"{self.optimizer}/{self.variant}/{self.framework}"

    @property
    def best(self) -> float | None:
        """The fastest step over all rounds (seconds), or None if never timed."""
        flat = [t for r in self.times for t in r]
        return min(flat) if flat else None

    @property
    def spread(self) -> float | None:
        """The median of the per-round bests over the best, minus one."""
        bests = [min(r) for r in self.times if r]
        if not bests:
            return None
        return statistics.median(bests) / min(bests) - 1.0


class Runner:
    """What ``Row.setup`` returns: ``step()`` runs and waits for one step; ``close()`` frees."""

    def __init__(self, step: Callable[[], None], close: Callable[[], None] = lambda: None) -> None:
        self.step = step
        self.close = close


# -- JAX steps ---------------------------------------------------------------------------------


def jax_row_setup(
    make_tx: Callable[[], optax.GradientTransformation],
    params: Any,
    grads: Any,
    extra_args: bool,
    clip: bool,
    row: Row,
) -> Callable[[], Runner]:
    """A setup that compiles (once) and runs the donated step of ``make_tx()``.

    ``extra_args``: pass ``loss`` and ``obj_fn`` to ``tx.update`` (marin_optim's transforms take
    them); ``clip``: the step reads the gradient once more for the clip's norm.
    """
    compiled: dict[str, Any] = {}

    def setup() -> Runner:
        if "tx" not in compiled:
            compiled["tx"] = make_tx()
        tx = compiled["tx"]
        p = fresh_copy(params)
        state, shared = distinct_buffers(tx.init(p), p)
        if shared:
            row.note = f"init shares {shared} buffers (copied to donate)"
        if row.state_bytes_per_param is None:
            _record_traffic(row, params, grads, state, clip)
        loss = jnp.float32(1.0)
        if "step" not in compiled:
            jitted = jax.jit(_step_fn(tx, extra_args), donate_argnums=(0, 1))
            compiled["step"] = jitted.lower(p, state, grads, loss).compile()
            row.memory = compiled_memory(compiled["step"], params)
        return _donated_runner(compiled["step"], p, state, grads, loss)

    return setup


def _record_traffic(row: Row, params: Any, grads: Any, state: Any, clip: bool) -> None:
    """Sets ``row``'s state bytes and the traffic its step needs, per parameter."""
    n = sum(x.size for x in jax.tree.leaves(params))
    row.state_bytes_per_param = tree_bytes(state) / n
    row.bytes_per_param = (2 * tree_bytes(params) + tree_bytes(grads) + 2 * tree_bytes(state)) / n
    if clip:
        row.bytes_per_param += tree_bytes(grads) / n  # the norm reads the gradient first


def _obj_fn(q: Any) -> jax.Array:
    """A stand-in objective for transforms that take ``obj_fn``: half the squared norm."""
    return 0.5 * sum(jnp.vdot(x, x).real for x in jax.tree.leaves(q))


def _step_fn(tx: optax.GradientTransformation, extra_args: bool) -> Callable[..., tuple[Any, Any]]:
    """``(params, state, grads, loss) -> (params, state)``: one update of ``tx``, applied."""

    def step_fn(p: Any, s: Any, g: Any, loss: jax.Array) -> tuple[Any, Any]:
        if extra_args:
            u, s = tx.update(g, s, p, loss=loss, obj_fn=_obj_fn)
        else:
            u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    return step_fn


def _donated_runner(exe: Any, params: Any, state: Any, grads: Any, loss: jax.Array) -> Runner:
    """Steps the compiled ``exe`` in place: each step consumes the last one's outputs."""
    holder = {"p": params, "s": state}

    def run() -> None:
        holder["p"], holder["s"] = exe(holder["p"], holder["s"], grads, loss)
        jax.block_until_ready((holder["p"], holder["s"]))

    return Runner(run, holder.clear)


# -- what XLA reports about a compiled step ------------------------------------------------------


def compiled_memory(exe: Any, params: Any) -> dict[str, float]:
    """Sizes XLA reports for the compiled step (MB), the count of full-size copies it inserted."""
    out: dict[str, float] = {}
    try:
        out = _memory_sizes(exe)
    except Exception:  # not every backend reports it
        pass
    try:
        out["big_copies"] = _big_copies(exe, params)
    except Exception:
        pass
    return out


def _memory_sizes(exe: Any) -> dict[str, float]:
    """Argument, temporary and peak sizes (MB) from ``exe.memory_analysis()``."""
    m = exe.memory_analysis()
    args, outs = m.argument_size_in_bytes, m.output_size_in_bytes
    alias, temp = m.alias_size_in_bytes, m.temp_size_in_bytes
    return {
        "arguments_mb": args / 1e6,
        "temp_mb": temp / 1e6,
        "peak_mb": (args + outs - alias + temp) / 1e6,
    }


def _big_copies(exe: Any, params: Any) -> int:
    """Copies in the entry computation at least as large as the smallest parameter matrix."""
    text = exe.as_text()
    smallest = min(x.size for x in jax.tree.leaves(params) if x.ndim >= 2)
    copies = 0
    for line in text.split("ENTRY", 1)[-1].splitlines():
        m = re.search(r"= (\w+)\[([0-9,]*)\][^ ]* copy\(", line)
        if m and m.group(2) and math.prod(int(d) for d in m.group(2).split(",")) >= smallest:
            copies += 1
    return copies


# -- the memory pass ---------------------------------------------------------------------------


def memory_pass_setup(params: Any, row: Row) -> Callable[[], Runner]:
    """``x <- a x + b`` in place over three float32 trees shaped like the parameters."""
    fn = jax.jit(lambda xs: jax.tree.map(lambda x: x * 0.999 + 1e-6, xs), donate_argnums=0)
    row.bytes_per_param = 3 * 2 * 4
    row.state_bytes_per_param = 0.0

    def setup() -> Runner:
        holder = {"x": [fresh_copy(params) for _ in range(3)]}

        def run() -> None:
            holder["x"] = fn(holder["x"])
            jax.block_until_ready(holder["x"])

        return Runner(run, holder.clear)

    return setup
