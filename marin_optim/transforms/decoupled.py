"""Weight decay scaled by the schedule's *relative* learning rate (Composer / LLM Foundry; AdamC)."""

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


def adamc_weight_decay(
    weight_decay: float | optax.Schedule, learning_rate: float | optax.Schedule, peak_learning_rate: float
) -> optax.Schedule:
    """AdamC's corrected weight decay: the schedule ``wd_t * (lr_t / peak_learning_rate)``.

    Update rule (Defazio, 2025, "On the Correct Treatment of Weight Decay in Adam",
    https://arxiv.org/abs/2506.02285, AdamC), as the coefficient of an AdamW-style decay that is
    multiplied by the learning rate again (``add_decayed_weights`` before the ``-lr_t`` scale)::

        p = p - lr_t (u + wd_t (lr_t / lr_max) p)

    so the decay applied per step is ``wd lr_t^2 / lr_max``: the ratio of the decay coefficient to
    the learning rate stays constant over the schedule, which keeps the weights' steady-state norm
    (set by that ratio) from drifting as the learning rate decays. ``weight_decay`` and
    ``learning_rate`` are numbers or schedules of the step; ``wd_t`` may have its own schedule,
    which AdamC's factor multiplies. Levanter's ``adamc_weight_decay`` option of ``adam`` and
    ``cautious``; any config gets it by returning this from ``weight_decay_scheduler``.

    >>> wd = adamc_weight_decay(0.1, lambda step: 1e-3 / (1 + step), peak_learning_rate=1e-3)
    >>> [round(float(wd(step)), 4) for step in (0, 1, 3)]
    [0.1, 0.05, 0.025]
    """
    if not peak_learning_rate > 0:
        raise ValueError(f"peak_learning_rate must be > 0, got {peak_learning_rate!r}")

    def schedule(count: jax.Array) -> jax.Array:
        wd = weight_decay(count) if callable(weight_decay) else weight_decay
        lr = learning_rate(count) if callable(learning_rate) else learning_rate
        return wd * (lr / peak_learning_rate)

    return schedule
