"""``OptimizerConfig``: the common fields, their validation, schedules and serialization.

The contract is Levanter's: a frozen dataclass registered by name on a draccus
``ChoiceRegistry`` (so YAML and the CLI choose it with ``type: name``), whose
``build(num_train_steps)`` returns an optax transformation. Our own optimizers only name their
update direction (:meth:`OptimizerConfig.direction`); the build template
(:mod:`marin_optim.config.template`) adds the clip, decay, schedules, guards and groups
(:mod:`marin_optim.config.groups`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import draccus
import jax
import optax
import yaml

from marin_optim.averaging import ModelAveragingConfig
from marin_optim.config import groups as _groups
from marin_optim.config.template import build_optimizer, resolve_update_path
from marin_optim.errors import ConfigError, decode_config, did_you_mean
from marin_optim.params import weight_decay_mask
from marin_optim.registry import NamedRegistry
from marin_optim.schedules import (
    ScheduleConfig,
    ScheduleContext,
    build_lr_schedule,
    parse_schedule,
    weight_decay_schedule,
)
from marin_optim.schedules.parse import check_weight_decay
from marin_optim.transforms.single_pass import OnePassRule
from marin_optim.validation import (
    Duration,
    check_choice,
    check_duration,
    check_num_train_steps,
    check_positive,
    check_range,
    check_types,
    is_finite_real,
    where_of,
)

# Fields that, by the usual naming convention, are exponential-moving-average rates in [0, 1).
_RATE_FIELDS = ("beta1", "beta2", "beta3", "b1", "b2", "b3", "momentum", "muon_beta2")
_NONNEGATIVE_FIELDS = ("epsilon", "eps", "weight_decay", "muon_epsilon")


@dataclass(frozen=True)
class OptimizerConfig(NamedRegistry, draccus.ChoiceRegistry):
    """Base class of every optimizer config: common fields, validation and the build template.

    A new optimizer names its fields and its update direction; ``build`` adds the global clip,
    weight decay, schedules, guards and parameter groups:

    >>> from dataclasses import dataclass
    >>> import jax.numpy as jnp, optax
    >>> from marin_optim import OptimizerConfig
    >>> @OptimizerConfig.register_subclass("doc_adamax")
    ... @dataclass(frozen=True)
    ... class DocAdamax(OptimizerConfig):
    ...     '''Adamax (an example).'''
    ...     beta2: float = 0.95
    ...     def direction(self) -> optax.GradientTransformation:
    ...         return optax.scale_by_adamax(b2=self.beta2)
    >>> cfg = OptimizerConfig.from_dict({"type": "doc_adamax", "learning_rate": 3e-3, "beta2": 0.99})
    >>> tx = cfg.build(num_train_steps=1000)
    >>> params = {"w": jnp.ones(4)}
    >>> updates, state = tx.update({"w": jnp.ones(4)}, tx.init(params), params)
    >>> DocAdamax(beta2=1.5)
    Traceback (most recent call last):
    ...
    marin_optim.errors.ConfigError: doc_adamax.beta2=1.5: must be in [0, 1)
    """

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
    cooldown: float | None = None
    """Levanter's deprecated cooldown, accepted as null only (a value says what replaces it)."""
    haps: list[int] | None = None
    """Levanter's deprecated name of ``cycles: [end, ...]``, accepted as null only."""
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
    """Global gradient-norm clip (over all parameters); None or 0 (Levanter's off) disables it."""
    skip_nonfinite: bool = True
    """Skip (and count) a step whose loss or gradient norm is NaN/inf instead of applying it."""
    max_nonfinite_steps: int = 8
    """Stop training after this many non-finite steps in a row (checked by the trainer); 0 = never."""
    skip_bad_steps: bool | int = False
    """Skip loss/grad-norm spikes: more than skip_sigma std above the rolling mean (OLMo-core's rule).
    Levanter's int form ``skip_bad_steps: N`` is ``true`` with a window of N steps."""
    skip_window: int = 128
    """Number of previous steps in the rolling window of skip_bad_steps."""
    skip_sigma: float = 6.0
    """Threshold of skip_bad_steps, in standard deviations."""
    skip_advances_schedule: bool = False
    """Whether a skipped step advances the LR schedule (False: it does not, as in Megatron)."""
    model_averaging: ModelAveragingConfig | None = None
    """A moving average of the parameters kept in the optimizer state, for evaluation
    (``eval_params``): {type: ema, beta: 0.999} or {type: ema_decay_sqrt, ...} (Levanter's)."""
    update_path: Literal["auto", "one_pass", "chain"] = "auto"
    """How elementwise optimizers with a one-pass rule update each parameter: auto = in one memory
    pass where XLA:CPU multi-output fusion is on (marin_optim.runtime), else the chain; one_pass =
    always (an error for options without a rule); chain = never. Same rule either way, equal up
    to float32 rounding; hyperparams(state)["one_pass"] says which ran."""
    group_overrides: list[dict[str, Any]] | None = None
    """Parameter groups: [{params: ["*embed*"], weight_decay: 0.0}, {params: ["lm_head*"],
    lr_multiplier: 0.5, name: head}]; fnmatch patterns over parameter paths, any field per group."""
    fixed_fields: list[str] = dataclasses.field(default_factory=list)
    """Fields never taken from a checkpoint on resume, even with optimizer_resume=checkpoint."""

    # -- registry (the rules: marin_optim.registry) --------------------------------------------

    REGISTRY_KIND: ClassVar[str] = "optimizer"

    @classmethod
    def default_choice_name(cls) -> str | None:
        return "adam"

    @classmethod
    def unknown_name_message(cls, name: Any) -> str:
        known = sorted(cls._choice_registry)
        return (
            f"optimizer type={name!r} is not registered{did_you_mean(str(name), known)}; "
            f"run `marin-optim list` to see all {len(known)}"
        )

    @staticmethod
    def load_plugins() -> None:
        """Imports every installed plugin module (entry-point group ``marin_optim.plugins``), so the
        optimizers they register become choosable."""
        from importlib.metadata import entry_points

        for ep in entry_points(group="marin_optim.plugins"):
            ep.load()

    def kind(self) -> str:
        """This config's registered name (``type:``), or its class name when it has none."""
        try:
            return type(self).get_choice_name(type(self))
        except ConfigError:
            return type(self).__name__

    def _where(self, name: str) -> str:
        return f"{self.kind()}.{name}"

    # -- validation -------------------------------------------------------------------------

    def __post_init__(self) -> None:
        if not isinstance(self.lr_schedule, ScheduleConfig):
            object.__setattr__(self, "lr_schedule", parse_schedule(self.lr_schedule))
        if isinstance(self.model_averaging, Mapping):  # Python's {type: ema, ...}, as in YAML
            object.__setattr__(
                self, "model_averaging", decode_config(ModelAveragingConfig, dict(self.model_averaging))
            )
        check_types(self)
        self.validate()

    def validate(self) -> None:
        """Checks every field; subclasses extend it (call ``super().validate()``).

        Runs at construction. Fields named like EMA rates (``beta1``, ``momentum``, ...) must be
        in ``[0, 1)`` and epsilons non-negative, in any subclass, including users' own.
        """
        check_positive(self, "learning_rate")
        check_weight_decay(self)
        check_range(self, "min_lr_ratio", 0.0, 1.0)
        check_range(self, "min_lr", 0.0, allow_none=True)
        check_range(self, "warmup_init_lr", 0.0)
        for name in ("min_lr", "warmup_init_lr"):  # the schedule's floor and start, below its peak
            value = getattr(self, name)
            if value is not None and value > self.learning_rate:
                raise ConfigError(
                    f"{where_of(self, name)}={value!r}: must be <= learning_rate={self.learning_rate!r}"
                )
        check_duration(self, "warmup")
        check_duration(self, "decay", allow_none=True)
        check_duration(self, "rewarmup")
        check_range(self, "max_grad_norm", 0.0, allow_none=True)
        _check_levanter_deprecated(self)
        check_choice(self, "schedule_units", ("steps", "tokens"))
        if self.schedule_units == "tokens":
            if self.tokens_per_step is None:
                raise ConfigError(f"{where_of(self, 'schedule_units')}='tokens': needs tokens_per_step")
        if self.tokens_per_step is not None:
            check_positive(self, "tokens_per_step")
        _check_cycles(self)
        check_choice(self, "update_path", ("auto", "one_pass", "chain"))
        check_range(self, "max_nonfinite_steps", 0)
        check_range(self, "skip_window", 2)
        _check_skip_window(self)
        check_positive(self, "skip_sigma")
        names = {f.name for f in dataclasses.fields(self)}
        for i, name in enumerate(self.fixed_fields):
            if name not in names:
                raise ConfigError(
                    f"{where_of(self, 'fixed_fields')}[{i}]={name!r}: not a field{did_you_mean(name, names)}"
                )
        self.parameter_groups()  # validates group_overrides
        if isinstance(self.weight_decay_modules, str):
            try:
                re.compile(self.weight_decay_modules)
            except re.error as e:
                raise ConfigError(
                    f"{where_of(self, 'weight_decay_modules')}={self.weight_decay_modules!r}: "
                    f"not a valid regular expression ({e})"
                ) from None
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _RATE_FIELDS and is_finite_real(value):
                check_range(self, f.name, 0.0, 1.0, hi_open=True)
            elif f.name in _NONNEGATIVE_FIELDS and value is not None:
                check_range(self, f.name, 0.0)

    @property
    def clip_norm(self) -> float | None:
        """The global clip's norm, or None for no global clip: ``max_grad_norm``, with Levanter's 0
        for none. Optimizers that spend ``max_grad_norm`` inside their direction, as Levanter's do
        (``mars`` on its corrected gradient, ``muon``/``scion`` on one branch), return None."""
        return self.max_grad_norm or None

    @property
    def spike_window(self) -> int:
        """The spike rule's window: ``skip_window``, or Levanter's ``skip_bad_steps: N``."""
        if isinstance(self.skip_bad_steps, bool) or not self.skip_bad_steps:
            return self.skip_window
        return self.skip_bad_steps

    # -- schedules --------------------------------------------------------------------------

    def lr_scheduler(self, num_train_steps: int, override_lr: float | None = None) -> optax.Schedule:
        """The learning-rate schedule over ``num_train_steps`` (Levanter's signature).

        ``override_lr`` reuses the same shape with another peak (e.g. Muon's separate Adam LR);
        every absolute learning rate of the schedule (``min_lr``, ``warmup_init_lr``, and the
        schedule's own: ``decay_min_lr``, ``lr_min``, ``end_lr``) is scaled by the same factor,
        so that the shape, not just the peak, is shared.
        """
        return build_lr_schedule(self.lr_schedule, self.schedule_context(num_train_steps, override_lr))

    def schedule_context(self, num_train_steps: int, override_lr: float | None = None) -> ScheduleContext:
        """What :meth:`lr_scheduler` hands the schedule: this config's schedule fields for one run."""
        check_num_train_steps(num_train_steps)
        peak = self.learning_rate if override_lr is None else override_lr
        if not is_finite_real(peak) or peak <= 0:
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
            lr_scale=factor,
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
        """Everything after the clip: direction, decayed weights, the step's clips, ``-learning_rate``.

        ``hp`` holds the injected values of :meth:`hyperparameter_schedules` for this step.
        """
        parts = [self.direction()]
        if self.uses_weight_decay:
            parts.append(optax.add_decayed_weights(hp["weight_decay"], self.build_weight_decay_mask()))
        parts += self.update_clipping()
        parts.append(optax.scale_by_learning_rate(hp["learning_rate"]))
        return optax.chain(*parts)

    def update_clipping(self) -> list[optax.GradientTransformation]:
        """Clips of the step ``u + wd p``, applied before ``-learning_rate`` (none here; Levanter's
        ``adam`` has two)."""
        return []

    def build(self, num_train_steps: int) -> optax.GradientTransformationExtraArgs:
        """The optimizer for a run of ``num_train_steps`` steps (validated before anything compiles):
        :func:`marin_optim.config.template.build_optimizer` around :meth:`update_rule`."""
        return build_optimizer(self, num_train_steps)

    def single_pass_rule(self) -> OnePassRule | None:
        """The direction as a one-pass rule (:mod:`marin_optim.transforms.single_pass`), or ``None``.

        When a config defines one (and :meth:`single_pass_unsupported` allows), :meth:`build`
        computes each leaf's moments and update in one loop on XLA:CPU with multi-output fusion
        on (:func:`~marin_optim.transforms.single_pass.single_pass_active`): the same rule and
        state as the chain, equal to it up to float32 rounding.
        """
        return None

    def update_path_plan(self) -> tuple[str, str]:
        """``("one_pass" | "chain", why)``: the path :meth:`build` takes in this process now."""
        return resolve_update_path(self)

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
        if self.model_averaging is not None:
            return "model_averaging"
        if cls.direction is not owner.direction or cls.update_rule is not OptimizerConfig.update_rule:
            return f"{cls.__name__} overrides direction() or update_rule()"
        return None

    # -- parameter groups (marin_optim.config.groups) --------------------------------------------

    def parameter_groups(self) -> list[_groups.ParameterGroup]:
        """The resolved ``group_overrides``: name, patterns and the group's own config."""
        return _groups.parameter_groups(self)

    def describe_params(self, params: Any) -> list[tuple[str, str, bool]]:
        """``(path, group, decayed)`` for every parameter leaf: what this config does to a model."""
        return _groups.describe_params(self, params)

    def peak_rates(self, params: Any) -> dict[str, tuple[float | str, float]]:
        """Per parameter path: the peak learning rate and weight decay this config (not a group
        of it) gives the parameter; matrix optimizers give each branch's own. What
        :meth:`param_table` shows."""
        from marin_optim.params import is_leaf, leaf_paths

        paths = jax.tree.leaves(leaf_paths(params), is_leaf=is_leaf)
        return dict.fromkeys(paths, (self.learning_rate, self.weight_decay))

    def param_table(self, params: Any) -> str:
        """A printable table of what this config does to each parameter of ``params``: path, shape,
        group, the group's peak learning rate and weight decay ("-" where the mask excludes it).
        ``params`` may be abstract (``jax.eval_shape`` of the model's init). Matrix-aware
        optimizers add which update rule each parameter gets."""
        return _groups.param_table(self, params)

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
        data = dict(data)
        chosen = OptimizerConfig.get_choice_class(data.get("type", OptimizerConfig.default_choice_name()))
        names = {f.name for f in dataclasses.fields(chosen)}
        for key in data:
            if key != "type" and key not in names:
                raise ConfigError(chosen.unknown_field_message(str(key)))
        return decode_config(OptimizerConfig, data)

    @classmethod
    def from_yaml(cls, text: str) -> OptimizerConfig:
        return cls.from_dict(yaml.safe_load(text) or {})


def merged(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base`` (config trees); mappings in both merged key by key, anything else replaced."""
    out = dict(base)
    for key, value in top.items():
        both = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = merged(out[key], value) if both else value
    return out


def apply_dotted(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` (a config tree, such as :meth:`OptimizerConfig.to_dict` writes) with ``overrides``
    set, as the command line sets them: a dotted key sets a field of a nested config
    (``lr_schedule.decay_fraction``), and a nested config given by name (``lr_schedule: cosine``)
    is replaced by the mapping."""
    return merged(data, draccus.utils.deflatten(dict(overrides), sep="."))


def _check_levanter_deprecated(cfg: OptimizerConfig) -> None:
    """Levanter's deprecated schedule fields load as null (every dumped Levanter block has them)."""
    if cfg.haps is not None:
        raise ConfigError(
            f"{where_of(cfg, 'haps')}={cfg.haps!r}: deprecated in Levanter; write cycles: {cfg.haps!r} "
            "(the same cycle end steps)"
        )
    if cfg.cooldown is not None:
        raise ConfigError(
            f"{where_of(cfg, 'cooldown')}={cfg.cooldown!r}: deprecated in Levanter; write the decay "
            "into the schedule (decay: steps or fraction, lr_schedule: linear, or lr_schedule: {type: wsd})"
        )


def _check_skip_window(cfg: OptimizerConfig) -> None:
    """Levanter's int form of ``skip_bad_steps`` is the window; it and ``skip_window`` must agree."""
    if isinstance(cfg.skip_bad_steps, bool):
        return
    check_range(cfg, "skip_bad_steps", 0)
    if cfg.skip_bad_steps:
        check_range(cfg, "skip_bad_steps", 2)
        default = next(f.default for f in dataclasses.fields(cfg) if f.name == "skip_window")
        if cfg.skip_window not in (default, cfg.skip_bad_steps):
            raise ConfigError(
                f"{where_of(cfg, 'skip_bad_steps')}={cfg.skip_bad_steps!r} and skip_window="
                f"{cfg.skip_window!r}: both set the window; keep one"
            )


def _check_cycles(cfg: OptimizerConfig) -> None:
    if cfg.cycles is not None and cfg.cycle_length is not None:
        raise ConfigError(
            f"{where_of(cfg, 'cycles')}={cfg.cycles!r} and cycle_length={cfg.cycle_length!r}: set at most one"
        )
    if isinstance(cfg.cycles, int) and not isinstance(cfg.cycles, bool):
        if cfg.cycles < 1:
            raise ConfigError(f"{where_of(cfg, 'cycles')}={cfg.cycles!r}: must be >= 1")
    elif isinstance(cfg.cycles, (list, tuple)):  # a tuple from Python, as a list from YAML
        if not cfg.cycles or any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in cfg.cycles):
            raise ConfigError(
                f"{where_of(cfg, 'cycles')}={cfg.cycles!r}: a list of cycle end steps must hold ints >= 1"
            )
        if any(b <= a for a, b in zip(cfg.cycles, cfg.cycles[1:], strict=False)):
            raise ConfigError(f"{where_of(cfg, 'cycles')}={cfg.cycles!r}: cycle end steps must increase")
    if isinstance(cfg.cycle_length, (list, tuple)):
        if not cfg.cycle_length or any(
            not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in cfg.cycle_length
        ):
            raise ConfigError(
                f"{where_of(cfg, 'cycle_length')}={cfg.cycle_length!r}: "
                "a list of cycle lengths must hold ints >= 1"
            )
    elif cfg.cycle_length is not None:
        check_duration(cfg, "cycle_length")
        if cfg.cycle_length == 0:
            raise ConfigError(f"{where_of(cfg, 'cycle_length')}=0: must be > 0")
