"""The one named-registry mechanism: optimizers and schedules are chosen by ``type: name``.

:class:`NamedRegistry` is mixed into a draccus ``ChoiceRegistry`` base
(``class OptimizerConfig(NamedRegistry, draccus.ChoiceRegistry)``; draccus recognises a choice
type only as a *direct* subclass of ``ChoiceRegistry``, so this is a plain mixin). The rules:

- registering the same class again is a no-op, and so is a class with the same module and
  qualified name (a re-imported module, a script run twice);
- a class defined outside marin_optim may take over a name marin_optim registered (a user's own
  ``adamax``), with a log line; the replaced class keeps answering to the name when encoded;
- any other clash raises :class:`~marin_optim.errors.ConfigError` naming both classes;
- an unknown name raises ``ConfigError`` with the closest names;
- listeners (:meth:`NamedRegistry.on_register`) see every registration, present and future, so
  another registry can mirror this one (``marin_optim.levanter`` keeps Levanter's in step).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import logging
import textwrap
from collections.abc import Callable
from typing import Any, ClassVar

from marin_optim.errors import ConfigError, common_alias, did_you_mean

logger = logging.getLogger(__name__)


def qualname(cls: type) -> str:
    """``module.QualifiedName`` of a class."""
    return f"{cls.__module__}.{cls.__qualname__}"


def field_defaults(cls: type) -> dict[str, Any]:
    """``{field: default}`` of a dataclass (factories called; ``dataclasses.MISSING`` where required)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = dataclasses.MISSING
    return out


def first_line(doc: str | None) -> str:
    """The first line of a docstring (what ``marin-optim list`` shows), or ``""``."""
    doc = (doc or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


def _builtin(cls: type) -> bool:
    return cls.__module__.startswith("marin_optim.")


class NamedRegistry:
    """Registry behaviour shared by :class:`~marin_optim.OptimizerConfig` and
    :class:`~marin_optim.schedules.ScheduleConfig` (see the module docstring)."""

    REGISTRY_KIND: ClassVar[str] = "choice"
    """What the registry holds, for messages ("optimizer", "schedule")."""

    _choice_registry: ClassVar[dict[str, Any]]
    _shadowed: ClassVar[dict[type, str]]
    _listeners: ClassVar[list[Callable[[str, type], None]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)  # draccus gives the base its own _choice_registry
        if "_choice_registry" in cls.__dict__:
            cls._shadowed = {}
            cls._listeners = []

    @classmethod
    def register_subclass(cls, name: str, choice_type: type | None = None):  # type: ignore[override]
        """Registers ``choice_type`` as ``type: name`` (usable as a decorator), by the module's rules."""
        if choice_type is None:
            return functools.partial(cls.register_subclass, name)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"register_subclass name={name!r}: expected a non-empty string")
        existing = cls._choice_registry.get(name)
        if existing is choice_type:
            return choice_type
        if existing is not None:
            if _builtin(existing) and not _builtin(choice_type):
                logger.info("%s replaces %s as '%s'", qualname(choice_type), qualname(existing), name)
                cls._shadowed[existing] = name
            elif qualname(existing) != qualname(choice_type):
                raise ConfigError(
                    f"cannot register {qualname(choice_type)} as {cls.REGISTRY_KIND} '{name}': "
                    f"'{name}' is already registered to {qualname(existing)}"
                )
        cls._choice_registry[name] = choice_type
        for listener in cls._listeners:
            listener(name, choice_type)
        return choice_type

    @classmethod
    def on_register(cls, listener: Callable[[str, type], None]) -> None:
        """Calls ``listener(name, class)`` for every registered class: the ones registered now, and
        each later registration (a user's class, a plugin, a take-over of one of our names)."""
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
        raise ConfigError(f"{qualname(subcls)} is not a registered {cls.REGISTRY_KIND}")

    @classmethod
    def get_choice_class(cls, name: str) -> Any:
        try:
            return cls._choice_registry[name]
        except (KeyError, TypeError):
            raise ConfigError(cls.unknown_name_message(name)) from None

    @classmethod
    def unknown_name_message(cls, name: Any) -> str:
        """What an unknown ``type:`` says; the bases word it for their users."""
        known = sorted(cls._choice_registry)
        return f"{cls.REGISTRY_KIND} type={name!r} is not registered{did_you_mean(str(name), known)}"

    @classmethod
    def unknown_field_message(cls, key: str) -> str:
        """What a field this class lacks says: the registered classes that have a field of that
        name (``"backend_steps: unknown field of adam; muon, normuon, scion have it (type:
        muon)"``, the ``optax_*`` ones last), else close names among its own fields. Fields a
        class renamed (its ``RENAMED_FIELDS = {old: new}``) and common abbreviations of its own
        fields (``lr``) come first."""
        try:
            name = cls.get_choice_name(cls)
        except ConfigError:
            name = cls.__name__
        owners = sorted(
            (n for n, c in cls._choice_registry.items() if key in {f.name for f in dataclasses.fields(c)}),
            key=lambda n: (n.startswith("optax_"), n),
        )
        own = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
        renamed = getattr(cls, "RENAMED_FIELDS", {}).get(key)
        if renamed is not None:
            return f"{key}: unknown field of {name}: it is now {renamed}"
        if common_alias(key) in own:  # `lr` means learning_rate here, whoever else has an `lr`
            return f"{key}: unknown field of {name}{did_you_mean(key, own)}"
        if owners:
            shown = ", ".join(owners[:3]) + (", ..." if len(owners) > 3 else "")
            verb = "has" if len(owners) == 1 else "have"
            return f"{key}: unknown field of {name}; {shown} {verb} it (type: {owners[0]})"
        return f"{key}: unknown field of {name}{did_you_mean(key, own)}"

    @classmethod
    def registered(cls) -> dict[str, type]:
        """Every registered name and its class, sorted by name."""
        return dict(sorted(cls._choice_registry.items()))

    @classmethod
    def describe(cls) -> str:
        """The first line of the class docstring."""
        return first_line(cls.__doc__)

    @classmethod
    def field_doc(cls, name: str) -> str:
        """The docstring written under field ``name`` (in this class or the nearest base that has
        one), on one line; generated classes may carry it in the field's ``metadata["doc"]``."""
        for klass in cls.__mro__:
            doc = _field_docstrings(klass).get(name)
            if doc:
                return doc
        for f in dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ():
            if f.name == name and f.metadata.get("doc"):
                return " ".join(str(f.metadata["doc"]).split())
        return ""


@functools.cache
def _field_docstrings(klass: type) -> dict[str, str]:
    """``{field: docstring}`` of the string literals that follow annotated fields in ``klass``'s source."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
    except (OSError, TypeError, SyntaxError):  # built-in, generated or source-less classes
        return {}
    body = next((node.body for node in tree.body if isinstance(node, ast.ClassDef)), [])
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        is_doc = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and is_doc:
            if isinstance(after.value.value, str):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs
