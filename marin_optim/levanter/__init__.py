"""marin_optim inside Levanter: every marin_optim optimizer in Levanter's own optimizer registry.

``import marin_optim.levanter`` (or the launcher, ``python -m marin_optim.levanter train_lm ...``)
makes every optimizer registered with :class:`marin_optim.OptimizerConfig` (built-in, ``optax_*``,
entry-point plugins, and classes users register later) choosable in Levanter's configs as
``type: marin_optim.<name>``:

- YAML: ``optimizer: {type: marin_optim.muon, learning_rate: 0.02}`` in a ``train_lm`` config;
- Levanter's CLI: ``--optimizer.type marin_optim.lion --optimizer.beta2 0.98``;
- Python: ``TrainLmConfig(optimizer=marin_optim.MuonConfig(...))``.

Levanter's own names are never replaced silently: ``type: muon`` stays Levanter's Muon unless
:func:`take_over` (the launcher's ``--take-over muon``) hands that name to ours, which keeps
Levanter's class reachable as ``levanter.muon``. A config Levanter saves (``config.yaml``) names
our optimizers ``marin_optim.<name>`` whatever was taken over, so it loads back to the same class.

Importing this module also installs two small fixes in Levanter's ``Trainer`` for optimizers
built by marin_optim (:mod:`marin_optim.levanter.trainer`): ``obj_fn`` works (SAM), and the
optimizer's statistics (``grad_norm``, the guard's ``skip/*`` counters) are logged and its
``max_nonfinite_steps`` is enforced, as in marin_optim's own trainer.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from collections.abc import Iterable
from typing import Any

try:
    import levanter.optim as _levanter_optim
except ImportError as _e:  # one line that says what to install; any other import failure is shown as is
    if _e.name not in ("levanter", "git"):
        raise
    raise ImportError(
        "marin_optim.levanter needs Levanter: pip install 'marin-optim[levanter]' "
        f"(missing module {_e.name!r})"
    ) from None

import draccus
from draccus.parsers.encoding import encode_choice

from marin_optim.averaging import ModelAveragingConfig
from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError, did_you_mean
from marin_optim.registry import field_defaults

logger = logging.getLogger(__name__)

LevanterOptimizerConfig: type = _levanter_optim.OptimizerConfig
"""Levanter's optimizer registry (``levanter.optim.OptimizerConfig``)."""
try:
    LevanterModelAveragingConfig: type = _levanter_optim.model_averaging.ModelAveragingConfig
    """Levanter's registry of ``trainer.model_averaging`` rules."""
except AttributeError:  # an older Levanter: one line (the launcher's exit 2), not a traceback
    raise ImportError(
        "marin_optim.levanter needs a Levanter with levanter.optim.model_averaging: "
        "pip install 'marin-optim[levanter]' (the version it pins)"
    ) from None

PREFIX = "marin_optim."
"""Our optimizers' names in Levanter's registry: ``marin_optim.<name>``."""
LEVANTER_PREFIX = "levanter."
"""Where a taken-over Levanter optimizer stays reachable: ``levanter.<name>``."""

_taken_over: dict[str, type] = {}  # Levanter name -> Levanter's own class, while ours holds the name


def _mirror(name: str, cls: type) -> None:
    """Keeps Levanter's registry in step with ours (called for every registration, now and later).

    The registry's dict is written directly: Levanter's ``register_subclass`` refuses to point a
    name at another class, which a re-imported user class or a take-over must do.
    """
    registry = LevanterOptimizerConfig._choice_registry
    registry[PREFIX + name] = cls
    if name in _taken_over:
        registry[name] = cls


def _mirror_averaging(name: str, cls: type) -> None:
    """Our model-averaging rules in Levanter's ``trainer.model_averaging`` registry, as
    ``marin_optim.<name>`` (Levanter's ``ema`` and ``ema_decay_sqrt`` stay Levanter's)."""
    LevanterModelAveragingConfig._choice_registry[PREFIX + name] = cls


_LEVANTER_BASES = {
    OptimizerConfig: LevanterOptimizerConfig,
    ModelAveragingConfig: LevanterModelAveragingConfig,
}
"""Our registries and Levanter's of the same kind."""


def _declares_levanter(declared_type: Any, levanter_base: type = LevanterOptimizerConfig) -> bool:
    """Whether a field declared as ``declared_type`` holds one of Levanter's ``levanter_base`` configs."""
    candidates = typing.get_args(declared_type) or (declared_type,)
    return any(isinstance(t, type) and issubclass(t, levanter_base) for t in candidates)


def _encode(config: Any, declared_type: Any = None) -> dict[str, Any]:
    """draccus's encoding of a marin_optim config, named for the registry that will decode it.

    draccus names a choice by the object's own registry, so without this a ``config.yaml`` Levanter
    saves would say ``type: muon`` for our Muon and load back as Levanter's. Under a field declared
    as Levanter's ``OptimizerConfig`` (``TrainLmConfig.optimizer``, Marin's ``optimizer_config``)
    or ``ModelAveragingConfig`` (``trainer.model_averaging``) the name is ``marin_optim.<name>``;
    under our own fields it stays ``<name>``.
    """
    ours = next(base for base in _LEVANTER_BASES if isinstance(config, base))
    encoded = encode_choice(config, ours)
    if _declares_levanter(declared_type, _LEVANTER_BASES[ours]):
        encoded["type"] = PREFIX + encoded["type"]
    return encoded


def take_over(names: str | Iterable[str]) -> None:
    """Makes Levanter's ``type: NAME`` (and a block without ``type`` for ``adam``) decode to our
    optimizer of the same name. An explicit opt-in: Levanter's class stays reachable as
    ``levanter.NAME``, and each field Levanter's config has that ours lacks (or defaults
    differently) is logged, since a Levanter config using it would then fail or change meaning.
    """
    for name in [names] if isinstance(names, str) else list(names):
        ours = OptimizerConfig.registered().get(name)
        registry = LevanterOptimizerConfig._choice_registry
        if ours is None:
            raise ConfigError(
                f"take_over {name!r}: marin_optim has no optimizer of that name"
                f"{did_you_mean(name, OptimizerConfig.registered())}"
            )
        if name in _taken_over:
            continue
        theirs = registry.get(name)
        if theirs is None:
            levanter_names = [n for n, c in registry.items() if not _is_ours(c)]
            raise ConfigError(
                f"take_over {name!r}: Levanter has no optimizer of that name (it has "
                f"{', '.join(sorted(levanter_names))}); ours is already {PREFIX}{name}"
            )
        only_levanter, _, defaults = field_differences(ours, theirs)
        if only_levanter or defaults:
            logger.warning(
                "marin_optim's %r takes over Levanter's: %s",
                name,
                "; ".join(
                    ([f"fields only Levanter's has: {', '.join(only_levanter)}"] if only_levanter else [])
                    + ([f"other defaults: {', '.join(defaults)}"] if defaults else [])
                ),
            )
        _taken_over[name] = theirs
        registry[LEVANTER_PREFIX + name] = theirs
        registry[name] = ours


def give_back(names: str | Iterable[str]) -> None:
    """Undoes :func:`take_over`: ``type: NAME`` is Levanter's again."""
    registry = LevanterOptimizerConfig._choice_registry
    for name in [names] if isinstance(names, str) else list(names):
        theirs = _taken_over.pop(name, None)
        if theirs is not None:
            registry[name] = theirs
            registry.pop(LEVANTER_PREFIX + name, None)


def taken_over() -> tuple[str, ...]:
    """The Levanter names our optimizers hold now."""
    return tuple(sorted(_taken_over))


def _is_ours(cls: type) -> bool:
    return isinstance(cls, type) and issubclass(cls, OptimizerConfig)


def field_differences(ours: type, theirs: type) -> tuple[list[str], list[str], list[str]]:
    """``(fields only Levanter's class has, fields only ours has, 'name: ours vs theirs' defaults)``.

    Schedules compare by meaning (Levanter's ``"cosine"`` is our ``CosineSchedule()``).
    """
    a, b = field_defaults(ours), field_defaults(theirs)
    only_theirs = sorted(set(b) - set(a))
    only_ours = sorted(set(a) - set(b))
    defaults = []
    for name in sorted(set(a) & set(b)):
        if _comparable(name, a[name]) != _comparable(name, b[name]):
            defaults.append(f"{name}: {a[name]!r} vs {b[name]!r}")
    return only_theirs, only_ours, defaults


def _comparable(name: str, value: Any) -> Any:
    if name != "lr_schedule":
        return value
    from marin_optim.schedules import parse_schedule

    if isinstance(value, draccus.ChoiceRegistry) and dataclasses.is_dataclass(value):
        value = {"type": type(value).get_choice_name(type(value)), **dataclasses.asdict(value)}
    try:
        return parse_schedule(value)
    except ConfigError:
        return value


def implementations() -> list[tuple[str, str, str]]:
    """Every name in Levanter's optimizer registry: ``(name, 'marin_optim' | 'levanter', class)``."""
    rows = []
    for name, cls in sorted(LevanterOptimizerConfig._choice_registry.items()):
        origin = "marin_optim" if _is_ours(cls) else "levanter"
        rows.append((name, origin, f"{cls.__module__}.{cls.__qualname__}"))
    return rows


_registered = False


def register() -> None:
    """Mirrors our registry into Levanter's and installs the encoder and the Trainer fixes; idempotent.

    Runs on import. Entry-point plugins (group ``marin_optim.plugins``) are loaded first, so their
    optimizers are choosable in Levanter too; classes registered later follow automatically.
    """
    global _registered
    if _registered:
        return
    from marin_optim.levanter.trainer import install_trainer_fixes

    OptimizerConfig.load_plugins()
    OptimizerConfig.on_register(_mirror)
    ModelAveragingConfig.on_register(_mirror_averaging)
    for ours in _LEVANTER_BASES:
        draccus.encode.register(ours, _encode, include_subclasses=True)
    install_trainer_fixes()
    _registered = True


register()

__all__ = [
    "LEVANTER_PREFIX",
    "PREFIX",
    "LevanterOptimizerConfig",
    "field_differences",
    "give_back",
    "implementations",
    "register",
    "take_over",
    "taken_over",
]
