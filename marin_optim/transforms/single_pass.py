"""AdamW (with its clip, guard and schedule) as one memory pass per parameter on XLA:CPU."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from marin_optim.transforms.clipping import ClipByGlobalNormState
from marin_optim.transforms.guards import find_guard_state


def _only(tree: Any, cls: type) -> list[Any]:
    found: list[Any] = []
    jax.tree.map(
        lambda x: found.append(x) if isinstance(x, cls) else None,
        tree,
        is_leaf=lambda x: isinstance(x, cls),
    )
    return found


def _replace(tree: Any, cls: type, new: Any) -> Any:
    return jax.tree.map(
        lambda x: new if isinstance(x, cls) else x, tree, is_leaf=lambda x: isinstance(x, cls)
    )


def single_pass_active() -> bool:
    """Whether :func:`single_pass_adamw` takes its one-pass form when traced now.

    On XLA:CPU with multi-output fusion on (:mod:`marin_optim.xla`). Without the pass, the
    one-pass form compiles to three loops that re-read the gradient and the moments, 44 bytes
    per parameter against the plain chain's 40, so the plain chain is used.
    """
    from marin_optim.xla import cpu_multi_output_fusion_enabled

    return jax.default_backend() == "cpu" and cpu_multi_output_fusion_enabled()


def single_pass_adamw(
    tx: optax.GradientTransformationExtraArgs,
    *,
    b1: float,
    b2: float,
    eps: float,
    max_grad_norm: float | None,
    weight_decay_mask: Callable[[Any], Any] | bool,
    enabled: bool | None = None,
) -> optax.GradientTransformationExtraArgs:
    """``tx`` (an AdamW built by :meth:`OptimizerConfig.build`) with its array work in one loop per leaf.

    ``tx`` is ``inject_hyperparams(guard(chain(clip, scale_by_adam, add_decayed_weights,
    scale_by_learning_rate)))``; this keeps its state, its scalars (schedule, clip norm, guard
    counters) and its rule, and computes the moments and the update of each leaf as::

        s = min(1, max_grad_norm / ||g||)              (1 without a clip)
        m' = b1 m + ((1 - b1) s) g
        v' = b2 v + ((1 - b2) s^2 g) g
        u  = -[ (a1 m + a2 g) / (sqrt(k1 v + (k2 g) g) + eps) + lr wd p ]
        a1 = lr b1 / (1 - b1^t),  a2 = lr (1 - b1) s / (1 - b1^t)
        k1 = b2 / (1 - b2^t),     k2 = (1 - b2) s^2 / (1 - b2^t)

    i.e. AdamW (Loshchilov & Hutter, 2019, https://arxiv.org/abs/1711.05101) with the clip
    scale, bias corrections and learning rate folded into scalar coefficients, and the update
    computed from ``m, v, g`` rather than from ``m', v'`` (equal up to float32 rounding). On a
    skipped step (the guard's ``last_skipped``) moments and parameters stay bitwise unchanged.

    Why: XLA:CPU fuses elementwise work into loops; with multi-output fusion on, loops reading
    the same arrays merge into one loop writing several outputs, but a loop never merges with a
    loop that reads its output, and a value read by two loops (the chain's clipped gradient
    ``g * s``) is written to a temporary buffer. Written as above, every parameter-sized
    intermediate has one reader and ``m'``, ``v'`` and ``p + u`` only read ``g, m, v, p``: one
    loop per leaf reads 16 and writes 12 bytes per parameter (plus the clip's norm read of
    ``g``), like torch's fused AdamW; the chain needs 40, or 48 with the temporary.

    ``enabled``: ``None`` decides when traced (:func:`single_pass_active`); ``True`` forces the
    one-pass form (tests), ``False`` the plain chain. Leaves that are not all float32, or a
    call without ``params``, use the plain chain.
    """

    def update_fn(updates, state, params=None, **extra_args):
        active = single_pass_active() if enabled is None else enabled
        leaves = jax.tree.leaves((updates, params))
        if not active or params is None or any(jnp.asarray(x).dtype != jnp.float32 for x in leaves):
            return tx.update(updates, state, params, **extra_args)
        # The chain gives the state and the scalars; its parameter-sized outputs are replaced
        # below, so XLA drops their computation.
        _, new_state = tx.update(updates, state, params, **extra_args)
        (old,) = _only(state, optax.ScaleByAdamState)
        (new,) = _only(new_state, optax.ScaleByAdamState)
        if any(x.dtype != jnp.float32 for x in jax.tree.leaves((old.mu, old.nu))):
            return tx.update(updates, state, params, **extra_args)
        hp = new_state.hyperparams
        lr = jnp.asarray(hp["learning_rate"], jnp.float32)
        wd = jnp.asarray(hp.get("weight_decay", 0.0), jnp.float32)
        if max_grad_norm is None:
            s = jnp.float32(1.0)
        else:
            (clip,) = _only(new_state, ClipByGlobalNormState)
            s = jnp.minimum(1.0, max_grad_norm / clip.grad_norm)  # the chain's clip scale, bitwise
        guard = find_guard_state(new_state)
        skipped = jnp.bool_(False) if guard is None else guard.last_skipped

        t = new.count.astype(jnp.float32)
        bc1 = 1.0 / (1.0 - b1**t)
        bc2 = 1.0 / (1.0 - b2**t)
        c1 = (1.0 - b1) * s
        c2 = (1.0 - b2) * s * s
        a1, a2 = lr * bc1 * b1, lr * bc1 * c1
        k1, k2 = bc2 * b2, bc2 * c2
        decay = lr * wd

        def leaf(g, m, v, p, decayed):
            m_new = b1 * m + c1 * g
            v_new = b2 * v + (c2 * g) * g
            u = -((a1 * m + a2 * g) / (jnp.sqrt(k1 * v + (k2 * g) * g) + eps))
            if decayed:
                u = u - decay * p
            return (
                jnp.where(skipped, m, m_new),
                jnp.where(skipped, v, v_new),
                jnp.where(skipped, jnp.zeros_like(u), u),
            )

        if weight_decay_mask is True or weight_decay_mask is False:
            mask = jax.tree.map(lambda _: weight_decay_mask, updates)
        else:  # one bool per parameter (a haliax NamedArray is one): to every array below it
            mask = jax.tree.map(
                lambda m, u: jax.tree.map(lambda _: m, u),
                weight_decay_mask(params),
                updates,
                is_leaf=lambda x: isinstance(x, bool),
            )
        treedef = jax.tree.structure(updates)
        out = [
            leaf(*args)
            for args in zip(
                treedef.flatten_up_to(updates),
                treedef.flatten_up_to(old.mu),
                treedef.flatten_up_to(old.nu),
                treedef.flatten_up_to(params),
                treedef.flatten_up_to(mask),
                strict=True,
            )
        ]
        mu, nu, u = (treedef.unflatten([o[i] for o in out]) for i in range(3))
        return u, _replace(new_state, optax.ScaleByAdamState, new._replace(mu=mu, nu=nu))

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)
