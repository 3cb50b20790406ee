"""The build template every optimizer shares: one global clip, the guards, the groups, the schedules.

:func:`build_optimizer` assembles

    inject_hyperparams(
        guard(chain(clip_by_global_norm, update_rule or multi_transform(groups)))
    )(learning_rate=lr_schedule, weight_decay=wd_schedule, ...)

so the injected state stays outermost (Levanter-style trainers read ``opt_state.hyperparams``),
a skipped step leaves every state unchanged and (by default) the schedule still, and every
optimizer gets the same clip, decay mask and schedules. :func:`built_by` maps a built
transformation back to its config.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import optax

import marin_optim.transforms.single_pass as single_pass_module
from marin_optim.config.groups import DEFAULT_GROUP, group_hp, label_groups, parameter_groups
from marin_optim.errors import ConfigError
from marin_optim.state import GROUP_SEPARATOR
from marin_optim.transforms._tree import tree_select
from marin_optim.transforms.clipping import clip_by_global_norm
from marin_optim.transforms.guards import find_guard_state, skip_step_guard
from marin_optim.transforms.single_pass import ONE_PASS, single_pass
from marin_optim.validation import check_num_train_steps, where_of

if TYPE_CHECKING:
    from marin_optim.config.base import OptimizerConfig

_BUILT_BY: weakref.WeakKeyDictionary[Callable[..., Any], OptimizerConfig] = weakref.WeakKeyDictionary()


def build_optimizer(cfg: OptimizerConfig, num_train_steps: int) -> optax.GradientTransformationExtraArgs:
    """The optimizer for a run of ``num_train_steps`` steps (validated before anything compiles).

    ``inject_hyperparams(chain(clip, update_rule))``, with parameter groups as a
    ``multi_transform`` after the (global) clip and the step guard wrapped around both, so
    the injected state stays outermost and a skipped step leaves everything unchanged.
    """
    check_num_train_steps(num_train_steps)
    groups = parameter_groups(cfg)
    schedules = cfg.hyperparameter_schedules(num_train_steps)
    for group in groups:
        for name, value in group.config.hyperparameter_schedules(num_train_steps).items():
            schedules[f"{group.name}{GROUP_SEPARATOR}{name}"] = value
    guarded = bool(cfg.skip_nonfinite or cfg.skip_bad_steps)

    def make(**hp: Any) -> optax.GradientTransformation:
        body = cfg.update_rule(group_hp(hp, None))
        if groups:
            branches = {DEFAULT_GROUP: body}
            for group in groups:
                branches[group.name] = group.config.update_rule(group_hp(hp, group.name))
            body = optax.multi_transform(branches, functools.partial(label_groups, groups))
        parts = []
        if cfg.clip_norm is not None:
            parts.append(clip_by_global_norm(cfg.clip_norm))
        parts.append(body)
        if cfg.model_averaging is not None:  # last: it averages the parameters after this update
            parts.append(cfg.model_averaging.transform())
        inner = optax.chain(*parts)
        if guarded:
            inner = skip_step_guard(
                inner,
                skip_nonfinite=cfg.skip_nonfinite,
                skip_spikes=bool(cfg.skip_bad_steps),
                window=cfg.spike_window,
                sigma=cfg.skip_sigma,
            )
        return inner

    rule = cfg.single_pass_rule()
    path, _ = resolve_update_path(cfg)
    if rule is not None:  # which path ran, for every optimizer that has one
        schedules[ONE_PASS] = 1.0 if path == "one_pass" else 0.0
    tx = inject_hyperparams(make, schedules)
    if guarded and not cfg.skip_advances_schedule:
        tx = _hold_schedule_on_skip(tx)
    tx = _own_state_buffers(tx)
    if rule is not None:  # on the chain too, so that hyperparams(state)["one_pass"] is each step's
        decay_mask = (cfg.build_weight_decay_mask() or True) if cfg.uses_weight_decay else False
        enabled = path == "one_pass"
        tx = single_pass(tx, rule, max_grad_norm=cfg.clip_norm, weight_decay_mask=decay_mask, enabled=enabled)
    _BUILT_BY[tx.update] = cfg
    return tx


def resolve_update_path(cfg: OptimizerConfig) -> tuple[str, str]:
    """``("one_pass" | "chain", why)`` for ``cfg`` in this process (``OptimizerConfig.update_path``).

    ``auto`` takes the one-pass form where the config has a rule its options allow and the
    process runs XLA:CPU with multi-output fusion on; ``one_pass`` without a usable rule is a
    ``ConfigError`` naming the reason.
    """
    if cfg.update_path == "chain":
        return "chain", "update_path: chain"
    unsupported = cfg.single_pass_unsupported()
    if unsupported is not None:
        if cfg.update_path == "one_pass":
            raise ConfigError(f"{where_of(cfg, 'update_path')}='one_pass': {unsupported}")
        return "chain", unsupported
    rule = cfg.single_pass_rule()
    assert rule is not None  # single_pass_unsupported() says so otherwise
    if cfg.update_path == "one_pass":
        return "one_pass", f"{rule.name} rule (update_path: one_pass)"
    if not single_pass_module.single_pass_active():
        return "chain", "XLA:CPU multi-output fusion is off"
    return "one_pass", f"{rule.name} rule, XLA:CPU multi-output fusion on"


def built_by(tx: Any) -> OptimizerConfig | None:
    """The config whose :meth:`OptimizerConfig.build` returned ``tx``, or ``None``.

    For trainers that are handed only the transformation (Levanter's ``Trainer``) and want the
    config's trainer-side settings (``max_nonfinite_steps``). A transformation wrapped again
    (``optax.MultiSteps``, ...) is not the one ``build`` returned, so it is not recognised.
    """
    update = getattr(tx, "update", None)
    try:
        return _BUILT_BY.get(update) if update is not None else None
    except TypeError:  # not weakly referenceable: not ours
        return None


def inject_hyperparams(
    factory: Callable[..., optax.GradientTransformation], schedules: Mapping[str, Any]
) -> optax.GradientTransformationExtraArgs:
    """``optax.inject_hyperparams`` for a ``factory(**hp)`` taking exactly the names in ``schedules``.

    inject_hyperparams finds hyperparameters by binding the factory's signature, so a
    ``**kwargs`` factory is given one keyword parameter per injected name.
    """

    def wrapped(**hp: Any) -> optax.GradientTransformation:
        return factory(**hp)

    wrapped.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY) for name in schedules]
    )
    return optax.inject_hyperparams(wrapped)(**schedules)


def _own_state_buffers(
    tx: optax.GradientTransformationExtraArgs,
) -> optax.GradientTransformationExtraArgs:
    """Gives every state leaf its own buffer at ``init``.

    Optimizers that remember the initial parameters (Prodigy, DoG, COCOB, MADGRAD, ...) put
    the very parameter arrays into their state, and ``zeros_like`` may hand two leaves one
    buffer; a trainer that donates both params and state would then donate one buffer twice,
    which XLA refuses. A leaf met a second time (or that is a parameter) is copied.
    """

    def init_fn(params):
        state = tx.init(params)
        seen = {id(x) for x in jax.tree.leaves(params)}

        def own(x):
            if isinstance(x, jax.Array) and id(x) in seen:
                return jnp.copy(x)
            seen.add(id(x))
            return x

        return jax.tree.map(own, state)

    return optax.GradientTransformationExtraArgs(init_fn, tx.update)


def _hold_schedule_on_skip(
    tx: optax.GradientTransformationExtraArgs,
) -> optax.GradientTransformationExtraArgs:
    """Keeps the injected step count (hence the LR schedule) still on steps the guard skipped."""

    def update_fn(updates, state, params=None, **extra_args):
        new_updates, new_state = tx.update(updates, state, params, **extra_args)
        skipped = find_guard_state(new_state.inner_state).last_skipped
        held = {"count": jnp.where(skipped, state.count, new_state.count)}
        if hasattr(new_state, "hyperparams_states"):  # optax >= 0.2.5: schedules keep their own count
            held["hyperparams_states"] = tree_select(
                skipped, state.hyperparams_states, new_state.hyperparams_states
            )
        return new_updates, new_state._replace(**held)

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)
