"""``python -m marin_optim.levanter [options] ENTRY [Levanter's arguments]``: Levanter, with our optimizers.

Registers every marin_optim optimizer in Levanter's registry, checks the ``optimizer`` part of
the command line (unknown names and fields fail in one line, with close matches), then runs
Levanter's own entry point unchanged, exactly as ``python -m levanter.main.ENTRY`` would.

Options (before ENTRY):
  --take-over NAME[,NAME...]  our optimizer of that name answers Levanter's ``type: NAME``
  --import FILE.py|MODULE     import your module first (your own registered optimizers)

ENTRY is a module of ``levanter.main`` (``train_lm``, ``lora_lm``, ...) or a full module path.
Bad input exits 2 with one line; a run stopped by the non-finite guard exits 1.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROG = "python -m marin_optim.levanter"


def _options(argv: Sequence[str]) -> tuple[list[str], list[str], str, list[str]]:
    """``(take_over, imports, entry module, Levanter's arguments)``."""
    import importlib
    import importlib.util
    import pkgutil

    from marin_optim.errors import ConfigError, did_you_mean

    take: list[str] = []
    imports: list[str] = []
    argv = list(argv)
    while argv and argv[0].startswith("-"):
        flag, _, value = argv.pop(0).partition("=")
        if flag not in ("--take-over", "--import", "-i"):
            raise ConfigError(
                f"{flag}: unknown option (options before ENTRY: --take-over NAMES, --import FILE)"
            )
        if not value:
            if not argv:
                raise ConfigError(f"{flag}: missing a value")
            value = argv.pop(0)
        if flag == "--take-over":
            take += [n for n in value.split(",") if n]
        else:
            imports.append(value)
    if not argv:
        raise ConfigError("missing ENTRY: a Levanter entry point such as train_lm")
    entry = argv.pop(0)
    module = entry if "." in entry else f"levanter.main.{entry}"
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        found = False
    if not found:
        mains = [m.name for m in pkgutil.iter_modules(importlib.import_module("levanter.main").__path__)]
        raise ConfigError(f"ENTRY={entry!r}: no module {module}{did_you_mean(entry, mains)}")
    return take, imports, module, argv


CONFIG_FLAGS = ("config_path", "config-path", "config", "configs")
"""The flags naming Levanter's config files; each takes one or more paths (``--configs a b``)."""


def _optimizer_args(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The config files Levanter reads (:data:`CONFIG_FLAGS`) and the ``--optimizer.*`` overrides,
    as ``{field: value}``."""
    configs: list[str] = []
    overrides: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if key in CONFIG_FLAGS and not eq:  # every path up to the next flag
            while i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                configs.append(argv[i + 1])
                i += 1
        elif key in CONFIG_FLAGS:
            configs.append(value)
        elif key.startswith("optimizer."):
            if not eq and i + 1 < len(argv):
                value = argv[i + 1]
                i += 1
            overrides[key[len("optimizer.") :]] = value
        i += 1
    return configs, overrides


def _local_config(path: str) -> Path | None:
    """The file Levanter reads for a config ``path`` (it tries ``.yaml`` and ``.yml`` too), or None
    where it is not a local file (a URL, a name in Levanter's config folder)."""
    return next((Path(p) for p in (path, f"{path}.yaml", f"{path}.yml") if Path(p).is_file()), None)


def check_optimizer(argv: Sequence[str]) -> None:
    """Fails with one line when the command line names an optimizer or field that does not exist.

    Reads the ``optimizer`` block of the local config files (several are concatenated, as Levanter
    does) and the ``--optimizer.*`` overrides. A config Levanter fetches itself (a URL, a name in
    its config folder) is left to Levanter, and so are the overrides unless they name the
    ``type``. A field that only the other implementation of the same name has (ours vs
    Levanter's) says so.
    """
    import dataclasses

    import yaml

    from marin_optim.cli import check_keys
    from marin_optim.config import OptimizerConfig
    from marin_optim.errors import ConfigError, close_matches, did_you_mean, suggest
    from marin_optim.levanter import LEVANTER_PREFIX, PREFIX, LevanterOptimizerConfig

    configs, overrides = _optimizer_args(argv)
    files = [_local_config(c) for c in configs]
    if None in files and "type" not in overrides:
        return  # the optimizer's type is in a config only Levanter reads
    block: Any = {}
    try:
        text = "\n".join(f.read_text() for f in files if f is not None)
        block = ((yaml.safe_load(text) or {}).get("optimizer") or {}) if None not in files else {}
    except (yaml.YAMLError, AttributeError):
        return  # Levanter reports a broken file itself
    if not isinstance(block, dict):
        return
    registry = LevanterOptimizerConfig.get_known_choices()
    name = overrides.get("type", block.get("type")) or LevanterOptimizerConfig.default_choice_name()
    if name not in registry:
        # Close matches among Levanter's names and among ours (compared without our prefix).
        short = str(name).removeprefix(PREFIX)
        theirs = [n for n, c in registry.items() if not issubclass(c, OptimizerConfig)]
        ours = [n.removeprefix(PREFIX) for n in registry if n.startswith(PREFIX)]
        close = close_matches(short, theirs, 2) + [PREFIX + n for n in close_matches(short, ours, 2)]
        raise ConfigError(
            f"optimizer.type={name!r}: not an optimizer Levanter knows{suggest(close)} "
            f"(marin_optim's are named {PREFIX}<name>; `marin-optim list --levanter` lists all)"
        )
    cls = registry[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    short = name.removeprefix(PREFIX).removeprefix(LEVANTER_PREFIX)
    ours = issubclass(cls, OptimizerConfig)
    # The other implementation of the same short name, for "Levanter's 'adam' has it".
    candidates = [LEVANTER_PREFIX + short, short] if ours else [PREFIX + short]
    other_name = next(
        (n for n in candidates if n in registry and issubclass(registry[n], OptimizerConfig) != ours), None
    )
    other_fields = {f.name for f in dataclasses.fields(registry[other_name])} if other_name else set()
    for key in sorted((set(block) | {k.split(".")[0] for k in overrides}) - {"type"}):
        if key in fields:
            continue
        hint = ""
        if key in other_fields:
            owner = "Levanter's" if ours else "marin_optim's"
            hint = f"; {owner} {short!r} has it (type: {other_name})"
        raise ConfigError(f"optimizer.{key}: not a field of {name!r}{did_you_mean(key, fields)}{hint}")
    if ours:
        check_keys(
            cls, block, {f"optimizer.{k}": v for k, v in overrides.items() if k != "type"}, "optimizer."
        )


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    import runpy

    from marin_optim.cli import import_user_code, one_line
    from marin_optim.errors import ConfigError, config_error_in
    from marin_optim.transforms.guards import NonFiniteError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    try:
        import marin_optim.levanter as plugin

        take, imports, module, rest = _options(argv)
        for spec in imports:
            import_user_code(spec)
        plugin.take_over(take)
        check_optimizer(rest)
    except (ConfigError, ImportError) as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 2
    sys.argv = [module, *rest]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except NonFiniteError as e:
        print(f"{prog}: stopped: {one_line(e)}", file=sys.stderr)
        return 1
    except SystemExit as e:  # Levanter's own exit, passed on
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except Exception as e:
        found = config_error_in(e)
        if found is None:
            raise
        print(f"{prog}: error: {one_line(found)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
