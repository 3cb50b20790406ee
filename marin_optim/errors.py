"""The one error type for bad input, and the "did you mean" helper every message uses."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """Bad user input: the message names the field, the value, and what is allowed.

    Raised at construction or at ``build`` time, always before anything is compiled. The CLI
    prints the message on one line and exits with status 2.
    """


def config_error_in(e: BaseException) -> ConfigError | None:
    """The first :class:`ConfigError` along ``e``'s cause/context chain (draccus wraps ours)."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:  # a chain can loop back on itself
        if isinstance(cause, ConfigError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def decode_config(cls: type[T], data: Any) -> T:
    """``draccus.decode(cls, data)`` where any failure is a one-line :class:`ConfigError`."""
    import draccus

    try:
        return draccus.decode(cls, data)
    except Exception as e:
        found = config_error_in(e)
        if found is not None:
            raise found from None
        raise ConfigError(" ".join(str(e).split())) from None


def yaml_value(where: str, text: str) -> Any:
    """``text`` read as YAML (a command-line value), or a one-line ``ConfigError`` naming ``where``."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(f"{where}: {text!r} is not a YAML value ({problem})") from None


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Returns ``" (did you mean 'x'?)"``-style text for the closest choices, or ``""``.

    Matching ignores case and underscores, so ``lr`` finds ``learning_rate`` only if it is close;
    common abbreviations are mapped explicitly below.

    >>> did_you_mean("lerning_rate", ["learning_rate", "weight_decay"])
    " (did you mean 'learning_rate'?)"
    >>> did_you_mean("lr", ["learning_rate"])
    " (did you mean 'learning_rate'?)"
    """
    return suggest(close_matches(name, choices, n))


def suggest(names: Iterable[str]) -> str:
    """``" (did you mean 'a' or 'b'?)"`` for ``names``, or ``""`` when there are none."""
    quoted = [f"'{c}'" for c in names]
    return f" (did you mean {' or '.join(quoted)}?)" if quoted else ""


def common_alias(name: str) -> str | None:
    """The field a common abbreviation from another framework means (``lr`` -> ``learning_rate``)."""
    return _ALIASES.get(name.lower())


def close_matches(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The up to ``n`` choices closest to ``name`` (what :func:`did_you_mean` names)."""
    choices = sorted(set(choices))
    alias = common_alias(name)
    if alias is not None and alias in choices:
        return [alias]

    def norm(s: str) -> str:
        return s.lower().replace("_", "").replace("-", "")

    by_norm: dict[str, str] = {}
    for c in choices:
        by_norm.setdefault(norm(c), c)
    return [by_norm[c] for c in difflib.get_close_matches(norm(name), list(by_norm), n=n, cutoff=0.6)]


# Abbreviations people type from other frameworks (torch, Megatron, OLMo-core).
_ALIASES = {
    "lr": "learning_rate",
    "wd": "weight_decay",
    "eps": "epsilon",
    "beta_1": "beta1",
    "beta_2": "beta2",
    "b1": "beta1",
    "b2": "beta2",
    "clip_grad": "max_grad_norm",
    "grad_clip": "max_grad_norm",
    "min_lr_rate": "min_lr_ratio",
    "warmup_steps": "warmup",
    "decay_steps": "decay",
}
