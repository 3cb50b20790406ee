"""Weight decay scaled by the schedule's *relative* learning rate (Composer / LLM Foundry)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

PyTree = Any


def add_relative_decayed_weights(
    weight_decay: float | jax.Array,
    lr_ratio: float | jax.Array,
    mask: PyTree | Callable[[PyTree], PyTree] | None = None,
) -> optax.GradientTransformation:
    """Adds ``-(lr_t / lr_0) * weight_decay * p`` to the (final, already LR-scaled) updates.

    Update rule (Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization",
    https://arxiv.org/abs/1711.05101, in the form of MosaicML Composer's ``DecoupledAdamW`` and
    LLM Foundry's ``DecoupledLionW``)::

        p = p (1 - (lr_t / lr_0) wd) + u

    with ``lr_ratio = lr_t / lr_0`` the schedule's current value over its peak. The decay follows
    the *shape* of the schedule but not the size of the learning rate: ``wd=1e-4`` shrinks the
    weights by 1e-4 per step at the peak whatever the peak LR is (AdamW-style decay,
    ``p (1 - lr_t wd)``, would scale with it). Place it after the learning rate.
    ``mask`` works as in ``optax.add_decayed_weights``.
    """
    return optax.add_decayed_weights(-(lr_ratio * weight_decay), mask)
