"""Prodigy (``optax.contrib.prodigy``) with a weight-decay mask."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
import optax.contrib

from marin_optim.transforms._tree import resolve_mask, where_mask

PyTree = Any


def prodigy(
    learning_rate: float | jax.Array = 1.0,
    betas: tuple[float, float] = (0.9, 0.999),
    beta3: float | None = None,
    eps: float = 1e-8,
    estim_lr0: float = 1e-6,
    estim_lr_coef: float = 1.0,
    weight_decay: float | jax.Array = 0.0,
    mask: PyTree | Callable[[PyTree], PyTree] | None = None,
    safeguard_warmup: bool = False,
) -> optax.GradientTransformation:
    """Prodigy's (negative) step, with its decoupled weight decay restricted to ``mask``.

    Update rule (Mishchenko & Defazio, 2023, "Prodigy: An Expeditiously Adaptive
    Parameter-Free Learner", https://arxiv.org/abs/2306.06101, Adam version): Adam on ``d g``
    with the step ``dlr = d * lr * sqrt(1 - b2^t) / (1 - b1^t)``, where the distance estimate
    ``d`` grows as ``max(d, sum_k dlr_k <g_k, x_0 - x_k> / ||s||_1)``; weight decay is
    ``-wd * dlr * p``.

    The step is ``optax.contrib.prodigy`` run with ``weight_decay=0``; the decay term is added
    here, with the same ``dlr`` (read from the state before the update), only where ``mask`` is
    true, because optax's prodigy decays every parameter. ``learning_rate`` is this step's value
    of the schedule (a multiplier on the estimated step, 1.0 in the paper).
    """
    inner = optax.contrib.prodigy(
        learning_rate=learning_rate,
        betas=betas,
        beta3=beta3,
        eps=eps,
        estim_lr0=estim_lr0,
        estim_lr_coef=estim_lr_coef,
        weight_decay=0.0,
        safeguard_warmup=safeguard_warmup,
    )
    beta1, beta2 = betas

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("prodigy needs params: call update(updates, state, params)")
        new_updates, new_state = inner.update(updates, state, params)
        if isinstance(weight_decay, (int, float)) and weight_decay == 0:
            return new_updates, new_state
        t = (state.count + 1).astype(jnp.float32)
        bc = jnp.sqrt(1.0 - jnp.power(jnp.float32(beta2), t)) / (1.0 - jnp.power(jnp.float32(beta1), t))
        dlr = state.estim_lr * learning_rate * bc
        decay = jax.tree.map(lambda u, p: u - (weight_decay * dlr * p).astype(u.dtype), new_updates, params)
        return where_mask(resolve_mask(mask, params), decay, new_updates), new_state

    return optax.GradientTransformation(inner.init, update_fn)
