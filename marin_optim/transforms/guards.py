"""Step guards: skip non-finite steps and loss/grad-norm spikes, on device, without host syncs."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from marin_optim.transforms.clipping import unfused_global_norm
from marin_optim.transforms.skipping import update_keeping_state_on_skip


class GuardState(NamedTuple):
    """State of :func:`skip_step_guard`: the inner state plus rolling windows and counters."""

    inner_state: Any
    losses: jax.Array  # [window] float32 ring buffer of the finite losses (spikes included)
    grad_norms: jax.Array  # [window] float32 ring buffer of their gradient norms
    recorded: jax.Array  # int32: entries written so far (saturates at window)
    next_index: jax.Array  # int32: ring-buffer write position
    skipped_steps: jax.Array  # int32: all skipped steps, for any reason
    nonfinite_steps: jax.Array  # int32: steps skipped for a NaN/inf loss or gradient norm
    consecutive_nonfinite: jax.Array  # int32: current run of non-finite steps
    last_skipped: jax.Array  # bool: whether the latest step was skipped
    loss_zscore: jax.Array  # float32: (loss - mean) / std of the latest step (0 while warming up)
    grad_norm_zscore: jax.Array  # float32: same for the gradient norm

    def log_values(self) -> dict[str, jax.Array]:
        return {
            "skip/skipped_steps": self.skipped_steps,
            "skip/nonfinite_steps": self.nonfinite_steps,
            "skip/consecutive_nonfinite": self.consecutive_nonfinite,
            "skip/last_skipped": self.last_skipped,
            "skip/loss_zscore": self.loss_zscore,
            "skip/grad_norm_zscore": self.grad_norm_zscore,
        }


def _window_stats(values: jax.Array, valid: jax.Array, n: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and unbiased (n - 1) standard deviation over the valid entries of a ring buffer."""
    n_f = jnp.maximum(n, 1).astype(jnp.float32)
    mean = jnp.sum(jnp.where(valid, values, 0.0)) / n_f
    var = jnp.sum(jnp.where(valid, jnp.square(values - mean), 0.0)) / jnp.maximum(n_f - 1.0, 1.0)
    return mean, jnp.sqrt(var)


def skip_step_guard(
    inner: optax.GradientTransformation,
    *,
    skip_nonfinite: bool = True,
    skip_spikes: bool = False,
    window: int = 128,
    sigma: float = 6.0,
) -> optax.GradientTransformationExtraArgs:
    """Runs ``inner`` but turns a bad step into a no-op: zero updates and an unchanged inner state.

    A step is *bad* when

    - ``skip_nonfinite`` and the loss (if passed) or the global gradient norm is NaN/inf; or
    - ``skip_spikes`` and, once at least ``max(2, window // 2)`` steps are known (counting the
      current one) and at least two of them are previous finite steps (an unbiased standard
      deviation needs two samples), ``loss - mean > sigma * std`` or
      ``grad_norm - mean' > sigma * std'``, with mean and unbiased std over the up-to-``window``
      previous finite steps (a skipped spike included, as in OLMo-core). So the rule never
      decides on fewer than ``max(2, window // 2 - 1)`` previous steps, whatever ``window`` is.

    The spike rule is OLMo-core's ``SkipStepOptimizer`` (rolling interval 128, sigma 6; see also
    Chowdhery et al., 2022, PaLM, section 5.1, on skipping around loss spikes). One deliberate
    difference: a non-finite loss or gradient norm never enters the rolling window, so a single
    NaN cannot poison the statistics and make every later step look bad. A finite spike does
    enter the window, as in OLMo-core.

    Everything is computed on device: the decision is a scalar predicate applied with
    ``jnp.where``, which XLA fuses into the optimizer's own elementwise pass; no host sync.
    The trainer passes the loss as ``update(..., loss=loss)`` (required for ``skip_spikes``).
    """
    if skip_spikes and (window < 2 or not sigma > 0):
        raise ValueError(f"skip_step_guard needs window >= 2 and sigma > 0, got {window=} {sigma=}")
    inner = optax.with_extra_args_support(inner)
    size = max(int(window), 1)

    def init_fn(params: optax.Params) -> GuardState:
        # A fresh buffer per field: trainers donate the optimizer state, and XLA refuses to
        # donate one buffer twice ("Attempt to donate the same buffer twice").
        zero_i = lambda: jnp.zeros((), jnp.int32)
        zero_f = lambda: jnp.zeros((), jnp.float32)
        return GuardState(
            inner_state=inner.init(params),
            losses=jnp.zeros((size,), jnp.float32),
            grad_norms=jnp.zeros((size,), jnp.float32),
            recorded=zero_i(),
            next_index=zero_i(),
            skipped_steps=zero_i(),
            nonfinite_steps=zero_i(),
            consecutive_nonfinite=zero_i(),
            last_skipped=jnp.zeros((), jnp.bool_),
            loss_zscore=zero_f(),
            grad_norm_zscore=zero_f(),
        )

    def update_fn(updates, state: GuardState, params=None, **extra_args):
        loss = extra_args.get("loss")
        if skip_spikes and loss is None:
            raise ValueError(
                "skip_bad_steps needs the loss of every step: the trainer must call "
                "update(grads, state, params, loss=loss)"
            )
        grad_norm = unfused_global_norm(updates)
        loss32 = jnp.asarray(0.0 if loss is None else loss, jnp.float32)
        finite = jnp.isfinite(grad_norm) & jnp.isfinite(loss32)

        bad = jnp.logical_not(finite) if skip_nonfinite else jnp.zeros((), jnp.bool_)
        loss_z, grad_z = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)  # two buffers (donation)
        if skip_spikes:
            valid = jnp.arange(size) < state.recorded
            # OLMo-core's threshold, counting the current step; for windows below 6 it would
            # allow a single previous sample, whose standard deviation is undefined (OLMo-core's
            # NaN never fires), so at least two previous samples are required.
            active = state.recorded >= max(2, window // 2 - 1)
            loss_mean, loss_std = _window_stats(state.losses, valid, state.recorded)
            gn_mean, gn_std = _window_stats(state.grad_norms, valid, state.recorded)
            loss_spike = loss32 - loss_mean > sigma * loss_std
            gn_spike = grad_norm - gn_mean > sigma * gn_std
            bad = bad | (finite & active & (loss_spike | gn_spike))
            safe = lambda x, s: jnp.where(active & finite & (s > 0), x / jnp.where(s > 0, s, 1.0), 0.0)
            loss_z = safe(loss32 - loss_mean, loss_std)
            grad_z = safe(grad_norm - gn_mean, gn_std)

        # new_inner = where(bad, old, new), computed so that the step stays copy-free on
        # XLA:CPU (see transforms/skipping.py).
        new_updates, new_inner = update_keeping_state_on_skip(
            inner.update, bad, updates, state.inner_state, params, **extra_args
        )
        new_updates = jax.tree.map(lambda u: jnp.where(bad, jnp.zeros_like(u), u), new_updates)

        record = finite  # spikes enter the window (as in OLMo-core); NaN/inf never do
        idx = state.next_index
        nonfinite = jnp.logical_not(finite)
        return new_updates, GuardState(
            inner_state=new_inner,
            losses=jnp.where(record, state.losses.at[idx].set(loss32), state.losses),
            grad_norms=jnp.where(record, state.grad_norms.at[idx].set(grad_norm), state.grad_norms),
            recorded=jnp.where(record, jnp.minimum(state.recorded + 1, size), state.recorded),
            next_index=jnp.where(record, (idx + 1) % size, idx),
            skipped_steps=state.skipped_steps + bad.astype(jnp.int32),
            nonfinite_steps=state.nonfinite_steps + nonfinite.astype(jnp.int32),
            consecutive_nonfinite=jnp.where(nonfinite, state.consecutive_nonfinite + 1, 0),
            last_skipped=bad,
            loss_zscore=loss_z,
            grad_norm_zscore=grad_z,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def find_guard_state(opt_state: Any) -> GuardState | None:
    """The first :class:`GuardState` inside an optimizer state (depth-first), if any."""
    if isinstance(opt_state, GuardState):
        return opt_state
    children: Any = ()
    if isinstance(opt_state, dict):
        children = opt_state.values()
    elif isinstance(opt_state, (tuple, list)):
        children = opt_state
    for child in children:
        found = find_guard_state(child)
        if found is not None:
            return found
    return None


class NonFiniteError(RuntimeError):
    """Too many consecutive steps had NaN/inf gradients or loss: training has diverged."""


def raise_if_diverged(opt_state: Any, max_consecutive: int) -> None:
    """Raises :class:`NonFiniteError` after ``max_consecutive`` non-finite steps in a row.

    Reads one device scalar: call it where the trainer already syncs (e.g. when it logs).
    """
    guard = find_guard_state(opt_state)
    if guard is not None:
        check_nonfinite_run(int(guard.consecutive_nonfinite), int(guard.nonfinite_steps), max_consecutive)


def check_nonfinite_run(consecutive: int, total: int, max_consecutive: int) -> None:
    """:func:`raise_if_diverged` on logged values (``skip/consecutive_nonfinite`` and
    ``skip/nonfinite_steps`` of ``hyperparams(state)``), for trainers that already read them."""
    if max_consecutive > 0 and consecutive >= max_consecutive:
        raise NonFiniteError(
            f"{consecutive} consecutive steps had a NaN/inf loss or gradient (limit "
            f"max_nonfinite_steps={max_consecutive}); stopping before weights are corrupted. "
            f"{total} non-finite steps so far. Lower the learning rate, "
            "check the data, or raise max_nonfinite_steps."
        )
