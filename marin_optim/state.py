"""Reading values worth logging out of an optimizer state."""

from __future__ import annotations

from typing import Any

import jax
import optax

GROUP_SEPARATOR = "__"
"""Joins a parameter group's name and a hyperparameter's name in injected names."""

_INJECT_STATES: tuple[type, ...] = tuple(
    t
    for t in (
        getattr(optax, "InjectHyperparamsState", None),
        getattr(optax, "InjectStatefulHyperparamsState", None),
    )
    if t is not None
)


def hyperparams(opt_state: Any) -> dict[str, jax.Array]:
    """Every injected hyperparameter and logged statistic in ``opt_state``, by stable name.

    - Values injected with ``optax.inject_hyperparams`` keep their injected names
      (``learning_rate``, ``weight_decay``, ``adam_learning_rate``, ...).
    - Any state object with a ``log_values()`` method contributes its values (the global-norm
      clip contributes ``grad_norm``).
    - Parameter-group values, injected as ``group__name``, are logged as ``group/name``.
    - States nested under a dict (``optax.multi_transform`` branches, parameter groups) are
      prefixed with the key and ``/``: ``embeddings/learning_rate``.

    The values are device scalars; nothing here forces a host transfer.

    >>> import jax.numpy as jnp
    >>> from marin_optim import AdamConfig, hyperparams
    >>> tx = AdamConfig(learning_rate=1e-2, warmup=0, update_path="chain").build(100)
    >>> params = {"w": jnp.ones(3)}
    >>> _, state = tx.update({"w": jnp.full(3, 2.0)}, tx.init(params), params)
    >>> {k: round(float(v), 4) for k, v in sorted(hyperparams(state).items()) if not k.startswith("skip/")}
    {'grad_norm': 3.4641, 'learning_rate': 0.01, 'one_pass': 0.0, 'weight_decay': 0.1}
    """
    out: dict[str, jax.Array] = {}
    _collect(opt_state, "", out)
    return out


def beyond_injected(opt_state: Any) -> dict[str, jax.Array]:
    """The part of :func:`hyperparams` that ``opt_state.hyperparams`` does not already hold.

    Levanter-style trainers log the outermost state's injected values (``opt_state.hyperparams``:
    the learning rates of every group, weight decay); this is the rest: statistics such as
    ``grad_norm`` and the guard's ``skip/*`` counters, and values injected further in.
    """
    if isinstance(opt_state, _INJECT_STATES):
        return hyperparams(opt_state.inner_state)
    return hyperparams(opt_state)


def _put(out: dict[str, jax.Array], name: str, value: jax.Array) -> None:
    key, i = name, 2
    while key in out:
        key = f"{name}#{i}"
        i += 1
    out[key] = value


def _collect(node: Any, prefix: str, out: dict[str, jax.Array]) -> None:
    if isinstance(node, _INJECT_STATES):
        for name, value in node.hyperparams.items():
            # Parameter groups inject "group__name"; log it as "group/name".
            _put(out, prefix + name.replace(GROUP_SEPARATOR, "/"), value)
        _collect(getattr(node, "inner_state", None), prefix, out)
        return
    log_values = getattr(node, "log_values", None)
    if callable(log_values) and not isinstance(node, type):
        for name, value in log_values().items():
            _put(out, prefix + name, value)
        _collect(getattr(node, "inner_state", None), prefix, out)
        return
    if isinstance(node, dict):
        for key in node:
            _collect(node[key], f"{prefix}{key}/", out)
    elif isinstance(node, (tuple, list)):
        for child in node:
            _collect(child, prefix, out)
    elif hasattr(node, "inner_state"):  # optax wrapper states that are not tuples
        _collect(node.inner_state, prefix, out)


def with_schedule_step(opt_state: Any, step: int | jax.Array) -> Any:
    """``opt_state`` with its schedules moved to ``step`` (the injected step count and the counts
    of the wrapped schedules), everything else unchanged.

    For a run that resumes with a fresh optimizer state (a different optimizer, or
    ``reset_optimizer_state``): the moments start from zero but the learning-rate schedule
    continues where the checkpoint left it.
    """
    if isinstance(opt_state, _INJECT_STATES):
        count = opt_state.count
        changes: dict[str, Any] = {"count": jax.numpy.asarray(step, count.dtype)}
        if hasattr(opt_state, "hyperparams_states"):  # optax >= 0.2.5: schedules keep a count
            changes["hyperparams_states"] = {
                name: _with_count(s, step) for name, s in opt_state.hyperparams_states.items()
            }
        return opt_state._replace(**changes)
    if isinstance(opt_state, tuple) and not hasattr(opt_state, "_fields"):
        return tuple(with_schedule_step(s, step) for s in opt_state)
    raise ValueError(
        f"with_schedule_step: expected an inject_hyperparams state, got {type(opt_state).__name__}"
    )


def _with_count(schedule_state: Any, step: int | jax.Array) -> Any:
    count = getattr(schedule_state, "count", None)
    if count is None or not hasattr(schedule_state, "_replace"):
        return schedule_state
    return schedule_state._replace(count=jax.numpy.asarray(step, jax.numpy.asarray(count).dtype))
