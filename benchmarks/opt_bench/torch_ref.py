"""The torch references: ``torch.optim`` (fused, else foreach) on the same shapes and device."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from marin_optim import OptimizerConfig

from .configs import NUM_TRAIN_STEPS, schedule_of
from .rows import Row, Runner
from .trees import is_shape

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


def torch_version() -> str | None:
    """The installed torch's version, or None without torch."""
    try:
        import torch

        return torch.__version__
    except Exception:
        return None


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
        self.shapes = jax.tree.leaves(shapes, is_leaf=is_shape)

    def _tensors(self, grad_norm: float) -> list[Any]:
        """Fresh parameters whose gradients have global norm ``grad_norm``."""
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

    def _optimizer_class(self, name: str, cfg: OptimizerConfig) -> tuple[type, dict[str, Any]]:
        """The ``torch.optim`` class of registered ``name`` and its arguments from ``cfg`` (no lr)."""
        optim = self.torch.optim
        name = TORCH_NAMES[name]
        if name == "adamw":
            return optim.AdamW, dict(
                betas=(cfg.beta1, cfg.beta2), eps=cfg.epsilon, weight_decay=cfg.weight_decay
            )
        if name == "sgd":
            return optim.SGD, dict(
                momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
            )
        if name == "adagrad":
            kw = {"eps": cfg.epsilon, "lr_decay": cfg.lr_decay}
            kw["initial_accumulator_value"] = cfg.initial_accumulator_value
            kw["weight_decay"] = cfg.weight_decay
            return optim.Adagrad, kw
        if name == "rmsprop":
            kw = {"alpha": cfg.beta2, "eps": cfg.epsilon, "momentum": cfg.momentum, "centered": cfg.centered}
            kw["weight_decay"] = cfg.weight_decay
            return optim.RMSprop, kw
        raise ValueError(f"no torch.optim counterpart for {name!r}")

    def _optimizer(self, name: str, cfg: OptimizerConfig, params: list[Any]) -> tuple[Any, str]:
        """The fastest implementation that works (fused, foreach, for-loop) and its name."""
        cls, kw = self._optimizer_class(name, cfg)
        lr = cfg.learning_rate
        for impl in ("fused", "foreach"):
            try:
                opt = cls(params, lr=lr, **kw, **{impl: True})
                opt.step()  # fused may only fail at the first step
                return opt, impl
            except (RuntimeError, TypeError, ValueError):
                continue
        return cls(params, lr=lr, **kw), "for-loop"

    def _scheduler(self, opt: Any, schedule: optax.Schedule, peak: float) -> Any:
        """A ``LambdaLR`` following ``schedule`` (whose peak is ``peak``).

        The same schedule's values, computed once: calling a JAX function eagerly on every
        torch step would charge torch for JAX dispatch.
        """
        values = jax.jit(jax.vmap(schedule))(jnp.arange(NUM_TRAIN_STEPS))
        factors = (np.asarray(values) / peak).tolist()
        return self.torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: factors[min(step, NUM_TRAIN_STEPS - 1)]
        )

    def _state_bytes(self, opt: Any) -> int:
        """Bytes of ``opt``'s per-parameter state tensors (scalars such as ``step`` left out)."""
        torch = self.torch
        return sum(
            t.numel() * t.element_size()
            for s in opt.state.values()
            for t in s.values()
            if torch.is_tensor(t) and t.numel() > 1
        )

    def row_setup(self, name: str, cfg: OptimizerConfig, clip_sched: bool, row: Row) -> Callable[[], Runner]:
        """A setup for ``row``: torch's ``name`` with ``cfg``'s settings, with ``clip_sched``
        also global-norm clipping and ``cfg``'s LR schedule."""
        torch = self.torch
        schedule = schedule_of(cfg)
        n = sum(math.prod(s) for s in self.shapes)

        def setup() -> Runner:
            params = self._tensors(2.0)
            opt, impl = self._optimizer(name, cfg, params)
            row.note = f"torch {impl}"
            sched = self._scheduler(opt, schedule, cfg.learning_rate) if clip_sched else None
            state_bytes = self._state_bytes(opt)
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
