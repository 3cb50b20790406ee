"""The one argv and config parser of ``marin-optim`` (and the Levanter launcher), and its error contract.

Every verb takes draccus-style input: ``--config_path file.yaml`` plus dotted overrides
(``--optimizer.type lion --optimizer.beta2 0.98``). Unknown fields and ``type`` names fail before
draccus runs, with close matches; every failure is one line (:func:`run_guarded`).
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import draccus
from draccus import cfgparsing
from draccus import utils as draccus_utils

from marin_optim.config import OptimizerConfig
from marin_optim.config.base import apply_dotted
from marin_optim.errors import ConfigError, config_error_in, did_you_mean
from marin_optim.registry import NamedRegistry, field_defaults

T = TypeVar("T")
PROG = "marin-optim"


# -- parsing configs with one-line errors ----------------------------------------------------


def split_options(argv: Sequence[str], what: str = "options look like --name value") -> list[tuple[str, str]]:
    """``--a.b value`` / ``--a.b=value`` -> ``[("a.b", "value"), ...]``: the one argv parser.

    A value may start with ``-`` (``--x -1``) but not with ``--`` followed by a name (that is the
    next option, so the previous one is missing its value). ``what`` ends the message for an
    argument that is not an option.
    """
    pairs: list[tuple[str, str]] = []
    i = 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}: {what}")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv) or (argv[i + 1].startswith("--") and len(argv[i + 1]) > 2):
                raise ConfigError(f"--{key}: missing a value")
            value = argv[i + 1]
            i += 1
        i += 1
        pairs.append((key, value))
    return pairs


def _split_argv(argv: Sequence[str]) -> tuple[str | None, dict[str, str]]:
    """:func:`split_options` -> (config_path, {"a.b": "value"})."""
    config_path: str | None = None
    pairs: dict[str, str] = {}
    for key, value in split_options(argv):
        if key in ("config_path", "config-path"):
            config_path = value
        else:
            pairs[key] = value
    return config_path, pairs


def load_yaml(path: str) -> dict[str, Any]:
    """The config file as draccus reads it (its loader: ``!include other.yaml`` is read, relative to
    the file), or a one-line ``ConfigError``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config_path={path!r}: no such file")
    try:
        with p.open(encoding="utf-8") as f:
            data = cfgparsing.load_config(f, file=path)
    except draccus_utils.ParsingError as e:
        cause = e.__cause__ or e
        if isinstance(cause, OSError):  # an !include names a file that cannot be read
            raise ConfigError(f"config_path={path!r}: !include {cause.filename}: {cause.strerror}") from None
        first = str(cause).splitlines()[0] if str(cause) else "invalid YAML"
        raise ConfigError(f"config_path={path!r}: not valid YAML ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config_path={path!r}: expected a mapping at the top level, got {type(data).__name__}"
        )
    return data


def _choice_base(tp: Any) -> type | None:
    """The draccus ChoiceRegistry class in an annotation (``X``, ``X | None``), if any."""
    for t in (tp, *typing.get_args(tp)):
        if isinstance(t, type) and issubclass(t, draccus.ChoiceRegistry):
            return t
    return None


def _dataclass_in(tp: Any) -> type | None:
    for t in (tp, *typing.get_args(tp)):
        if isinstance(t, type) and dataclasses.is_dataclass(t):
            return t
    return None


def check_keys(cls: type, yaml_tree: Any, overrides: dict[str, str], prefix: str = "") -> None:
    """Rejects unknown fields and unknown ``type`` names, with suggestions, before draccus runs.

    ``overrides`` is the whole ``{dotted.key: value}`` map; a choice field given a bare name on
    the command line (``--optimizer.lr_schedule cosine``) is rewritten in place to its ``.type``.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    yaml_tree = yaml_tree if isinstance(yaml_tree, dict) else {}
    keys = set(yaml_tree) | {k[len(prefix) :].split(".")[0] for k in overrides if k.startswith(prefix)}
    for key in sorted(keys):
        if key == "type" and prefix:
            continue
        if key not in names:
            if isinstance(cls, type) and issubclass(cls, NamedRegistry):
                raise ConfigError(f"{prefix}{cls.unknown_field_message(key)}")
            owner = _registered_name(cls)
            where = f" of {owner}" if owner else ""
            raise ConfigError(f"{prefix}{key}: unknown field{where}{did_you_mean(key, names)}")
        tp = hints[key]
        full = f"{prefix}{key}"
        sub_yaml = yaml_tree.get(key)
        base = _choice_base(tp)
        if base is not None and full in overrides and not overrides[full].lstrip().startswith("{"):
            overrides[f"{full}.type"] = overrides.pop(full)
        nested = any(k.startswith(full + ".") for k in overrides)
        if base is not None and (nested or isinstance(sub_yaml, (dict, str))):
            if isinstance(sub_yaml, str):
                chosen = sub_yaml
            else:
                chosen = (sub_yaml or {}).get("type")
            chosen = overrides.get(f"{full}.type", chosen)
            if chosen is None:
                default = field_defaults(cls).get(key)
                sub_cls = type(default) if dataclasses.is_dataclass(default) else None
                if sub_cls is None and base.default_choice_name() is not None:
                    sub_cls = base.get_known_choices()[base.default_choice_name()]
            else:
                known = base.get_known_choices()
                if chosen not in known:
                    raise ConfigError(
                        f"{full}.type={chosen!r}: not a registered {_kind(base)}"
                        f"{did_you_mean(str(chosen), known)}; run `{PROG} list` to see all"
                    )
                sub_cls = known[chosen]
            if sub_cls is not None:
                check_keys(sub_cls, sub_yaml, overrides, full + ".")
        elif nested and getattr(tp, "__name__", "") == "NestedOptimizerConfig":
            raise ConfigError(
                f"{full}: a nested optimizer is one YAML value: "
                f"pass --{full} '{{type: adamw, learning_rate: 3e-3}}'"
            )
        elif nested or isinstance(sub_yaml, dict):
            sub = _dataclass_in(tp)
            if sub is not None:
                check_keys(sub, sub_yaml, overrides, full + ".")


def _registered_name(cls: type) -> str | None:
    if isinstance(cls, type) and issubclass(cls, draccus.ChoiceRegistry):
        try:
            return cls.get_choice_name(cls)
        except Exception:
            return None
    return None


def _kind(base: type) -> str:
    return "optimizer" if issubclass(base, OptimizerConfig) else base.__name__


def _root_error(e: BaseException) -> BaseException:
    """The innermost ConfigError in an exception's cause chain, else the innermost error."""
    found = config_error_in(e)
    if found is not None:
        return found
    while (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    return e


def one_line(e: BaseException) -> str:
    """A single line describing ``e`` for the terminal.

    A ConfigError anywhere in the cause chain wins; otherwise the outermost draccus decoding
    error (it names the field), otherwise the innermost error.
    """
    root = _root_error(e)
    if not isinstance(root, ConfigError):
        chain: BaseException | None = e
        while chain is not None:
            if type(chain).__name__ == "DecodingError":
                root = chain
                break
            chain = chain.__cause__ or chain.__context__
    text = str(root).strip() or type(root).__name__
    if not isinstance(root, ConfigError):
        text = text.splitlines()[0].rstrip(".").replace("`", "")
    return " ".join(text.split())


def parse_config(config_cls: type[T], argv: Sequence[str]) -> T:
    """Builds ``config_cls`` from ``--config_path file.yaml`` and dotted ``--a.b value`` overrides.

    Unknown fields and optimizer/schedule types are rejected with a suggestion before draccus
    parses anything; every failure is a ``ConfigError`` with a one-line message.
    """
    config_path, overrides = _split_argv(argv)
    yaml_tree = load_yaml(config_path) if config_path else {}
    check_keys(config_cls, yaml_tree, overrides)
    try:
        return draccus.decode(config_cls, _draccus_tree(yaml_tree, overrides))
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(one_line(e)) from e


def parse_config_with_draccus(config_cls: type[T], argv: Sequence[str]) -> T:
    """:func:`parse_config`'s reference: the same checks, then ``draccus.parse`` itself (its
    argparse parser, 4-6 s a command line with every optimizer registered) on the overrides.
    ``tests/test_cli.py`` asserts both give the same config; ``benchmarks/cli_parse.py`` times both."""
    config_path, overrides = _split_argv(argv)
    check_keys(config_cls, load_yaml(config_path) if config_path else {}, overrides)
    args = [a for key, value in overrides.items() for a in (f"--{key}", value)]
    return draccus.parse(config_class=config_cls, config_path=config_path, args=args, exit_on_error=False)


def _draccus_tree(tree: dict[str, Any], overrides: dict[str, str]) -> dict[str, Any]:
    """The tree ``draccus.parse`` decodes, built as it builds it but without its argparse parser:
    ``tree`` (the config file as :func:`load_yaml` reads it), each override's value read as
    draccus reads one (YAML; ``include FILE`` loads a file), the dotted keys nested and merged
    over the file's.

    draccus's parser adds an option for every field of every class of every registry in the
    config (the optimizers, twice over with the wrapped ones) and reads each one's help text from
    its class's source: seconds of every command (6.1 s against 9.5 ms on a 2-core CPU; see
    docs/performance.md), to check the option names that :func:`check_keys` has already checked,
    and help that only ``--help`` prints.
    """
    values: dict[str, Any] = {}
    for key, text in overrides.items():
        value = cfgparsing.parse_string(text)
        if isinstance(value, str) and value.startswith("include"):
            with open(value[len("include ") :], encoding="utf-8") as f:
                value = cfgparsing.load_config(f)
        values[key] = value
    return apply_dotted(tree, values)


def run_guarded(label: str, body: Callable[[], int | None], *, interrupted: str = "interrupted") -> int:
    """The CLI's one error contract around ``body``: bad input -> one line ``LABEL: error: ...`` and
    exit 2; a run stopped by its non-finite guard -> ``LABEL: stopped: ...`` and 1; Ctrl-C -> 130;
    a closed pipe (``marin-optim list | head``) -> 0. Returns ``body``'s status (None: 0)."""
    from marin_optim.transforms.guards import NonFiniteError

    try:
        return body() or 0
    except ConfigError as e:
        print(f"{label}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"{label}: stopped: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{label}: {interrupted}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left; not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def wants_help(argv: Sequence[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)
