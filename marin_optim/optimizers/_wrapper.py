"""Configs that wrap another optimizer config (``sam``, ``cautious_wrapper``, ``noop``): the shared machinery.

A wrapper holds its base optimizer in a ``base`` field and builds *the base's* optimizer with
one change (a transform before it, around its direction, or after it). Everything else comes
from ``base``: its learning-rate and weight-decay schedules, decay mask, clip, guards and
parameter groups. The wrapper's own copies of those common fields must therefore stay at their
defaults; setting one (``sam.learning_rate``) is a ``ConfigError`` that points at
``base.learning_rate``, so there is a single source of truth.

Typing ``base`` as ``OptimizerConfig`` would make draccus's CLI parser expand every registered
optimizer inside every wrapper, recursively without end. ``base`` is therefore typed
:class:`NestedOptimizerConfig`, which draccus treats as one value: YAML nests it as a mapping
(``base: {type: adamw, learning_rate: 3e-3}``) and the CLI takes it as one YAML string
(``--optimizer.base '{type: adamw, learning_rate: 3e-3}'``). ``isinstance(x,
NestedOptimizerConfig)`` is true for any ``OptimizerConfig``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import draccus
import optax
import yaml

from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError
from marin_optim.registry import field_defaults


class _NestedMeta(type):
    def __instancecheck__(cls, value: Any) -> bool:
        return isinstance(value, OptimizerConfig)


class NestedOptimizerConfig(metaclass=_NestedMeta):
    """An optimizer config nested in another config (YAML mapping, or a YAML string on the CLI)."""


def _decode_nested(raw: Any, path: Any = ()) -> OptimizerConfig:
    if isinstance(raw, OptimizerConfig):
        return raw
    if isinstance(raw, str):
        try:
            raw = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"base={raw!r}: not a YAML mapping ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"base={raw!r}: expected a mapping such as {{type: adamw, learning_rate: 3e-3}}")
    return draccus.decode(OptimizerConfig, dict(raw))


def _encode_nested(obj: Any, declared_type: Any = None) -> Any:
    del declared_type
    return draccus.encode(obj, OptimizerConfig)


draccus.decode.register(NestedOptimizerConfig, _decode_nested)
draccus.encode.register(NestedOptimizerConfig, _encode_nested)

_COMMON_FIELDS = tuple(f.name for f in dataclasses.fields(OptimizerConfig))


def derive_config(
    base: OptimizerConfig, prefix: str, methods: Mapping[str, Callable[..., Any]]
) -> OptimizerConfig:
    """``base``'s field values in a fresh subclass of ``type(base)`` that overrides ``methods``.

    ``methods`` maps a method name to ``fn(parent_method, self, *args, **kwargs)``, where
    ``parent_method`` is the parent class's bound method (so ``fn`` can wrap what the base does).
    The subclass is built from ``base``'s init fields like ``dataclasses.replace`` builds a copy,
    so it is validated again (``base`` passed, so it passes). ``dataclasses.replace`` on it (as
    parameter groups do) keeps the subclass, hence the change; deriving from a derived config
    stacks the changes (SAM around cautious around Adam).
    """
    parent = type(base)
    sub = type(
        f"{prefix}{parent.__name__}", (parent,), {"__module__": parent.__module__, "__doc__": parent.__doc__}
    )
    for name, fn in methods.items():
        setattr(sub, name, _override(sub, name, fn))
    return sub(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.init})


def _override(owner: type, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``owner.name`` calling ``fn(parent_method, self, ...)`` with the method ``owner`` inherits."""

    def method(self: OptimizerConfig, *args: Any, **kwargs: Any) -> Any:
        return fn(getattr(super(owner, self), name), self, *args, **kwargs)

    method.__name__ = name
    method.__qualname__ = f"{owner.__qualname__}.{name}"
    return method


class WrapperConfig(OptimizerConfig):
    """Base class of the wrapper configs (not registered): ``base`` supplies everything common."""

    WRAPPER_NAME: ClassVar[str] = "wrapper"

    def wrapped_base(self) -> OptimizerConfig | None:
        """The base config, itself wrapped if it is a wrapper; None when there is no base."""
        base = getattr(self, "base", None)
        if base is None:
            return None
        if isinstance(base, WrapperConfig):
            return base.derived()
        return base

    def derived(self) -> OptimizerConfig:
        """The base config with this wrapper's change applied (what :meth:`build` builds)."""
        raise NotImplementedError

    def _delegate(self) -> OptimizerConfig | None:
        return self.derived() if getattr(self, "base", None) is not None else None

    def validate(self) -> None:
        super().validate()
        if getattr(self, "base", None) is None:
            return
        if not isinstance(self.base, OptimizerConfig):
            raise ConfigError(f"{self.WRAPPER_NAME}.base={self.base!r}: expected an optimizer config")
        for name in _COMMON_FIELDS:
            value, default = getattr(self, name), field_defaults(type(self))[name]
            if value != default:
                raise ConfigError(
                    f"{self.WRAPPER_NAME}.{name}={value!r}: set it on the base optimizer instead "
                    f"(base.{name}); {self.WRAPPER_NAME} takes its schedules, weight decay, clip and "
                    "guards from base"
                )

    # Everything a trainer or the CLI may ask of a config comes from the (derived) base.

    def _from_base(self, method: str, *args: Any) -> Any:
        """``method(*args)`` of the derived base, or this class's own where there is no base."""
        delegate = self._delegate()
        owner = super() if delegate is None else delegate
        return getattr(owner, method)(*args)

    def build(self, num_train_steps: int) -> optax.GradientTransformationExtraArgs:
        return self._from_base("build", num_train_steps)

    def lr_scheduler(self, num_train_steps: int, override_lr: float | None = None) -> optax.Schedule:
        return self._from_base("lr_scheduler", num_train_steps, override_lr)

    def weight_decay_scheduler(self, num_train_steps: int) -> Any:
        return self._from_base("weight_decay_scheduler", num_train_steps)

    def hyperparameter_schedules(self, num_train_steps: int) -> dict[str, Any]:
        return self._from_base("hyperparameter_schedules", num_train_steps)

    def build_weight_decay_mask(self) -> Callable[[Any], Any] | None:
        return self._from_base("build_weight_decay_mask")

    def update_rule(self, hp: Mapping[str, Any]) -> optax.GradientTransformation:
        return self._from_base("update_rule", hp)

    def parameter_groups(self) -> list[Any]:
        return self._from_base("parameter_groups")

    def peak_rates(self, params: Any) -> dict[str, tuple[float | str, float]]:
        return self._from_base("peak_rates", params)

    def describe_params(self, params: Any) -> list[tuple[str, str, bool]]:
        return self._from_base("describe_params", params)

    def param_table(self, params: Any) -> str:
        return self._from_base("param_table", params)

    @property
    def uses_weight_decay(self) -> bool:
        delegate = self._delegate()
        return super().uses_weight_decay if delegate is None else delegate.uses_weight_decay
