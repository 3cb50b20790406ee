"""``OptimizerConfig``: the common fields, their validation, the registry and the build template.

The contract is Levanter's: a frozen dataclass registered by name on a draccus
``ChoiceRegistry`` (so YAML and the CLI choose it with ``type: name``), whose
``build(num_train_steps)`` returns an optax transformation. Our own optimizers only name their
update direction; the base class assembles

    inject_hyperparams(
        chain(clip_by_global_norm, direction, add_decayed_weights(wd, mask), scale_by_learning_rate(lr))
    )(learning_rate=lr_schedule, weight_decay=wd_schedule)

so the injected state stays outermost (trainers read ``opt_state.hyperparams``) and every
optimizer gets the same clip, decay mask and schedules.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import inspect
import logging
import math
import types
import typing
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import draccus
import jax
import jax.numpy as jnp
import optax
import yaml

from marin_optim import _checks
from marin_optim.errors import ConfigError, decode_config, did_you_mean
from marin_optim.params import weight_decay_mask
from marin_optim.schedules import (
    ScheduleConfig,
    ScheduleContext,
    build_lr_schedule,
    parse_schedule,
    weight_decay_schedule,
)
from marin_optim.state import GROUP_SEPARATOR
from marin_optim.transforms.clipping import clip_by_global_norm
from marin_optim.transforms.guards import find_guard_state, skip_step_guard, tree_select
from marin_optim.transforms.single_pass import OnePassRule, single_pass

logger = logging.getLogger(__name__)

Duration = int | float
"""An ``int`` is a count of steps (or tokens, with ``schedule_units: tokens``); a ``float`` in
``[0, 1]`` is a fraction of the run (or of the cycle)."""

# Fields that, by the usual naming convention, are exponential-moving-average rates in [0, 1).
_RATE_FIELDS = ("beta1", "beta2", "beta3", "b1", "b2", "b3", "momentum", "muon_beta2")
_NONNEGATIVE_FIELDS = ("epsilon", "eps", "weight_decay", "muon_epsilon")


def check_range(
    cfg: Any,
    name: str,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    allow_none: bool = False,
) -> None:
    """Raises ``ConfigError`` unless ``lo <= cfg.name <= hi`` (strict where ``*_open``)."""
    _checks.check_real(
        _where(cfg, name), getattr(cfg, name), lo, hi, lo_open=lo_open, hi_open=hi_open, allow_none=allow_none
    )


def check_positive(cfg: Any, name: str, *, allow_none: bool = False) -> None:
    """Raises ``ConfigError`` unless ``cfg.name > 0``."""
    check_range(cfg, name, 0.0, None, lo_open=True, allow_none=allow_none)


def check_int(cfg: Any, name: str, lo: int = 1, *, allow_none: bool = False) -> None:
    """Raises ``ConfigError`` unless ``cfg.name`` is an int ``>= lo``."""
    _checks.check_int(_where(cfg, name), getattr(cfg, name), lo, allow_none=allow_none)


def check_choice(cfg: Any, name: str, choices: Iterable[Any]) -> None:
    """Raises ``ConfigError`` unless ``cfg.name`` is one of ``choices`` (with a suggestion)."""
    _checks.check_choice(_where(cfg, name), getattr(cfg, name), choices)


def check_duration(cfg: Any, name: str, *, allow_none: bool = False) -> None:
    """An ``int >= 0`` (steps) or a ``float`` in ``[0, 1]`` (a fraction)."""
    _checks.check_duration(_where(cfg, name), getattr(cfg, name), allow_none=allow_none)


check_num_train_steps = _checks.check_num_train_steps
_is_number = _checks.is_finite_real


def _where(cfg: Any, name: str) -> str:
    try:
        kind = type(cfg).get_choice_name(type(cfg))
    except Exception:
        kind = type(cfg).__name__
    return f"{kind}.{name}"


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True)
class OptimizerConfig(draccus.ChoiceRegistry):
    """Base class of every optimizer config: common fields, validation and the build template."""

    learning_rate: float = 6e-4
    """Peak learning rate."""
    weight_decay: float = 0.1
    """Decoupled weight decay, multiplied by the learning rate (AdamW-style)."""
    min_lr_ratio: float = 0.1
    """The schedule's floor as a fraction of the peak learning rate."""
    min_lr: float | None = None
    """The schedule's floor as an absolute learning rate; when set it replaces min_lr_ratio."""
    warmup: Duration = 0.01
    """Warmup length: int = steps, float in [0, 1] = fraction of the run (of the first cycle)."""
    warmup_init_lr: float = 0.0
    """Learning rate at the first step of warmup."""
    decay: Duration | None = None
    """Decay length (int steps or fraction); None = the rest of each cycle after warmup."""
    rewarmup: Duration = 0.0
    """Warmup length of every cycle after the first (from the previous cycle's final LR)."""
    cycles: int | list[int] | None = None
    """Number of equal cycles, or a list of cycle end steps."""
    cycle_length: int | float | list[int] | None = None
    """Cycle length (int steps or fraction), or a list of cycle lengths."""
    lr_schedule: ScheduleConfig | str = dataclasses.field(default_factory=lambda: parse_schedule("cosine"))
    """Schedule shape: a name (`cosine`) or a config (`{type: wsd, decay_style: exponential}`)."""
    schedule_units: Literal["steps", "tokens"] = "steps"
    """Unit of integer durations (warmup, decay, cycles...): steps, or tokens (needs tokens_per_step)."""
    tokens_per_step: int | None = None
    """Tokens per optimizer step, to convert token durations into steps."""
    weight_decay_end: float | None = None
    """Weight decay at the end of the run; None keeps weight_decay constant."""
    weight_decay_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """How weight decay moves from weight_decay to weight_decay_end (Megatron's styles)."""
    weight_decay_modules: list[str] | str | None = None
    """Parameters to decay: a regex (re.match on the path) or a list of path substrings."""
    default_weight_decay_mask: bool | None = None
    """Levanter's default mask (no decay for norms, embeddings, biases): None = only when
    weight_decay_modules is unset, True = always, False = never."""
    max_grad_norm: float | None = 1.0
    """Global gradient-norm clip (over all parameters); None disables it."""
    skip_nonfinite: bool = True
    """Skip (and count) a step whose loss or gradient norm is NaN/inf instead of applying it."""
    max_nonfinite_steps: int = 8
    """Stop training after this many non-finite steps in a row (checked by the trainer); 0 = never."""
    skip_bad_steps: bool = False
    """Skip loss/grad-norm spikes: more than skip_sigma std above the rolling mean (OLMo-core's rule)."""
    skip_window: int = 128
    """Number of previous steps in the rolling window of skip_bad_steps."""
    skip_sigma: float = 6.0
    """Threshold of skip_bad_steps, in standard deviations."""
    skip_advances_schedule: bool = False
    """Whether a skipped step advances the LR schedule (False: it does not, as in Megatron)."""
    group_overrides: list[dict[str, Any]] | None = None
    """Parameter groups: [{params: ["*embed*"], weight_decay: 0.0}, {params: ["lm_head*"],
    lr_multiplier: 0.5, name: head}]; fnmatch patterns over parameter paths, any field per group."""
    fixed_fields: list[str] = dataclasses.field(default_factory=list)
    """Fields never taken from a checkpoint on resume, even with optimizer_resume=checkpoint."""

    # -- registry ---------------------------------------------------------------------------

    _shadowed: ClassVar[dict[type, str]] = {}
    _listeners: ClassVar[list[Callable[[str, type], None]]] = []

    @classmethod
    def default_choice_name(cls) -> str | None:
        return "adam"

    @classmethod
    def register_subclass(cls, name: str, choice_type: type | None = None):  # type: ignore[override]
        """Registers ``choice_type`` as ``type: name`` (usable as a decorator).

        Registering the same class again is a no-op, and so is re-registering a class with the
        same module and qualified name (a re-import or a re-run script). A class defined outside
        marin_optim may take over a name that marin_optim itself registered (a user's own
        ``adamax`` wins over ours, with a log line). Any other clash raises ``ConfigError``
        naming both classes.
        """
        if choice_type is None:
            return functools.partial(cls.register_subclass, name)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"register_subclass name={name!r}: expected a non-empty string")
        existing = cls._choice_registry.get(name)
        if existing is not None and existing is not choice_type:
            same_definition = _qualname(existing) == _qualname(choice_type)
            overrides_builtin = existing.__module__.startswith("marin_optim.") and not (
                choice_type.__module__.startswith("marin_optim.")
            )
            if overrides_builtin:
                logger.info("%s replaces %s as '%s'", _qualname(choice_type), _qualname(existing), name)
                cls._shadowed[existing] = name
            elif not same_definition:
                raise ConfigError(
                    f"cannot register {_qualname(choice_type)} as '{name}': "
                    f"'{name}' is already registered to {_qualname(existing)}"
                )
        if existing is choice_type:
            return choice_type
        cls._choice_registry[name] = choice_type
        for listener in cls._listeners:
            listener(name, choice_type)
        return choice_type

    @classmethod
    def on_register(cls, listener: Callable[[str, type], None]) -> None:
        """Calls ``listener(name, config_class)`` for every registered optimizer: the ones registered
        now, and each later registration (a user's class, a plugin, a take-over of one of our names).

        This is how other registries mirror ours (``marin_optim.levanter`` keeps Levanter's in step).
        """
        cls._listeners.append(listener)
        for name, choice in list(cls._choice_registry.items()):
            listener(name, choice)

    @classmethod
    def get_choice_name(cls, subcls: type) -> str:
        for name, choice in cls._choice_registry.items():
            if choice is subcls:
                return name
        if subcls in cls._shadowed:
            return cls._shadowed[subcls]
        raise ConfigError(f"{_qualname(subcls)} is not a registered optimizer config")

    @classmethod
    def get_choice_class(cls, name: str) -> Any:
        try:
            return cls._choice_registry[name]
        except KeyError:
            known = sorted(cls._choice_registry)
            raise ConfigError(
                f"optimizer type={name!r} is not registered{did_you_mean(name, known)}; "
                f"run `marin-optim list` to see all {len(known)}"
            ) from None

    @classmethod
    def registered(cls) -> dict[str, type]:
        """Every registered name and its class, sorted by name."""
        return dict(sorted(cls._choice_registry.items()))

    @staticmethod
    def load_plugins() -> None:
        """Imports every installed plugin module (entry-point group ``marin_optim.plugins``), so the
        optimizers they register become choosable."""
        from importlib.metadata import entry_points

        for ep in entry_points(group="marin_optim.plugins"):
            ep.load()

    # -- validation -------------------------------------------------------------------------

    def __post_init__(self) -> None:
        if not isinstance(self.lr_schedule, ScheduleConfig):
            object.__setattr__(self, "lr_schedule", parse_schedule(self.lr_schedule))
        _check_types(self)
        self.validate()

    def validate(self) -> None:
        """Checks every field; subclasses extend it (call ``super().validate()``).

        Runs at construction. Fields named like EMA rates (``beta1``, ``momentum``, ...) must be
        in ``[0, 1)`` and epsilons non-negative, in any subclass, including users' own.
        """
        check_positive(self, "learning_rate")
        check_range(self, "weight_decay", 0.0)
        check_range(self, "weight_decay_end", 0.0, allow_none=True)
        check_range(self, "min_lr_ratio", 0.0, 1.0)
        check_range(self, "min_lr", 0.0, allow_none=True)
        if self.min_lr is not None and self.min_lr > self.learning_rate:
            raise ConfigError(
                f"{_where(self, 'min_lr')}={self.min_lr!r}: must be <= learning_rate={self.learning_rate!r}"
            )
        check_range(self, "warmup_init_lr", 0.0)
        check_duration(self, "warmup")
        check_duration(self, "decay", allow_none=True)
        check_duration(self, "rewarmup")
        check_positive(self, "max_grad_norm", allow_none=True)
        check_choice(self, "schedule_units", ("steps", "tokens"))
        check_choice(self, "weight_decay_schedule", ("constant", "linear", "cosine"))
        if self.weight_decay_schedule != "constant" and self.weight_decay_end is None:
            raise ConfigError(
                f"{_where(self, 'weight_decay_schedule')}={self.weight_decay_schedule!r}: "
                "needs weight_decay_end (the value to reach at the end of the run)"
            )
        if self.schedule_units == "tokens":
            if self.tokens_per_step is None:
                raise ConfigError(f"{_where(self, 'schedule_units')}='tokens': needs tokens_per_step")
        if self.tokens_per_step is not None:
            check_positive(self, "tokens_per_step")
        _check_cycles(self)
        check_range(self, "max_nonfinite_steps", 0)
        check_range(self, "skip_window", 2)
        check_positive(self, "skip_sigma")
        names = {f.name for f in dataclasses.fields(self)}
        for i, name in enumerate(self.fixed_fields):
            if name not in names:
                raise ConfigError(
                    f"{_where(self, 'fixed_fields')}[{i}]={name!r}: not a field{did_you_mean(name, names)}"
                )
        self.parameter_groups()  # validates group_overrides
        if isinstance(self.weight_decay_modules, str):
            import re

            try:
                re.compile(self.weight_decay_modules)
            except re.error as e:
                raise ConfigError(
                    f"{_where(self, 'weight_decay_modules')}={self.weight_decay_modules!r}: "
                    f"not a valid regular expression ({e})"
                ) from None
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _RATE_FIELDS and _is_number(value):
                check_range(self, f.name, 0.0, 1.0, hi_open=True)
            elif f.name in _NONNEGATIVE_FIELDS and value is not None:
                check_range(self, f.name, 0.0)

    # -- schedules --------------------------------------------------------------------------

    def lr_scheduler(self, num_train_steps: int, override_lr: float | None = None) -> optax.Schedule:
        """The learning-rate schedule over ``num_train_steps`` (Levanter's signature).

        ``override_lr`` reuses the same shape with another peak (e.g. Muon's separate Adam LR);
        an absolute ``min_lr`` and ``warmup_init_lr`` are scaled by the same factor so that the
        shape, not just the peak, is shared.
        """
        return build_lr_schedule(self.lr_schedule, self.schedule_context(num_train_steps, override_lr))

    def schedule_context(self, num_train_steps: int, override_lr: float | None = None) -> ScheduleContext:
        """What :meth:`lr_scheduler` hands the schedule: this config's schedule fields for one run."""
        check_num_train_steps(num_train_steps)
        peak = self.learning_rate if override_lr is None else override_lr
        if not _is_number(peak) or peak <= 0:
            raise ConfigError(f"override_lr={override_lr!r}: must be a number > 0")
        factor = peak / self.learning_rate
        return ScheduleContext(
            peak_lr=peak,
            num_train_steps=num_train_steps,
            min_lr_ratio=self.min_lr_ratio,
            min_lr=None if self.min_lr is None else self.min_lr * factor,
            warmup=self.warmup,
            warmup_init_lr=self.warmup_init_lr * factor,
            decay=self.decay,
            rewarmup=self.rewarmup,
            cycles=self.cycles,
            cycle_length=self.cycle_length,
            units=self.schedule_units,
            tokens_per_step=self.tokens_per_step,
        )

    def weight_decay_scheduler(self, num_train_steps: int) -> optax.Schedule | float:
        """Weight decay over the run: constant, or ``weight_decay -> weight_decay_end`` (Megatron)."""
        check_num_train_steps(num_train_steps)
        return weight_decay_schedule(
            self.weight_decay, self.weight_decay_end, self.weight_decay_schedule, num_train_steps
        )

    def build_weight_decay_mask(self) -> Callable[[Any], Any] | None:
        """``params -> bool tree`` of the leaves to decay, or ``None`` for all (Levanter's rule)."""
        return weight_decay_mask(self.weight_decay_modules, self.default_weight_decay_mask)

    @property
    def uses_weight_decay(self) -> bool:
        return self.weight_decay > 0 or bool(self.weight_decay_end)

    # -- the build template -----------------------------------------------------------------

    def hyperparameter_schedules(self, num_train_steps: int) -> dict[str, Any]:
        """Values injected with ``optax.inject_hyperparams``: name -> schedule or constant.

        Everything here is visible in ``hyperparams(opt_state)``. Multi-branch optimizers add
        their own (``adam_learning_rate``, ...) after calling ``super()``.
        """
        return {
            "learning_rate": self.lr_scheduler(num_train_steps),
            "weight_decay": self.weight_decay_scheduler(num_train_steps),
        }

    def direction(self) -> optax.GradientTransformation:
        """The un-scaled update direction (e.g. ``optax.scale_by_adam(...)``): override this."""
        raise NotImplementedError(
            f"{type(self).__name__} must override direction() (or update_rule()/build())"
        )

    def update_rule(self, hp: Mapping[str, Any]) -> optax.GradientTransformation:
        """Everything after the clip: direction, decayed weights, then ``-learning_rate``.

        ``hp`` holds the injected values of :meth:`hyperparameter_schedules` for this step.
        """
        parts = [self.direction()]
        if self.uses_weight_decay:
            parts.append(optax.add_decayed_weights(hp["weight_decay"], self.build_weight_decay_mask()))
        parts.append(optax.scale_by_learning_rate(hp["learning_rate"]))
        return optax.chain(*parts)

    def build(self, num_train_steps: int) -> optax.GradientTransformationExtraArgs:
        """The optimizer for a run of ``num_train_steps`` steps (validated before anything compiles).

        ``inject_hyperparams(chain(clip, update_rule))``, with parameter groups as a
        ``multi_transform`` after the (global) clip and the step guard wrapped around both, so
        the injected state stays outermost and a skipped step leaves everything unchanged.
        """
        check_num_train_steps(num_train_steps)
        groups = self.parameter_groups()
        schedules = self.hyperparameter_schedules(num_train_steps)
        for group in groups:
            for name, value in group.config.hyperparameter_schedules(num_train_steps).items():
                schedules[f"{group.name}{GROUP_SEPARATOR}{name}"] = value
        guarded = self.skip_nonfinite or self.skip_bad_steps

        def make(**hp: Any) -> optax.GradientTransformation:
            body = self.update_rule(_group_hp(hp, None))
            if groups:
                branches = {DEFAULT_GROUP: body}
                for group in groups:
                    branches[group.name] = group.config.update_rule(_group_hp(hp, group.name))
                body = optax.multi_transform(branches, functools.partial(_label_groups, groups))
            parts = []
            if self.max_grad_norm is not None:
                parts.append(clip_by_global_norm(self.max_grad_norm))
            parts.append(body)
            inner = optax.chain(*parts)
            if guarded:
                inner = skip_step_guard(
                    inner,
                    skip_nonfinite=self.skip_nonfinite,
                    skip_spikes=self.skip_bad_steps,
                    window=self.skip_window,
                    sigma=self.skip_sigma,
                )
            return inner

        tx = inject_hyperparams(make, schedules)
        if guarded and not self.skip_advances_schedule:
            tx = _hold_schedule_on_skip(tx)
        tx = _own_state_buffers(tx)
        rule = self.single_pass_rule()
        if rule is not None and self.single_pass_unsupported() is None:
            tx = single_pass(
                tx,
                rule,
                max_grad_norm=self.max_grad_norm,
                weight_decay_mask=(self.build_weight_decay_mask() or True)
                if self.uses_weight_decay
                else False,
            )
        _BUILT_BY[tx.update] = self
        return tx

    def single_pass_rule(self) -> OnePassRule | None:
        """The direction as a one-pass rule (:mod:`marin_optim.transforms.single_pass`), or ``None``.

        When a config defines one (and :meth:`single_pass_unsupported` allows), :meth:`build`
        computes each leaf's moments and update in one loop on XLA:CPU with multi-output fusion
        on (:func:`~marin_optim.transforms.single_pass.single_pass_active`): the same rule and
        state as the chain, equal to it up to float32 rounding.
        """
        return None

    def single_pass_unsupported(self) -> str | None:
        """Why :meth:`build` keeps the plain chain even where the one-pass form runs, or ``None``.

        Subclasses add their own reasons (options their rule does not cover) before calling this.
        """
        cls = type(self)
        owner = next(c for c in cls.__mro__ if "single_pass_rule" in vars(c))
        if owner is OptimizerConfig or self.single_pass_rule() is None:
            return f"{cls.__name__} has no one-pass rule for these options"
        if self.group_overrides:
            return "group_overrides"
        if cls.direction is not owner.direction or cls.update_rule is not OptimizerConfig.update_rule:
            return f"{cls.__name__} overrides direction() or update_rule()"
        return None

    # -- parameter groups -------------------------------------------------------------------

    def parameter_groups(self) -> list[ParameterGroup]:
        """The resolved ``group_overrides``: name, patterns and the group's own config."""
        if not self.group_overrides:
            return []
        if not isinstance(self.group_overrides, list):
            raise ConfigError(f"{_where(self, 'group_overrides')}: expected a list of {{params: [...], ...}}")
        fields = {f.name for f in dataclasses.fields(self)}
        groups: list[ParameterGroup] = []
        for i, override in enumerate(self.group_overrides):
            where = f"{_where(self, 'group_overrides')}[{i}]"
            if not isinstance(override, Mapping):
                raise ConfigError(f"{where}={override!r}: expected a mapping with a 'params' list")
            opts = dict(override)
            patterns = opts.pop("params", None)
            if isinstance(patterns, str):
                patterns = [patterns]
            if not patterns or not all(isinstance(p, str) and p for p in patterns):
                raise ConfigError(
                    f"{where}.params={patterns!r}: expected a non-empty list of fnmatch patterns"
                )
            name = opts.pop("name", f"group{i}")
            if not isinstance(name, str) or not name.isidentifier() or GROUP_SEPARATOR in name:
                raise ConfigError(f"{where}.name={name!r}: must be an identifier without '__'")
            if name == DEFAULT_GROUP or name in {g.name for g in groups}:
                raise ConfigError(f"{where}.name={name!r}: already used")
            multiplier = opts.pop("lr_multiplier", 1.0)
            if not _is_number(multiplier) or multiplier <= 0:
                raise ConfigError(f"{where}.lr_multiplier={multiplier!r}: must be a number > 0")
            for key in opts:
                if key in _GLOBAL_FIELDS:
                    raise ConfigError(f"{where}.{key}: is global (one clip, one guard), not per group")
                if key not in fields:
                    allowed = sorted((fields - _GLOBAL_FIELDS) | {"params", "name", "lr_multiplier"})
                    raise ConfigError(f"{where}.{key}: unknown field{did_you_mean(key, allowed)}")
            if "learning_rate" in opts and not _is_number(opts["learning_rate"]):
                raise ConfigError(f"{where}.learning_rate={opts['learning_rate']!r}: expected a number")
            opts["learning_rate"] = opts.get("learning_rate", self.learning_rate) * multiplier
            if self.min_lr is not None and "min_lr" not in opts:
                opts["min_lr"] = self.min_lr * opts["learning_rate"] / self.learning_rate
            try:
                config = dataclasses.replace(self, group_overrides=None, **opts)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
            groups.append(ParameterGroup(name, tuple(patterns), config))
        return groups

    def describe_params(self, params: Any) -> list[tuple[str, str, bool]]:
        """``(path, group, decayed)`` for every parameter leaf: what this config does to a model."""
        from marin_optim.params import is_leaf, leaf_paths

        groups = self.parameter_groups()
        labels = (
            _label_groups(groups, params)
            if groups
            else jax.tree.map(lambda _: DEFAULT_GROUP, params, is_leaf=is_leaf)
        )
        configs = {DEFAULT_GROUP: self, **{g.name: g.config for g in groups}}
        rows = []
        paths = jax.tree.leaves(leaf_paths(params), is_leaf=is_leaf)
        label_list = jax.tree.leaves(labels, is_leaf=is_leaf)
        decay_by_group = {}
        for name, cfg in configs.items():
            mask_fn = cfg.build_weight_decay_mask()
            mask = (
                mask_fn(params)
                if mask_fn is not None
                else jax.tree.map(lambda _: True, params, is_leaf=is_leaf)
            )
            decay_by_group[name] = jax.tree.leaves(mask, is_leaf=is_leaf)
        values = jax.tree.leaves(params, is_leaf=is_leaf)
        for i, (path, label) in enumerate(zip(paths, label_list, strict=True)):
            if values[i] is None:  # an absent submodule (e.g. a bias the model does not use)
                continue
            decayed = bool(decay_by_group[label][i]) and configs[label].uses_weight_decay
            rows.append((path, label, decayed))
        return rows

    def param_table(self, params: Any) -> str:
        """A printable table of what this config does to each parameter of ``params``.

        One row per parameter: path, shape, group, the group's peak learning rate and the
        weight decay applied to it ("-" where the mask excludes it). ``params`` may be
        abstract (``jax.eval_shape`` of the model's init). Matrix-aware optimizers add which
        update rule each parameter gets.
        """
        from marin_optim.params import is_leaf

        configs = {DEFAULT_GROUP: self, **{g.name: g.config for g in self.parameter_groups()}}
        # NamedArray.shape is a dict of axis sizes; the array underneath has the plain shape.
        leaves = jax.tree.leaves(params, is_leaf=is_leaf)
        shapes = [tuple(getattr(x, "array", x).shape) for x in leaves if x is not None]
        described = list(zip(self.describe_params(params), shapes, strict=True))
        rows = [("path", "shape", "group", "learning_rate", "weight_decay")]
        for (path, group, decayed), x in described:
            cfg = configs[group]
            decay = f"{cfg.weight_decay:g}" if decayed else "-"
            shape = "x".join(map(str, x)) or "()"
            rows.append((path, shape, group, f"{cfg.learning_rate:g}", decay))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, [*widths, 0], strict=True)).rstrip() for r in rows]
        decayed_values = sum(math.prod(x) for (_, _, decayed), x in described if decayed)
        total = sum(math.prod(x) for x in shapes)
        lines.append(
            f"{len(shapes)} parameters ({total:,} values), weight decay on {decayed_values:,} values"
            + (f"; groups: {', '.join(configs)}" if len(configs) > 1 else "")
        )
        return "\n".join(lines)

    # -- serialization ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain data with ``type: name`` first, as YAML/JSON configs spell it."""
        encoded = draccus.encode(self, OptimizerConfig)
        return {"type": encoded.pop("type"), **encoded}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OptimizerConfig:
        """The inverse of :meth:`to_dict` (``type`` picks the class; bad input is a ConfigError)."""
        return decode_config(OptimizerConfig, dict(data))

    @classmethod
    def from_yaml(cls, text: str) -> OptimizerConfig:
        return cls.from_dict(yaml.safe_load(text) or {})

    # -- introspection ----------------------------------------------------------------------

    @classmethod
    def describe(cls) -> str:
        """The first line of the class docstring."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


_BUILT_BY: weakref.WeakKeyDictionary[Callable[..., Any], OptimizerConfig] = weakref.WeakKeyDictionary()


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


def _check_cycles(cfg: OptimizerConfig) -> None:
    if cfg.cycles is not None and cfg.cycle_length is not None:
        raise ConfigError(
            f"{_where(cfg, 'cycles')}={cfg.cycles!r} and cycle_length={cfg.cycle_length!r}: set at most one"
        )
    if isinstance(cfg.cycles, int) and not isinstance(cfg.cycles, bool):
        if cfg.cycles < 1:
            raise ConfigError(f"{_where(cfg, 'cycles')}={cfg.cycles!r}: must be >= 1")
    elif isinstance(cfg.cycles, list):
        if not cfg.cycles or any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in cfg.cycles):
            raise ConfigError(
                f"{_where(cfg, 'cycles')}={cfg.cycles!r}: a list of cycle end steps must hold ints >= 1"
            )
        if any(b <= a for a, b in zip(cfg.cycles, cfg.cycles[1:], strict=False)):
            raise ConfigError(f"{_where(cfg, 'cycles')}={cfg.cycles!r}: cycle end steps must increase")
    if isinstance(cfg.cycle_length, list):
        if not cfg.cycle_length or any(
            not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in cfg.cycle_length
        ):
            raise ConfigError(
                f"{_where(cfg, 'cycle_length')}={cfg.cycle_length!r}: "
                "a list of cycle lengths must hold ints >= 1"
            )
    elif cfg.cycle_length is not None:
        check_duration(cfg, "cycle_length")
        if cfg.cycle_length == 0:
            raise ConfigError(f"{_where(cfg, 'cycle_length')}=0: must be > 0")


def _check_types(cfg: Any) -> None:
    """Catches wrongly typed values from Python callers (draccus already types YAML/CLI input)."""
    try:
        hints = typing.get_type_hints(type(cfg))
    except Exception:  # unresolvable annotations in a user's module: skip the type check
        return
    for f in dataclasses.fields(cfg):
        if f.name not in hints:
            continue
        value = getattr(cfg, f.name)
        if not _matches(value, hints[f.name]):
            raise ConfigError(f"{_where(cfg, f.name)}={value!r}: expected {_type_name(hints[f.name])}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{_where(cfg, f.name)}={value!r}: must be finite")


def _matches(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any or isinstance(tp, typing.TypeVar):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if origin is Literal:
        return value in typing.get_args(tp)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
        return not args or all(_matches(v, args[0]) for v in value)
    if origin in (dict, Mapping) or tp is dict:
        return isinstance(value, Mapping)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


DEFAULT_GROUP = "default"
_GLOBAL_FIELDS = frozenset(
    {
        "max_grad_norm",
        "skip_nonfinite",
        "max_nonfinite_steps",
        "skip_bad_steps",
        "skip_window",
        "skip_sigma",
        "skip_advances_schedule",
        "group_overrides",
        "fixed_fields",
        "schedule_units",
        "tokens_per_step",
    }
)


@dataclass(frozen=True)
class ParameterGroup:
    """One entry of ``group_overrides``, resolved: its name, patterns and its own config."""

    name: str
    patterns: tuple[str, ...]
    config: OptimizerConfig


def _group_hp(hp: Mapping[str, Any], group: str | None) -> dict[str, Any]:
    """The injected values of one group (``group__name`` -> ``name``), or of the default group."""
    if group is None:
        return {k: v for k, v in hp.items() if GROUP_SEPARATOR not in k}
    prefix = group + GROUP_SEPARATOR
    return {k[len(prefix) :]: v for k, v in hp.items() if k.startswith(prefix)}


def _label_groups(groups: list[ParameterGroup], params: Any) -> Any:
    """Each leaf's group name; a pattern that matches nothing or a leaf in two groups is an error."""
    from marin_optim.params import is_leaf, leaf_class_paths, leaf_paths

    hits: dict[str, int] = {}

    def label(path: str, class_path: str) -> str:
        matched = [g.name for g in groups if any(_match(p, path, class_path) for p in g.patterns)]
        for g in groups:
            for p in g.patterns:
                if _match(p, path, class_path):
                    hits[p] = hits.get(p, 0) + 1
        if len(matched) > 1:
            raise ConfigError(f"group_overrides: parameter {path!r} is matched by several groups: {matched}")
        return matched[0] if matched else DEFAULT_GROUP

    labels = jax.tree.map(label, leaf_paths(params), leaf_class_paths(params), is_leaf=is_leaf)
    unmatched = [p for g in groups for p in g.patterns if not hits.get(p)]
    if unmatched:
        example = jax.tree.leaves(leaf_paths(params), is_leaf=is_leaf)[:3]
        raise ConfigError(
            f"group_overrides: pattern(s) {unmatched} match no parameter (paths look like {example})"
        )
    return labels


def _match(pattern: str, path: str, class_path: str) -> bool:
    return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(class_path, pattern)


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


# -- resuming from a checkpoint ----------------------------------------------------------------

ResumeMode = Literal["strict", "override", "checkpoint"]


def config_differences(a: OptimizerConfig, b: OptimizerConfig) -> dict[str, tuple[Any, Any]]:
    """``{field: (a's value, b's value)}`` for every field that differs (same class required)."""
    return {
        f.name: (getattr(a, f.name), getattr(b, f.name))
        for f in dataclasses.fields(a)
        if getattr(a, f.name) != getattr(b, f.name)
    }


def resolve_resume(
    saved: OptimizerConfig,
    current: OptimizerConfig,
    mode: ResumeMode = "strict",
    reset_optimizer_state: bool = False,
) -> tuple[OptimizerConfig, bool]:
    """Which optimizer config a resumed run uses, and whether its state must start fresh.

    Megatron's rules: ``override`` takes the current config's values; ``checkpoint`` takes the
    checkpoint's, except ``current.fixed_fields`` (OLMo-core), which are never taken from a
    checkpoint; ``strict`` (the default) requires them to be equal and otherwise fails naming
    every differing field. The step count always comes from the checkpoint (the trainer's job).
    A different optimizer type fails unless ``reset_optimizer_state``, which starts the new
    optimizer's state from scratch (the returned flag).
    """
    if mode not in ("strict", "override", "checkpoint"):
        raise ConfigError(f"optimizer_resume={mode!r}: must be one of 'strict', 'override', 'checkpoint'")
    if type(saved) is not type(current):
        saved_name = _where(saved, "").rstrip(".")
        current_name = _where(current, "").rstrip(".")
        if reset_optimizer_state:
            return current, True
        raise ConfigError(
            f"optimizer.type={current_name!r} but the checkpoint was trained with {saved_name!r}: "
            "pass reset_optimizer_state=true to start the new optimizer's state from scratch"
        )
    if mode == "override" or reset_optimizer_state:
        return current, reset_optimizer_state
    if mode == "checkpoint":
        keep = {name: getattr(current, name) for name in current.fixed_fields}
        return dataclasses.replace(saved, **keep), False
    diffs = config_differences(saved, current)
    if diffs:
        listed = ", ".join(f"{k} (checkpoint {a!r}, config {b!r})" for k, (a, b) in sorted(diffs.items()))
        raise ConfigError(
            f"optimizer config differs from the checkpoint's in {listed}; pass optimizer_resume=override "
            "to use the config's values or optimizer_resume=checkpoint to use the checkpoint's"
        )
    return current, False
