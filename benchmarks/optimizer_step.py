"""Times one optimizer step of every registered optimizer against the memory-bandwidth limit.

For each optimizer in ``OptimizerConfig.registered()`` the step is one donated, jitted
``tx.update`` followed by ``optax.apply_updates`` (parameters and optimizer state donated, so
everything can happen in place, as in a real train step) on a Llama-shaped parameter tree.
Each row is compared, in the same run, with

- an in-place memory pass (``x <- a x + b`` over three parameter-sized float32 trees, donated):
  the bandwidth an elementwise optimizer can hope for;
- optax's own alias of the same algorithm with the same settings (``optax.adamw``, ...), or for
  other optimizers the bare ``chain(direction, decay, scale_by_learning_rate)``: the cost of our
  wrapping (inject_hyperparams, clip, skip guard);
- ``torch.optim`` (fused, else foreach) for Adam/AdamW/Adagrad/SGD/RMSprop, with and without
  global-norm clipping and an LR schedule.

Timing: ``--rounds`` rounds; in each, the rows of one optimizer (with the memory pass) are set
up together, warmed up, and stepped in turn ``--reps`` times, in a fresh random order every
rep. A row's time is its best step over all rounds, its spread the median of its per-round
bests over that best. Interleaving makes ratios within one run meaningful on a shared, noisy
machine even when absolute times are not.

Columns: ``B/par`` is the traffic the algorithm needs per parameter (read p, g and the state,
write p and the state, plus one read of g for the clip's norm), from which ``GB/s`` and
``%mem`` (of the memory pass) follow; ``vs_optax``/``vs_torch`` are the reference's time over
ours (above 1: we are faster); ``stB/p`` is optimizer-state bytes per parameter; ``peak MB``,
``tempMB`` and ``copies`` come from XLA's compiled step (arguments + outputs - aliased + temp;
temporary buffers; copies of parameter-sized buffers). On XLA:CPU a temporary buffer is
allocated and page-faulted on every step, so ``tempMB`` above zero is expensive.

Usage::

    python benchmarks/optimizer_step.py                      # ~50M params on CPU, 1B on GPU
    python benchmarks/optimizer_step.py --quick              # a few-second smoke run
    python benchmarks/optimizer_step.py --optimizers adamw --rounds 5 --out benchmarks/results/x.json
    python benchmarks/optimizer_step.py --compile-only       # temp buffers and copies only, no timing
    python benchmarks/optimizer_step.py --optimizers adamw --layout single   # the tree as one leaf

The JSON written to ``--out`` (default ``benchmarks/results/optimizer_step-<device>-<time>.json``)
holds every row plus the headline ratios, for tracking over time.
"""

from __future__ import annotations

import os

# JAX must not grab 75% of a GPU up front: torch shares the device in the same process.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse
import dataclasses
import datetime as _dt
import gc
import json
import math
import platform
import random
import re
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from marin_optim import OptimizerConfig, host
from marin_optim.transforms.clipping import global_norm
from marin_optim.xla import cpu_multi_output_fusion_enabled, enable_cpu_multi_output_fusion

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NUM_TRAIN_STEPS = 10_000
"""Run length the schedules are built for (the step being timed is early in warmup/cosine)."""
TORCH_NAMES = {
    "adam": "adamw",
    "adamw": "adamw",
    "adagrad": "adagrad",
    "sgd": "sgd",
    "rmsprop_plain": "rmsprop",
}
"""Registered names compared with torch.optim (when registered), and the torch algorithm.
(``adam`` decouples its weight decay, so it is torch's AdamW; our ``rmsprop`` is a
bias-corrected variant and ``rmsprop_plain`` is torch's RMSprop.)"""
WARMUP_SECONDS = 0.3
"""Minimum warm-up time per row and round."""
NOMINAL_BANDWIDTH_GBPS = {"H200": 4800.0, "H100 PCIe": 2000.0, "H100": 3350.0, "A100": 2039.0, "L4": 300.0}
"""Datasheet HBM bandwidth by device-kind substring (GPU rows are also shown against it)."""


# -- the parameter tree ------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """A Llama-style decoder: embedding, ``layers`` blocks (GQA attention, SwiGLU MLP, two RMSNorm
    gains), a final norm and an untied LM head. Matrices are stored ``(in, out)`` (``x @ W``)."""

    vocab: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    layers: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def layer_shapes(self) -> dict[str, Any]:
        d, kv = self.hidden, self.kv_heads * self.head_dim
        return {
            "attn": {"q_proj": (d, d), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (d, d)},
            "mlp": {
                "gate_proj": (d, self.intermediate),
                "up_proj": (d, self.intermediate),
                "down_proj": (self.intermediate, d),
            },
            "input_norm": (d,),
            "post_attn_norm": (d,),
        }

    def shapes(self, layout: str = "llama") -> dict[str, Any]:
        """Nested dict of shapes, in one of :data:`LAYOUTS`.

        ``llama``: per-layer leaves; ``stacked``: one leaf per kind stacked over layers (scan
        layout); ``uniform``: as many leaves as ``llama``, all of one ``(rows, hidden)`` shape,
        about the same parameter count; ``single``: one ``(rows, hidden)`` leaf of about that
        count. The last two separate the cost of the Llama tree's mix of shapes from the cost
        of the traffic alone.
        """
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r}: expected one of {LAYOUTS}")
        if layout in ("uniform", "single"):
            leaves = 1 if layout == "single" else len(jax.tree.leaves(self.shapes(), is_leaf=_is_shape))
            rows = max(1, round(self.num_params() / leaves / self.hidden))
            return {f"w{i:03d}": (rows, self.hidden) for i in range(leaves)}
        if layout == "stacked":
            layers: Any = jax.tree.map(lambda s: (self.layers, *s), self.layer_shapes(), is_leaf=_is_shape)
        else:
            layers = [self.layer_shapes() for _ in range(self.layers)]
        return {
            "embed": (self.vocab, self.hidden),
            "layers": layers,
            "final_norm": (self.hidden,),
            "lm_head": (self.hidden, self.vocab),
        }

    def num_params(self, layout: str = "llama") -> int:
        return sum(math.prod(s) for s in jax.tree.leaves(self.shapes(layout), is_leaf=_is_shape))


LAYOUTS = ("llama", "stacked", "uniform", "single")
"""Parameter-tree layouts of :meth:`ModelShape.shapes` (``--layout``)."""


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple)


def llama_shape(target: int, vocab: int = 32_000) -> ModelShape:
    """The Llama-like shape closest to ``target`` parameters with a usual depth-to-width ratio.

    Width ``d`` is a multiple of 128 (64-wide heads, grouped-query attention with 4 query heads
    per KV head where possible), the MLP is ``8/3 d`` rounded up to 256, and the depth is what
    reaches the target; among widths, the one whose depth is closest to ``d / 128`` wins
    (1B -> d=2048 with ~19 layers; 50M -> d=512 with ~6).
    """
    best: tuple[float, ModelShape] | None = None
    for d in range(128, 8192 + 1, 128):
        heads = d // 64
        kv_heads = heads // 4 if heads % 4 == 0 else heads
        ffn = 256 * math.ceil(8 * d / 3 / 256)
        shape = ModelShape(vocab, d, ffn, heads, kv_heads, 1)
        embed = shape.num_params() - _per_layer(shape)
        layers = round((target - embed) / _per_layer(shape))
        if layers < 1:
            continue
        shape = dataclasses.replace(shape, layers=layers)
        score = abs(math.log(layers / (d / 128))) + abs(math.log(shape.num_params() / target))
        if best is None or score < best[0]:
            best = (score, shape)
    if best is None:  # the embeddings alone exceed the target: one narrow layer
        return ModelShape(vocab, 128, 384, 2, 2, 1)
    return best[1]


def _per_layer(shape: ModelShape) -> int:
    leaves = jax.tree.leaves(shape.layer_shapes(), is_leaf=_is_shape)
    return sum(math.prod(s) for s in leaves)


def parse_count(text: str) -> int:
    """``50M`` / ``1B`` / ``2.5e6`` -> an int."""
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([kKmMbBgG]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"--params={text!r}: expected a count such as 50M or 1B")
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def make_tree(shapes: Any, key: jax.Array, scale: float, dtype: Any, device: Any) -> Any:
    """Random normal leaves of the given shapes, scaled, placed on ``device``."""
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=_is_shape)
    keys = jax.random.split(key, len(leaves))
    out = [
        jax.device_put(scale * jax.random.normal(k, s, jnp.float32), device).astype(dtype)
        for k, s in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, out)


def tree_bytes(tree: Any) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))


def distinct_buffers(state: Any, params: Any) -> tuple[Any, int]:
    """``state`` with every leaf that shares a buffer with ``params`` or an earlier leaf copied
    (XLA refuses to donate one buffer twice), and how many were copied."""
    seen = {x.unsafe_buffer_pointer() for x in jax.tree.leaves(params)}
    copied = 0

    def fresh(x: Any) -> Any:
        nonlocal copied
        if not isinstance(x, jax.Array) or x.size == 0:
            return x
        ptr = x.unsafe_buffer_pointer()
        if ptr in seen:
            copied += 1
            x = x.copy()
            ptr = x.unsafe_buffer_pointer()
        seen.add(ptr)
        return x

    return jax.tree.map(fresh, state), copied


def fresh_copy(tree: Any) -> Any:
    """A copy with its own buffers (donation consumes them)."""
    return jax.tree.map(lambda x: x.copy(), tree)


# -- rows --------------------------------------------------------------------------------------


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
        return f"{self.optimizer}/{self.variant}/{self.framework}"

    @property
    def best(self) -> float | None:
        flat = [t for r in self.times for t in r]
        return min(flat) if flat else None

    @property
    def spread(self) -> float | None:
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
    """A setup that compiles (once) and runs the donated step of ``make_tx()``."""
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
            n = sum(x.size for x in jax.tree.leaves(params))
            row.state_bytes_per_param = tree_bytes(state) / n
            row.bytes_per_param = (2 * tree_bytes(params) + tree_bytes(grads) + 2 * tree_bytes(state)) / n
            if clip:
                row.bytes_per_param += tree_bytes(grads) / n  # the norm reads the gradient first
        loss = jnp.float32(1.0)

        def obj_fn(q: Any) -> jax.Array:
            return 0.5 * sum(jnp.vdot(x, x).real for x in jax.tree.leaves(q))

        def step_fn(p: Any, s: Any, g: Any, loss: jax.Array) -> tuple[Any, Any]:
            if extra_args:
                u, s = tx.update(g, s, p, loss=loss, obj_fn=obj_fn)
            else:
                u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        if "step" not in compiled:
            jitted = jax.jit(step_fn, donate_argnums=(0, 1))
            exe = jitted.lower(p, state, grads, loss).compile()
            compiled["step"] = exe
            row.memory = compiled_memory(exe, params)
        exe = compiled["step"]
        holder = {"p": p, "s": state}

        def run() -> None:
            holder["p"], holder["s"] = exe(holder["p"], holder["s"], grads, loss)
            jax.block_until_ready((holder["p"], holder["s"]))

        def close() -> None:
            holder.clear()

        return Runner(run, close)

    return setup


def compiled_memory(exe: Any, params: Any) -> dict[str, float]:
    """Sizes XLA reports for the compiled step (MB), the count of full-size copies it inserted."""
    out: dict[str, float] = {}
    try:
        m = exe.memory_analysis()
        args, outs = m.argument_size_in_bytes, m.output_size_in_bytes
        alias, temp = m.alias_size_in_bytes, m.temp_size_in_bytes
        out = {
            "arguments_mb": args / 1e6,
            "temp_mb": temp / 1e6,
            "peak_mb": (args + outs - alias + temp) / 1e6,
        }
    except Exception:  # not every backend reports it
        pass
    try:
        text = exe.as_text()
        smallest = min(x.size for x in jax.tree.leaves(params) if x.ndim >= 2)
        copies = 0
        for line in text.split("ENTRY", 1)[-1].splitlines():
            m2 = re.search(r"= (\w+)\[([0-9,]*)\][^ ]* copy\(", line)
            if m2 and m2.group(2) and math.prod(int(d) for d in m2.group(2).split(",")) >= smallest:
                copies += 1
        out["big_copies"] = copies
    except Exception:
        pass
    return out


def memory_pass_setup(params: Any, row: Row) -> Callable[[], Runner]:
    """``x <- a x + b`` in place over three float32 trees shaped like the parameters."""
    fn = jax.jit(lambda xs: jax.tree.map(lambda x: x * 0.999 + 1e-6, xs), donate_argnums=0)
    n = sum(x.size for x in jax.tree.leaves(params))
    row.bytes_per_param = 3 * 2 * 4
    row.state_bytes_per_param = 0.0

    def setup() -> Runner:
        holder = {"x": [fresh_copy(params) for _ in range(3)]}

        def run() -> None:
            holder["x"] = fn(holder["x"])
            jax.block_until_ready(holder["x"])

        return Runner(run, holder.clear)

    del n
    return setup


# -- which optimizers, and what they are compared with ------------------------------------------


def schedule_of(cfg: OptimizerConfig) -> optax.Schedule:
    return cfg.lr_scheduler(NUM_TRAIN_STEPS)


def optax_alias(name: str, cfg: OptimizerConfig, lr: Any) -> optax.GradientTransformation | None:
    """optax's own spelling of the same algorithm and settings, or ``None``."""
    mask = cfg.build_weight_decay_mask()
    wd = cfg.weight_decay
    if name in ("adam", "adamw"):
        return optax.adamw(
            lr, cfg.beta1, cfg.beta2, cfg.epsilon, weight_decay=wd, mask=mask, nesterov=cfg.nesterov
        )
    if name == "adamax" and hasattr(optax, "adamaxw"):
        return optax.adamaxw(lr, cfg.beta1, cfg.beta2, cfg.epsilon, weight_decay=wd, mask=mask)
    if name == "lion":
        return optax.lion(lr, cfg.beta1, cfg.beta2, weight_decay=wd, mask=mask)
    if name == "sgd" and wd == 0:
        return optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
    # Anything else that only names a direction: the bare optax chain without our wrapping.
    if type(cfg).update_rule is OptimizerConfig.update_rule:
        try:
            direction = cfg.direction()
        except NotImplementedError:
            return None
        parts = [direction]
        if cfg.uses_weight_decay:
            parts.append(optax.add_decayed_weights(wd, mask))
        parts.append(optax.scale_by_learning_rate(lr))
        return optax.chain(*parts)
    return None


def _config(cls: type, **overrides: Any) -> OptimizerConfig:
    """``cls()`` with ``overrides`` applied to the fields it has."""
    return _override(cls(), overrides)


def _wrapped(cfg: OptimizerConfig) -> OptimizerConfig | None:
    """A wrapper's (``cautious``, ``sam``) base, which holds the common fields; else None."""
    base = getattr(cfg, "base", None)
    return base if isinstance(base, OptimizerConfig) else None


def _common(cfg: OptimizerConfig) -> OptimizerConfig:
    """The config whose common fields (clip, schedule, guards) ``cfg`` builds with."""
    base = _wrapped(cfg)
    return cfg if base is None else _common(base)


def _override(cfg: OptimizerConfig, overrides: dict[str, Any]) -> OptimizerConfig:
    base = _wrapped(cfg)
    if base is not None:
        return dataclasses.replace(cfg, base=_override(base, overrides))
    names = {f.name for f in dataclasses.fields(cfg)}
    return dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if k in names})


BARE = dict(max_grad_norm=None, skip_nonfinite=False, lr_schedule="constant", warmup=0)
"""No clip, no guard, constant LR: the same work as a bare optax/torch optimizer."""


def build_rows(
    names: list[str], params: Any, grads: Any, torch_ctx: TorchContext | None, bf16: bool
) -> list[Row]:
    registered = OptimizerConfig.registered()
    rows: list[Row] = []
    mem = Row("(memory)", "in-place x*a+b, 3 trees", "memory", setup=lambda: None)
    mem.setup = memory_pass_setup(params, mem)
    rows.append(mem)
    for name in names:
        cls = registered[name]
        try:
            default_cfg = cls()
            bare_cfg = _config(cls, **BARE)
            default_cfg.build(NUM_TRAIN_STEPS)
        except Exception as e:  # needs arguments we cannot invent
            rows.append(_skipped(name, f"cannot build with defaults: {type(e).__name__}: {e}"))
            continue
        variants: list[tuple[str, OptimizerConfig]] = [("default", default_cfg), ("bare", bare_cfg)]
        if name in ("adam", "adamw"):
            variants.insert(1, ("clip+sched, no guard", _config(cls, skip_nonfinite=False)))
        if bf16 and {"mu_dtype", "nu_dtype"} <= {f.name for f in dataclasses.fields(cls)}:
            variants.append(("default, bf16 moments", _config(cls, mu_dtype="bfloat16", nu_dtype="bfloat16")))
            variants.append(
                ("bare, bf16 moments", _config(cls, mu_dtype="bfloat16", nu_dtype="bfloat16", **BARE))
            )
        optax_keys: dict[str, str] = {}
        for label, lr, clip in (("bare", default_cfg.learning_rate, False), ("clip+sched", None, True)):
            ref_cfg = bare_cfg if label == "bare" else default_cfg
            try:
                alias = optax_alias(name, ref_cfg, ref_cfg.learning_rate if lr else schedule_of(ref_cfg))
            except Exception as e:
                alias = None
                print(f"  note: no optax alias for {name}: {e}", file=sys.stderr)
            if alias is None:
                continue
            tx = optax.chain(optax.clip_by_global_norm(ref_cfg.max_grad_norm), alias) if clip else alias
            row = Row(name, f"optax {label}", "optax", setup=lambda: None)
            row.setup = jax_row_setup(lambda tx=tx: tx, params, grads, False, clip, row)
            rows.append(row)
            optax_keys[label] = row.key
        torch_keys: dict[str, str] = {}
        if torch_ctx is not None and name in TORCH_NAMES:
            for label, clip_sched in (("bare", False), ("clip+sched", True)):
                row = Row(name, f"torch {label}", "torch", setup=lambda: None)
                try:
                    row.setup = torch_ctx.row_setup(name, default_cfg, clip_sched, row)
                except Exception as e:
                    row.skipped = f"torch: {type(e).__name__}: {e}"
                rows.append(row)
                torch_keys[label] = row.key
        for label, cfg in variants:
            row = Row(name, label, "marin_optim", setup=lambda: None)
            row.setup = jax_row_setup(
                lambda cfg=cfg: cfg.build(NUM_TRAIN_STEPS),
                params,
                grads,
                True,
                _common(cfg).max_grad_norm is not None,
                row,
            )
            ref = "bare" if label.startswith("bare") else "clip+sched"
            if "bf16" not in label:
                row.compare_optax = optax_keys.get(ref)
                row.compare_torch = torch_keys.get(ref)
            rows.append(row)
    return rows


def _skipped(name: str, reason: str) -> Row:
    row = Row(name, "-", "marin_optim", setup=lambda: None)
    row.skipped = reason
    return row


# -- torch -------------------------------------------------------------------------------------


class TorchContext:
    """torch.optim on the same shapes, on the matching device (skipped if there is none)."""

    def __init__(self, shapes: Any, platform_name: str, threads: int) -> None:
        import torch

        self.torch = torch
        if platform_name == "cpu":
            self.device = torch.device("cpu")
            torch.set_num_threads(threads)
        elif platform_name in ("gpu", "cuda", "rocm") and torch.cuda.is_available():
            self.device = torch.device("cuda")
        else:
            raise RuntimeError(f"no torch device matching JAX's {platform_name!r}")
        self.shapes = jax.tree.leaves(shapes, is_leaf=_is_shape)

    def _tensors(self, grad_norm: float) -> list[Any]:
        torch = self.torch
        gen = torch.Generator(device=self.device).manual_seed(0)
        params = [
            torch.nn.Parameter(0.02 * torch.randn(s, generator=gen, device=self.device)) for s in self.shapes
        ]
        grads = [torch.randn(s, generator=gen, device=self.device) for s in self.shapes]
        total = math.sqrt(sum(float(g.square().sum()) for g in grads))
        for p, g in zip(params, grads, strict=True):
            p.grad = g.mul_(grad_norm / total)
        return params

    def _optimizer(self, name: str, cfg: OptimizerConfig, params: list[Any]) -> tuple[Any, str]:
        torch = self.torch
        lr = cfg.learning_rate
        name = TORCH_NAMES[name]
        if name == "adamw":
            cls, kw = (
                torch.optim.AdamW,
                dict(betas=(cfg.beta1, cfg.beta2), eps=cfg.epsilon, weight_decay=cfg.weight_decay),
            )
        elif name == "sgd":
            cls, kw = (
                torch.optim.SGD,
                dict(momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay),
            )
        elif name == "adagrad":
            cls, kw = torch.optim.Adagrad, {"eps": cfg.epsilon, "lr_decay": cfg.lr_decay}
            kw["initial_accumulator_value"] = cfg.initial_accumulator_value
            kw["weight_decay"] = cfg.weight_decay
        elif name == "rmsprop":
            cls = torch.optim.RMSprop
            kw = {"alpha": cfg.beta2, "eps": cfg.epsilon, "momentum": cfg.momentum, "centered": cfg.centered}
            kw["weight_decay"] = cfg.weight_decay
        else:
            raise ValueError(f"no torch.optim counterpart for {name!r}")
        for impl in ("fused", "foreach"):
            try:
                opt = cls(params, lr=lr, **kw, **{impl: True})
                opt.step()  # fused may only fail at the first step
                return opt, impl
            except (RuntimeError, TypeError, ValueError):
                continue
        return cls(params, lr=lr, **kw), "for-loop"

    def row_setup(self, name: str, cfg: OptimizerConfig, clip_sched: bool, row: Row) -> Callable[[], Runner]:
        torch = self.torch
        schedule = schedule_of(cfg)
        n = sum(math.prod(s) for s in self.shapes)

        def setup() -> Runner:
            params = self._tensors(2.0)
            opt, impl = self._optimizer(name, cfg, params)
            row.note = f"torch {impl}"
            sched = None
            if clip_sched:
                # The same schedule's values, computed once: calling a JAX function eagerly on
                # every torch step would charge torch for JAX dispatch.
                peak = cfg.learning_rate
                values = jax.jit(jax.vmap(schedule))(jnp.arange(NUM_TRAIN_STEPS))
                factors = (np.asarray(values) / peak).tolist()
                sched = torch.optim.lr_scheduler.LambdaLR(
                    opt, lambda step: factors[min(step, NUM_TRAIN_STEPS - 1)]
                )
            state_bytes = sum(
                t.numel() * t.element_size()
                for s in opt.state.values()
                for t in s.values()
                if torch.is_tensor(t) and t.numel() > 1
            )
            row.state_bytes_per_param = state_bytes / n
            row.bytes_per_param = (4 * 3 + 2 * state_bytes / n) + (4 if clip_sched else 0)
            sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)

            def run() -> None:
                if clip_sched:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm, foreach=True)
                opt.step()
                if sched is not None:
                    sched.step()
                sync()

            def close() -> None:
                params.clear()
                opt.state.clear()

            return Runner(run, close)

        return setup


# -- running and reporting ---------------------------------------------------------------------


def run_rows(
    rows: list[Row], rounds: int, reps: int, warmup: int, verbose: bool, row_bytes: int, budget: int | None
) -> None:
    """Times every row; the rows of one optimizer (and the memory pass) step in turn.

    Within a group, rows are set up together and stepped in turn, in a new random order each
    rep (A B C, C A B, ...), so a burst of load from another process hits all of them alike;
    groups that would not fit in 60% of the free memory (``row_bytes`` each, against
    ``budget``) run one row at a time.
    """
    if rounds == 0:  # --compile-only: set every JAX row up once (compiles it), time nothing
        for row in rows:
            if row.skipped or row.framework == "torch":
                continue
            try:
                row.setup().close()
            except Exception as e:
                _fail(row, e, verbose)
            gc.collect()
        return
    mem, rest = rows[0], rows[1:]
    groups: dict[str, list[Row]] = {}
    for row in rest:
        groups.setdefault(row.optimizer, []).append(row)
    for r in range(rounds):
        for name, group in groups.items():
            members = [mem, *group]
            together = budget is None or len(members) * row_bytes < 0.6 * budget
            batches = [members] if together else [[mem, row] for row in group]
            for batch in batches:
                _run_batch(
                    [row for row in batch if not row.skipped], reps, warmup, verbose, f"{r + 1}/{name}"
                )


def _run_batch(rows: list[Row], reps: int, warmup: int, verbose: bool, label: str) -> None:
    runners: list[tuple[Row, Runner]] = []
    try:
        for row in rows:
            try:
                runners.append((row, row.setup()))
            except Exception as e:
                _fail(row, e, verbose)
        alive = []
        for row, runner in runners:
            # At least `warmup` steps and WARMUP_SECONDS: lets the other framework's thread
            # pool (XLA's or torch's OpenMP) settle before timing starts.
            try:
                t_end = time.perf_counter() + WARMUP_SECONDS
                done = 0
                while done < warmup or time.perf_counter() < t_end:
                    runner.step()
                    done += 1
                alive.append((row, runner, []))
            except Exception as e:
                _fail(row, e, verbose)
        # A fresh order every rep: the row stepped right after another framework's (whose
        # threads may still be spinning) would otherwise always be the same one.
        order = random.Random(len(alive))
        for _ in range(reps):
            for _row, runner, times in order.sample(alive, len(alive)):
                t0 = time.perf_counter()
                runner.step()
                times.append(time.perf_counter() - t0)
        for row, _, times in alive:
            row.times.append(times)
            if verbose:
                print(f"  {label}: {row.key:55s} {min(times) * 1e3:9.2f} ms", file=sys.stderr)
    finally:
        for _, runner in runners:
            runner.close()
        runners.clear()
        gc.collect()


def _fail(row: Row, e: Exception, verbose: bool) -> None:
    row.skipped = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    if verbose:
        traceback.print_exc()


def free_memory(device: Any) -> int | None:
    """Bytes free on ``device`` (host RAM for CPU), or None if unknown."""
    try:
        if device.platform == "cpu":
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        stats = device.memory_stats() or {}
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    except Exception:
        return None


def summarize(rows: list[Row], n_params: int, nominal_gbps: float | None) -> dict[str, Any]:
    by_key = {r.key: r for r in rows}
    mem = rows[0]
    mem_gbps = mem.bytes_per_param * n_params / mem.best / 1e9 if mem.best else None
    out_rows = []
    for row in rows:
        d: dict[str, Any] = {
            "optimizer": row.optimizer,
            "variant": row.variant,
            "framework": row.framework,
            "skipped": row.skipped,
            "note": row.note,
        }
        if row.state_bytes_per_param is not None:
            d.update(
                bytes_per_param=row.bytes_per_param,
                state_bytes_per_param=row.state_bytes_per_param,
                **row.memory,
            )
        if row.best is not None:
            gbps = row.bytes_per_param * n_params / row.best / 1e9
            d.update(
                ms=row.best * 1e3,
                spread=row.spread,
                gbps=gbps,
                of_memory_pass=gbps / mem_gbps if mem_gbps else None,
                of_nominal=gbps / nominal_gbps if nominal_gbps else None,
            )
            for what, ref_key in (("optax", row.compare_optax), ("torch", row.compare_torch)):
                ref = by_key.get(ref_key) if ref_key else None
                if ref is not None and ref.best is not None:
                    d[f"vs_{what}"] = ref.best / row.best  # > 1: we are faster
                    d[f"vs_{what}_row"] = ref.variant
        out_rows.append(d)
    return {"memory_pass_gbps": mem_gbps, "rows": out_rows}


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers the performance targets are about (AdamW)."""
    rows = {(r["optimizer"], r["variant"], r["framework"]): r for r in summary["rows"]}
    name = "adamw" if ("adamw", "default", "marin_optim") in rows else "adam"
    get = lambda v, k: rows.get((name, v, "marin_optim"), {}).get(k)
    return {
        "optimizer": name,
        "vs_torch_clip_sched": get("default", "vs_torch"),
        "vs_torch_clip_sched_no_guard": get("clip+sched, no guard", "vs_torch"),
        "vs_torch_bare": get("bare", "vs_torch"),
        "of_memory_pass_bare": get("bare", "of_memory_pass"),
        "of_memory_pass_default": get("default", "of_memory_pass"),
        "optax_overhead_bare": _overhead(get("bare", "vs_optax")),
        "vs_optax_clip_sched": get("default", "vs_optax"),
    }


def _overhead(ratio: float | None) -> float | None:
    return None if ratio is None else 1.0 / ratio - 1.0


def format_table(summary: dict[str, Any]) -> str:
    cols = [
        ("optimizer", "{}", 10),
        ("variant", "{}", 22),
        ("framework", "{}", 11),
        ("ms", "{:.2f}", 9),
        ("spread", "{:+.0%}", 7),
        ("bytes_per_param", "{:.1f}", 6),
        ("gbps", "{:.1f}", 7),
        ("of_memory_pass", "{:.0%}", 6),
        ("vs_optax", "{:.2f}x", 8),
        ("vs_torch", "{:.2f}x", 8),
        ("state_bytes_per_param", "{:.1f}", 6),
        ("peak_mb", "{:.0f}", 8),
        ("temp_mb", "{:.1f}", 7),
        ("big_copies", "{}", 6),
    ]
    heads = {
        "bytes_per_param": "B/par",
        "gbps": "GB/s",
        "of_memory_pass": "%mem",
        "state_bytes_per_param": "stB/p",
        "peak_mb": "peak MB",
        "temp_mb": "tempMB",
        "big_copies": "copies",
    }
    lines = [
        "  ".join(
            f"{heads.get(c, c):>{w}}" if i > 2 else f"{heads.get(c, c):<{w}}"
            for i, (c, _, w) in enumerate(cols)
        )
    ]
    for r in summary["rows"]:
        if r.get("skipped"):
            lines.append(
                f"{r['optimizer']:<10}  {r['variant']:<22}  {r['framework']:<11}  skipped: {r['skipped']}"
            )
            continue
        cells = []
        for i, (c, fmt, w) in enumerate(cols):
            v = r.get(c)
            s = "-" if v is None else fmt.format(v)
            cells.append(f"{s:<{w}}" if i <= 2 else f"{s:>{w}}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


def newton_schulz_result() -> dict[str, Any] | None:
    """The latest JSON written by benchmarks/newton_schulz.py, if any (another benchmark's)."""
    files = sorted(RESULTS_DIR.glob("newton_schulz*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    try:
        return {"file": str(files[-1]), "data": json.loads(files[-1].read_text())}
    except Exception:
        return None


def nominal_bandwidth(device: Any) -> float | None:
    kind = getattr(device, "device_kind", "")
    for key, gbps in NOMINAL_BANDWIDTH_GBPS.items():
        if key.lower() in kind.lower():
            return gbps
    return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--params", type=parse_count, default=None, help="parameter count (default 50M on CPU, 1B on GPU)"
    )
    parser.add_argument("--vocab", type=int, default=32_000)
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="llama",
        help="parameter tree: per-layer leaves (llama), stacked over layers (scan layout), as many "
        "equal leaves (uniform) or one leaf (single) of about the same size",
    )
    parser.add_argument("--stacked", action="store_true", help="the same as --layout stacked")
    parser.add_argument(
        "--optimizers", default=None, help="comma-separated names (default: every registered one)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16-moment rows")
    parser.add_argument("--quick", action="store_true", help="tiny tree, one round: a smoke run")
    parser.add_argument(
        "--compile-only",
        action="store_true",
        help="no timing: only the compiled step's memory, temporaries and copies per optimizer",
    )
    parser.add_argument("--out", default=None, help="JSON output path ('' to skip writing)")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument(
        "--cpu-fusion",
        choices=("on", "off"),
        default="on",
        help="on: switch XLA:CPU multi-output fusion on, as `marin-optim speedrun` does "
        "(marin_optim/xla.py); off: leave XLA_FLAGS as they are",
    )
    parser.add_argument(
        "--malloc-hugepages",
        choices=("on", "off"),
        default="on",
        help="on: run as `marin-optim speedrun` does, restarting with glibc malloc's huge pages where "
        "that helps (marin_optim/host.py; only when run as a program); off: as started",
    )
    args = parser.parse_args(argv)
    if argv is None and args.malloc_hugepages == "on":
        host.reexec_with_malloc_hugepages()

    cpu_fusion = (
        enable_cpu_multi_output_fusion() if args.cpu_fusion == "on" else cpu_multi_output_fusion_enabled()
    )
    device = jax.devices()[0]
    platform_name = device.platform
    global WARMUP_SECONDS
    if args.quick:
        args.params = args.params or 300_000
        args.vocab = min(args.vocab, 1024)
        args.rounds, args.reps, args.warmup = 1, 2, 1
        WARMUP_SECONDS = 0.0
    if args.compile_only:
        args.rounds, args.no_torch = 0, True
    if args.params is None:
        args.params = 50_000_000 if platform_name == "cpu" else 1_000_000_000
    shape = llama_shape(args.params, args.vocab)
    if args.stacked:
        args.layout = "stacked"
    shapes = shape.shapes(args.layout)
    n_params = shape.num_params(args.layout)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    registered = OptimizerConfig.registered()
    names = (
        list(registered)
        if not args.optimizers
        else [s.strip() for s in args.optimizers.split(",") if s.strip()]
    )
    unknown = [n for n in names if n not in registered]
    if unknown:
        parser.error(f"unknown optimizer(s) {unknown}; registered: {sorted(registered)}")

    params = make_tree(shapes, jax.random.PRNGKey(0), 0.02, jnp.float32, device)
    grads = make_tree(shapes, jax.random.PRNGKey(1), 1.0, jnp.float32, device)
    norm = float(global_norm(grads))
    grads = jax.tree.map(lambda g: g * (2.0 / norm), grads)  # global norm 2: the clip is active

    torch_ctx = None
    torch_note = None
    if not args.no_torch:
        try:
            torch_ctx = TorchContext(shapes, platform_name, threads)
        except Exception as e:
            torch_note = f"torch rows skipped: {e}"
    print(
        f"device: {device.device_kind} ({platform_name}), {threads} cores visible; "
        f"tree: {n_params / 1e6:.1f}M params, {len(jax.tree.leaves(params))} leaves "
        f"(d={shape.hidden}, ffn={shape.intermediate}, layers={shape.layers}, vocab={shape.vocab}"
        f", layout {args.layout}); rounds={args.rounds} reps={args.reps}"
        + (
            f"; XLA:CPU multi-output fusion {'on' if cpu_fusion else 'off'}; "
            f"malloc huge pages {'on' if host.malloc_hugepages() else 'off'}"
            if platform_name == "cpu"
            else ""
        ),
        flush=True,
    )
    if torch_note:
        print(torch_note)

    rows = build_rows(names, params, grads, torch_ctx, bf16=not args.no_bf16)
    row_bytes = int(3.5 * tree_bytes(params))  # parameters and their state, per row
    run_rows(rows, args.rounds, args.reps, args.warmup, args.verbose, row_bytes, free_memory(device))
    nominal = nominal_bandwidth(device) if platform_name != "cpu" else None
    summary = summarize(rows, n_params, nominal)
    heads = headline(summary)
    print(format_table(summary))
    print(
        f"\nin-place memory pass: {summary['memory_pass_gbps']:.1f} GB/s"
        if summary["memory_pass_gbps"]
        else ""
    )
    if nominal:
        print(f"nominal {device.device_kind} bandwidth: {nominal:.0f} GB/s")
    print(
        "headline (AdamW):",
        json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in heads.items()}),
    )
    ns = newton_schulz_result()
    if ns:
        print(f"Newton-Schulz (from {ns['file']}): see JSON")

    result = {
        "meta": {
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "device": device.device_kind,
            "platform": platform_name,
            "cores": threads,
            "xla_cpu_multi_output_fusion": platform_name == "cpu" and cpu_fusion,
            "malloc_hugepages": host.malloc_hugepages(),
            "host": platform.node(),
            "jax": jax.__version__,
            "optax": optax.__version__,
            "torch": _torch_version(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "n_params": n_params,
            "n_leaves": len(jax.tree.leaves(params)),
            "shape": dataclasses.asdict(shape),
            "layout": args.layout,
            "rounds": args.rounds,
            "reps": args.reps,
            "nominal_bandwidth_gbps": nominal,
        },
        "headline": heads,
        "newton_schulz": ns,
        **summary,
    }
    if args.out != "":
        out = (
            Path(args.out)
            if args.out
            else RESULTS_DIR
            / (f"optimizer_step-{platform_name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json")
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, default=str))
        print(f"wrote {out}")
    return result


def _torch_version() -> str | None:
    try:
        import torch

        return torch.__version__
    except Exception:
        return None


if __name__ == "__main__":
    main()
