"""Averaged SGD (``torch.optim.ASGD``): a decaying step size, a shrink term and iterate averaging."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from marin_optim.transforms._tree import increment


class AsgdStepState(NamedTuple):
    """Number of steps taken."""

    count: jax.Array


def asgd_step(
    learning_rate: float | jax.Array, lambd: float = 1e-4, alpha: float = 0.75
) -> optax.GradientTransformation:
    """The whole (negative) ASGD step, learning rate included.

    Update rule at step ``t = 1, 2, ...`` (Polyak & Juditsky, 1992, "Acceleration of Stochastic
    Approximation by Averaging", https://doi.org/10.1137/0330046; step-size decay of Bottou,
    2012, "Stochastic Gradient Descent Tricks"; in the form of ``torch.optim.ASGD``)::

        eta_t = lr / (1 + lambd * lr * (t - 1))^alpha
        p     = p (1 - lambd * eta_t) - eta_t g        i.e.  u = -eta_t (g + lambd p)

    ``learning_rate`` is this step's value of the schedule (torch likewise uses the current
    ``lr`` of the group when it recomputes ``eta``). Needs ``params``.
    """

    def init_fn(params: optax.Params) -> AsgdStepState:
        del params
        return AsgdStepState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("asgd_step needs params: call update(updates, state, params)")
        count = increment(state.count)
        lr = jnp.asarray(learning_rate, jnp.float32)
        eta = lr / jnp.power(1.0 + lambd * lr * (count.astype(jnp.float32) - 1.0), alpha)
        new_updates = jax.tree.map(lambda g, p: (-eta * (g + lambd * p)).astype(g.dtype), updates, params)
        return new_updates, AsgdStepState(count=count)

    return optax.GradientTransformation(init_fn, update_fn)


class AveragedIterateState(NamedTuple):
    """The running average ``ax`` of the iterates and the weight ``mu`` of the next step."""

    count: jax.Array
    mu: jax.Array
    ax: optax.Params

    def eval_params(self, params: optax.Params) -> optax.Params:
        """The averaged parameters, to evaluate the model at (``params`` fixes the dtypes)."""
        return jax.tree.map(lambda a, p: a.astype(jnp.result_type(p)), self.ax, params)


def average_iterates(t0: float = 1e6) -> optax.GradientTransformation:
    """Keeps ASGD's average of the iterates; passes the (final) updates through unchanged.

    Place it last, after the learning rate, so that it sees the new parameters
    ``p' = p + u``. At step ``t`` (``torch.optim.ASGD``'s rule)::

        ax = p'                     if mu_t == 1
        ax = ax + mu_t (p' - ax)    otherwise,      mu_{t+1} = 1 / max(1, t - t0),  mu_1 = 1

    so averaging starts after step ``t0 + 1``. The state's ``eval_params(params)`` returns ``ax``
    (see :func:`marin_optim.optimizers.schedule_free.eval_params`).
    """

    def init_fn(params: optax.Params) -> AveragedIterateState:
        return AveragedIterateState(
            count=jnp.zeros([], jnp.int32),
            mu=jnp.ones([], jnp.float32),
            ax=jax.tree.map(lambda p: jnp.array(p, copy=True), params),
        )

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("average_iterates needs params: call update(updates, state, params)")
        count = increment(state.count)
        mu = state.mu

        def average(u: jax.Array, p: jax.Array, a: jax.Array) -> jax.Array:
            new_p = p + u
            return jnp.where(mu == 1.0, new_p, a + mu * (new_p - a)).astype(a.dtype)

        ax = jax.tree.map(average, updates, params, state.ax)
        next_mu = 1.0 / jnp.maximum(1.0, count.astype(jnp.float32) - t0)
        return updates, AveragedIterateState(count=count, mu=next_mu, ax=ax)

    return optax.GradientTransformation(init_fn, update_fn)
