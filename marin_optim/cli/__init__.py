"""``marin-optim``: list, show, schedule, params, speedrun, compare, sweep, levanter.

Every verb takes draccus-style input: ``--config_path file.yaml`` plus dotted overrides
(``--optimizer.type lion --optimizer.beta2 0.98``). Bad input prints one line and exits 2.
Parsing and the error contract live in :mod:`marin_optim.cli.parsing`; the verbs in
:mod:`.info` and :mod:`.training`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from marin_optim.cli.info import cmd_levanter, cmd_list, cmd_schedule, cmd_show
from marin_optim.cli.parsing import PROG, check_keys, one_line, parse_config, run_guarded, split_options
from marin_optim.cli.training import (
    TRAINING_VERBS,
    compare_main,
    params_main,
    run_script,
    speedrun_main,
    sweep_main,
)
from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError, did_you_mean

VERBS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "speedrun": (speedrun_main, "train the speedrun model with any optimizer (default: a 2-core CPU run)"),
    "compare": (compare_main, "the same speedrun for several optimizers, one table and one plot"),
    "sweep": (sweep_main, "tune optimizers by coordinate descent; speedup over tuned AdamW"),
    "list": (cmd_list, "every optimizer and LR schedule with a one-line description"),
    "show": (cmd_show, "fields, types, defaults and docs of one optimizer or schedule"),
    "schedule": (cmd_schedule, "LR and weight decay at the key steps (--plot lr.png for the curve)"),
    "params": (
        params_main,
        "each model parameter's optimizer group, learning rate, weight decay, update rule",
    ),
    "levanter": (cmd_levanter, "run a Levanter entry point (train_lm ...) with every marin_optim optimizer"),
}

IMPORT_FLAGS = ("--import", "-i")
"""Flags that, before the verb, load a user's module or .py file (each takes one argument)."""


def import_user_code(spec: str) -> None:
    """Imports a module name or a ``.py`` file so the optimizers it registers become choosable."""
    import importlib
    import importlib.util

    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"--import {spec!r}: no such file")
        sys.path.insert(0, str(path.resolve().parent))
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[path.stem] = module
        module_spec.loader.exec_module(module)
        return
    try:
        importlib.import_module(spec)
    except ImportError as e:
        raise ConfigError(f"--import {spec!r}: cannot import it ({e})") from None


def _verb(argv: Sequence[str]) -> str | None:
    """The verb of a command line, past any leading ``--import X`` pairs."""
    i = 0
    while i < len(argv) and argv[i] in IMPORT_FLAGS:
        i += 2
    return argv[i] if i < len(argv) else None


def _load_user_code(argv: list[str]) -> list[str]:
    """Loads plugins and every leading ``--import X``; returns the rest of the command line."""
    OptimizerConfig.load_plugins()
    while argv and argv[0] in IMPORT_FLAGS:
        if len(argv) < 2:
            raise ConfigError("--import: missing a module name or .py file")
        import_user_code(argv[1])
        argv = argv[2:]
    return argv


def _usage(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    print(parser.format_usage().strip() + " VERB [options]\n")
    for verb, (_, doc) in VERBS.items():
        print(f"  {verb:<9} {doc}")
    print("\nOptions: --config_path file.yaml and dotted overrides, e.g. --optimizer.type lion")
    print("Before the verb, --import FILE.py|MODULE loads your own registered optimizers.")
    if argv:
        return 0
    print(f"{PROG}: error: missing a command (one of {', '.join(VERBS)})", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and _verb(sys.argv[1:]) in TRAINING_VERBS:
        # The program itself (not a call from Python): set up the process now, which may
        # re-execute it for huge pages before anything else happens (marin_optim.runtime).
        from marin_optim.runtime import setup_process

        setup_process(program=True)
    args = list(sys.argv[1:] if argv is None else argv)

    def load() -> None:
        nonlocal args
        args = _load_user_code(args)

    status = run_guarded(PROG, load)
    if status:
        return status
    if not args or args[0] in ("-h", "--help", "help"):
        return _usage(args)
    verb, rest = args[0], args[1:]
    if verb not in VERBS:
        print(f"{PROG}: error: unknown command {verb!r}{did_you_mean(verb, VERBS)}", file=sys.stderr)
        return 2
    return run_guarded(PROG, lambda: VERBS[verb][0](rest))


__all__ = [
    "IMPORT_FLAGS",
    "PROG",
    "VERBS",
    "check_keys",
    "import_user_code",
    "main",
    "one_line",
    "parse_config",
    "run_script",
    "split_options",
]
