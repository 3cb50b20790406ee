"""Elementwise optimizers (with their clip, guard and schedule) as one memory pass per leaf on XLA:CPU.

XLA:CPU fuses elementwise work into loops. With multi-output fusion on
(:mod:`marin_optim.xla`), loops that read the same arrays merge into one loop writing several
outputs, but a loop never merges with a loop that reads its output, and a value read by two
loops (a chain's clipped gradient ``g * s``, or AdamW's ``m'`` read by its update) is written to
a temporary buffer. A chain such as ``clip -> scale_by_adam -> add_decayed_weights ->
scale_by_learning_rate`` therefore compiles to several loops per leaf that write and re-read
parameter-sized values.

:func:`single_pass` keeps the built chain's state and scalars (schedule, clip norm, guard
counters) and computes each leaf's new moments and update from the *inputs* ``g``, the old
moments and ``p`` only, with the clip scale, bias corrections and learning rate folded into
scalar coefficients (a :class:`OnePassRule` per optimizer). Every parameter-sized intermediate
then has one reader and XLA emits one loop per leaf, reading ``g``, the moments and ``p`` once
and writing them once, like torch's fused kernels. Where a rule needs the same value twice (the
new second moment, as state and in the update's denominator), the update computes it scaled by
a power of two (``sqrt(16 v') = 4 sqrt(v')``, exact in floating point), which keeps the two
computations distinct to XLA without changing the result. The results equal the chain's up to
float32 rounding (the folded coefficients round differently).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax

from marin_optim.transforms._tree import bias_correction
from marin_optim.transforms.adagrad import ScaleByAdagradState
from marin_optim.transforms.clipping import ClipByGlobalNormState
from marin_optim.transforms.guards import find_guard_state
from marin_optim.transforms.rmsprop import ScaleByRmspropMomentumState

logger = logging.getLogger(__name__)

ONE_PASS = "one_pass"
"""The injected hyperparameter that says which path a step took (1: one pass, 0: the chain)."""

LeafFn = Callable[..., tuple[tuple[jax.Array, ...], jax.Array]]
"""``leaf(g, *moments) -> (new moments, step)``: the new parameter is ``p - step - lr wd p``."""


@dataclass(frozen=True)
class OnePassRule:
    """An elementwise optimizer direction written for one loop per leaf.

    ``moments``: its parameter-shaped state, as ``(state class, field)`` pairs found in the built
    chain's state (each class exactly once). ``prepare(state_of, s, lr)`` does the step's scalar
    work: ``state_of(cls)`` is the chain's *new* state of that class (for step counts), ``s`` the
    clip scale (1 without a clip), ``lr`` the learning rate; it returns the :data:`LeafFn`, whose
    ``step`` is ``lr`` times the direction of the clipped gradient ``s g``. A leaf function must
    compute every output from its arguments and scalars only, never from another output.
    """

    name: str
    moments: tuple[tuple[type, str], ...]
    prepare: Callable[[Callable[[type], Any], jax.Array, jax.Array], LeafFn]


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
    """Whether :func:`single_pass` takes its one-pass form when traced now.

    On XLA:CPU with multi-output fusion on (:mod:`marin_optim.xla`). Without the pass, the
    one-pass form compiles to one loop per output, each re-reading the gradient and the
    moments, so the plain chain is used.
    """
    from marin_optim.xla import cpu_multi_output_fusion_enabled

    return jax.default_backend() == "cpu" and cpu_multi_output_fusion_enabled()


def single_pass(
    tx: optax.GradientTransformationExtraArgs,
    rule: OnePassRule,
    *,
    max_grad_norm: float | None,
    weight_decay_mask: Callable[[Any], Any] | bool,
    enabled: bool | None = None,
) -> optax.GradientTransformationExtraArgs:
    """``tx`` (built by :meth:`OptimizerConfig.build`) with its array work in one loop per leaf.

    ``tx`` is ``inject_hyperparams([guard](chain([clip], direction, add_decayed_weights,
    scale_by_learning_rate)))`` whose direction ``rule`` describes. Its update is kept for the
    state and the scalars (its parameter-sized outputs are replaced, so XLA drops their
    computation); each leaf's moments and update are then::

        s = min(1, max_grad_norm / ||g||)         (the chain's clip scale; 1 without a clip)
        moments', step = rule(g, moments)         (from s g, with s folded into coefficients)
        u = -(step + lr wd p)                     (wd p only where the decay mask says so)

    On a skipped step (the guard's ``last_skipped``) moments and parameters stay bitwise
    unchanged, as with the chain.

    ``enabled``: ``True`` takes the one-pass form (what ``OptimizerConfig.build`` passes when its
    ``update_path`` resolves to it), ``False`` the plain chain, ``None`` decides when traced
    (:func:`single_pass_active`). A call the form cannot take falls back to the plain chain and
    logs why (once per trace): no ``params``, leaves or moments that are not all float32, or a
    state that does not hold each of ``rule.moments``' classes exactly once. Where the injected
    hyperparameters hold :data:`ONE_PASS`, it is set to 1 or 0 by the path each step took.
    """

    def chain(updates, state, params, reason: str | None, **extra_args):
        if reason is not None:
            logger.warning("%s rule: the one-pass form falls back to the chain: %s", rule.name, reason)
        new_updates, new_state = tx.update(updates, state, params, **extra_args)
        return new_updates, _mark(new_state, 0.0)

    def update_fn(updates, state, params=None, **extra_args):
        active = single_pass_active() if enabled is None else enabled
        if not active:
            return chain(updates, state, params, None, **extra_args)
        if params is None:
            return chain(updates, state, params, "update() got no params", **extra_args)
        dtypes = {str(jnp.asarray(x).dtype) for x in jax.tree.leaves((updates, params))} - {"float32"}
        if dtypes:
            return chain(updates, state, params, f"leaves of dtype {', '.join(sorted(dtypes))}", **extra_args)
        _, new_state = tx.update(updates, state, params, **extra_args)
        classes = list(dict.fromkeys(cls for cls, _ in rule.moments))
        found = {cls: (_only(state, cls), _only(new_state, cls)) for cls in classes}
        missing = [cls.__name__ for cls, (old, new) in found.items() if len(old) != 1 or len(new) != 1]
        if missing:
            why = f"the state does not hold exactly one {', '.join(missing)}"
            return chain(updates, state, params, why, **extra_args)
        moments = [getattr(found[cls][0][0], name) for cls, name in rule.moments]
        dtypes = {str(x.dtype) for x in jax.tree.leaves(moments)} - {"float32"}
        if dtypes:
            return chain(
                updates, state, params, f"moments of dtype {', '.join(sorted(dtypes))}", **extra_args
            )
        new_state = _mark(new_state, 1.0)

        hp = new_state.hyperparams
        lr = jnp.asarray(hp["learning_rate"], jnp.float32)
        decay = lr * jnp.asarray(hp.get("weight_decay", 0.0), jnp.float32)
        if max_grad_norm is None:
            s = jnp.float32(1.0)
        else:
            (clip,) = _only(new_state, ClipByGlobalNormState)
            s = jnp.minimum(1.0, max_grad_norm / clip.grad_norm)  # the chain's clip scale, bitwise
        guard = find_guard_state(new_state)
        skipped = jnp.bool_(False) if guard is None else guard.last_skipped
        leaf_fn = rule.prepare(lambda cls: found[cls][1][0], s, lr)

        def leaf(g, p, decayed, *old):
            new, step = leaf_fn(g, *old)
            u = -(step + decay * p) if decayed else -step
            return (
                *(jnp.where(skipped, m, m_new) for m, m_new in zip(old, new, strict=True)),
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
        flat = [treedef.flatten_up_to(x) for x in (updates, params, mask, *moments)]
        out = [leaf(*args) for args in zip(*flat, strict=True)]
        columns = [treedef.unflatten([o[i] for o in out]) for i in range(len(moments) + 1)]
        for cls in classes:
            fields = {name: columns[i] for i, (c, name) in enumerate(rule.moments) if c is cls}
            new_state = _replace(new_state, cls, found[cls][1][0]._replace(**fields))
        return columns[-1], new_state

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)


def _mark(state: Any, value: float) -> Any:
    """``state`` (``inject_hyperparams``'s, outermost) with :data:`ONE_PASS` set, where it is injected."""
    hyperparams = getattr(state, "hyperparams", None)
    if not isinstance(hyperparams, dict) or ONE_PASS not in hyperparams:
        return state
    # Keep the dtype ``inject_hyperparams`` gave it (the params' dtype for bf16 params).
    dtype = jnp.asarray(hyperparams[ONE_PASS]).dtype
    return state._replace(hyperparams={**hyperparams, ONE_PASS: jnp.asarray(value, dtype)})


def _count(state: Any) -> jax.Array:
    return state.count.astype(jnp.float32)


def adamw_rule(b1: float, b2: float, eps: float) -> OnePassRule:
    """AdamW's direction (Kingma & Ba, 2015, https://arxiv.org/abs/1412.6980)::

        m' = b1 m + ((1 - b1) s) g;     v' = b2 v + ((1 - b2) s^2 g) g
        step = (a1 m + a2 g) / (sqrt(k1 v + (k2 g) g) + eps)
        a1 = lr b1 / (1 - b1^t),  a2 = lr (1 - b1) s / (1 - b1^t)
        k1 = b2 / (1 - b2^t),     k2 = (1 - b2) s^2 / (1 - b2^t)

    i.e. ``lr m_hat' / (sqrt(v_hat') + eps)`` computed from ``m, v, g``. For ``scale_by_adam``
    (marin_optim's or optax's: state ``optax.ScaleByAdamState``).
    """

    def prepare(state_of: Callable[[type], Any], s: jax.Array, lr: jax.Array) -> LeafFn:
        t = _count(state_of(optax.ScaleByAdamState))
        ibc1, ibc2 = 1.0 / bias_correction(b1, t), 1.0 / bias_correction(b2, t)
        c1, c2 = (1.0 - b1) * s, (1.0 - b2) * s * s
        a1, a2 = lr * ibc1 * b1, lr * ibc1 * c1
        k1, k2 = ibc2 * b2, ibc2 * c2

        def leaf(g, m, v):
            step = (a1 * m + a2 * g) / (jnp.sqrt(k1 * v + (k2 * g) * g) + eps)
            return (b1 * m + c1 * g, b2 * v + (c2 * g) * g), step

        return leaf

    return OnePassRule("adamw", ((optax.ScaleByAdamState, "mu"), (optax.ScaleByAdamState, "nu")), prepare)


def adamax_rule(b1: float, b2: float, eps: float) -> OnePassRule:
    """Adamax's direction (Kingma & Ba, 2015, Algorithm 2; ``optax.scale_by_adamax``)::

        m' = b1 m + ((1 - b1) s) g;     n' = max(b2 n, |s g| + eps)
        step = (a1 m + a2 g) / max(2 b2 n, |(2 s) g| + 2 eps)
        a1 = 2 lr b1 / (1 - b1^t),  a2 = 2 lr (1 - b1) s / (1 - b1^t)

    i.e. ``lr m_hat' / n'``, with numerator and denominator doubled (exactly) so that the
    denominator is not ``n'`` itself to XLA. ``|s g|`` is optax's ``|g_clipped|``, bitwise.
    """

    def prepare(state_of: Callable[[type], Any], s: jax.Array, lr: jax.Array) -> LeafFn:
        t = _count(state_of(optax.ScaleByAdamState))
        ibc1 = 1.0 / bias_correction(b1, t)
        c1 = (1.0 - b1) * s
        a1, a2 = 2.0 * lr * ibc1 * b1, 2.0 * lr * ibc1 * c1

        def leaf(g, m, n):
            # |s g| and |(2 s) g|, not s |g|: a shared |g| would be a value with two readers.
            step = (a1 * m + a2 * g) / jnp.maximum((2.0 * b2) * n, jnp.abs((2.0 * s) * g) + 2.0 * eps)
            return (b1 * m + c1 * g, jnp.maximum(b2 * n, jnp.abs(s * g) + eps)), step

        return leaf

    return OnePassRule("adamax", ((optax.ScaleByAdamState, "mu"), (optax.ScaleByAdamState, "nu")), prepare)


def lion_rule(b1: float, b2: float) -> OnePassRule:
    """Lion's direction (Chen et al., 2023, https://arxiv.org/abs/2302.06675; ``optax.scale_by_lion``)::

        m' = b2 m + ((1 - b2) s) g
        step = lr sign(2 b1 m + (2 (1 - b1) s) g)

    (the sign's argument doubled, exactly, so that it is not ``m'`` to XLA when ``b1 = b2``).
    """

    def prepare(state_of: Callable[[type], Any], s: jax.Array, lr: jax.Array) -> LeafFn:
        c2, d1 = (1.0 - b2) * s, 2.0 * (1.0 - b1) * s

        def leaf(g, m):
            return (b2 * m + c2 * g,), lr * jnp.sign((2.0 * b1) * m + d1 * g)

        return leaf

    return OnePassRule("lion", ((optax.ScaleByLionState, "mu"),), prepare)


def adagrad_rule(eps: float, lr_decay: float) -> OnePassRule:
    """Adagrad's direction in torch's form (Duchi et al., 2011; ``transforms.adagrad.scale_by_adagrad``)::

        S' = S + (s^2 g) g
        step = (4 lr d s g) / (sqrt(16 S + (16 s^2 g) g) + 4 eps),   d = 1 / (1 + (t - 1) lr_decay)

    i.e. ``lr d s g / (sqrt(S') + eps)``, scaled by 4 (exactly) so the root's argument is not
    ``S'`` to XLA.
    """

    def prepare(state_of: Callable[[type], Any], s: jax.Array, lr: jax.Array) -> LeafFn:
        t = _count(state_of(ScaleByAdagradState))
        d = 1.0 / (1.0 + (t - 1.0) * lr_decay)
        c = s * s
        a, c16 = 4.0 * lr * d * s, 16.0 * c

        def leaf(g, acc):
            step = (a * g) / (jnp.sqrt(16.0 * acc + (c16 * g) * g) + 4.0 * eps)
            return (acc + (c * g) * g,), step

        return leaf

    return OnePassRule("adagrad", ((ScaleByAdagradState, "sum_of_squares"),), prepare)


def rms_rule(b2: float, eps: float, momentum: float = 0.0) -> OnePassRule:
    """torch's RMSprop: ``optax.scale_by_rms(b2, eps, eps_in_sqrt=False)`` [+ ``optax.trace(momentum)``]::

        n' = b2 n + ((1 - b2) s^2 g) g;   r(q) = (q s g) / (sqrt(q^2 b2 n + (q^2 (1 - b2) s^2 g) g) + q eps)
        momentum 0:   step = lr r(4)
        momentum mu:  b' = mu b + r(4);   step = (lr mu) b + lr r(16)

    ``r(q)`` is ``s g / (sqrt(n') + eps)`` for every power of two ``q``; each reader computes it
    with its own ``q`` so that no parameter-sized value is shared (Tieleman & Hinton, 2012).
    """

    def prepare(state_of: Callable[[type], Any], s: jax.Array, lr: jax.Array) -> LeafFn:
        c2 = (1.0 - b2) * s * s

        def r(q: float, g, n, scale=1.0):
            return ((q * scale) * s * g) / (jnp.sqrt((q * q * b2) * n + ((q * q) * c2 * g) * g) + q * eps)

        if momentum == 0.0:
            return lambda g, n: ((b2 * n + (c2 * g) * g,), r(4.0, g, n, lr))

        def leaf(g, n, b):
            step = (lr * momentum) * b + r(16.0, g, n, lr)
            return (b2 * n + (c2 * g) * g, momentum * b + r(4.0, g, n)), step

        return leaf

    moments: tuple[tuple[type, str], ...] = ((optax.ScaleByRmsState, "nu"),)
    if momentum:
        moments += ((optax.TraceState, "trace"),)
    return OnePassRule("rmsprop_plain", moments, prepare)


def rmsprop_momentum_rule(b1: float, b2: float, eps: float) -> OnePassRule:
    """Levanter's RMSprop (:func:`~marin_optim.transforms.rmsprop.scale_by_rmsprop_momentum`)::

        S' = b2 S + ((1 - b2) s^2 g) g
        r(q) = (q s g) / (sqrt(q^2 k1 S + (q^2 k2 g) g) + q eps),   k = (b2, (1 - b2) s^2) / (1 - b2^t)
        m' = b1 m + (1 - b1) r(4);   step = (lr b1 / (1 - b1^t)) m + (lr (1 - b1) / (1 - b1^t)) r(16)

    ``r(q)`` is ``s g / (sqrt(S' / (1 - b2^t)) + eps)`` for every power of two ``q``.
    """

    def prepare(state_of: Callable[[type], Any], s: jax.Array, lr: jax.Array) -> LeafFn:
        t = _count(state_of(ScaleByRmspropMomentumState))
        ibc1, ibc2 = 1.0 / bias_correction(b1, t), 1.0 / bias_correction(b2, t)
        c2 = (1.0 - b2) * s * s
        k1, k2 = ibc2 * b2, ibc2 * c2

        def r(q: float, coefficient, g, v):
            return (q * coefficient * s * g) / (jnp.sqrt((q * q) * k1 * v + ((q * q) * k2 * g) * g) + q * eps)

        def leaf(g, v, m):
            step = (lr * ibc1 * b1) * m + r(16.0, lr * ibc1 * (1.0 - b1), g, v)
            return (b2 * v + (c2 * g) * g, b1 * m + r(4.0, 1.0 - b1, g, v)), step

        return leaf

    return OnePassRule(
        "rmsprop",
        ((ScaleByRmspropMomentumState, "mean_square"), (ScaleByRmspropMomentumState, "momentum")),
        prepare,
    )


def sgd_rule(momentum: float, nesterov: bool) -> OnePassRule:
    """SGD with momentum (``optax.trace``; Polyak, 1964; Nesterov in Sutskever et al.'s form)::

    b' = mu b + s g
    step = (lr mu) b + (lr s) g                           (heavy ball: lr b')
    step = (lr mu^2) b + (lr (1 + mu) s) g                (nesterov: lr (s g + mu b'))
    """

    def prepare(state_of: Callable[[type], Any], s: jax.Array, lr: jax.Array) -> LeafFn:
        if nesterov:
            a1, a2 = lr * momentum * momentum, lr * (1.0 + momentum) * s
        else:
            a1, a2 = lr * momentum, lr * s

        def leaf(g, b):
            return (momentum * b + s * g,), a1 * b + a2 * g

        return leaf

    return OnePassRule("sgd", ((optax.TraceState, "trace"),), prepare)
