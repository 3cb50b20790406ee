"""``marin-optim speedrun`` and ``marin-optim compare``: argv in, exit status out.

Both take ``--config_path file.yaml`` and dotted overrides (``--train.num_train_steps 100``,
``--optimizer.type lion``). Bad input prints one line to stderr and returns 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from marin_optim.errors import ConfigError

PROG = "marin-optim"


def _parse(argv: Sequence[str]):
    from marin_optim.cli import parse_config
    from marin_optim.speedrun.config import SpeedrunConfig

    return parse_config(SpeedrunConfig, list(argv))


def _one_line(e: BaseException) -> str:
    try:
        from marin_optim.cli import one_line

        return one_line(e)
    except ImportError:  # pragma: no cover - the top-level CLI is always there in a release
        return " ".join(str(e).split())


def _wants_help(argv: Sequence[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def _print_help(verb: str) -> None:
    import draccus

    from marin_optim.speedrun.config import SpeedrunConfig

    if verb == "compare":
        print(
            f"usage: {PROG} compare NAME[:field=value,...] [NAME ...] [--target_loss X] "
            "[--output_dir DIR] [speedrun options]\n\n"
            "Runs the same speedrun once per optimizer and writes one table and one plot.\n"
            "  e.g. marin-optim compare adamw lion:learning_rate=3e-4 --train.num_train_steps 200\n"
            "--optimizer.FIELD VALUE applies to every optimizer; speedrun options follow:\n"
        )
    try:
        draccus.parse(config_class=SpeedrunConfig, args=["--help"], prog=f"{PROG} speedrun")
    except SystemExit:
        pass


def speedrun_main(argv: list[str]) -> int:
    """``marin-optim speedrun [--config_path f.yaml] [--a.b value ...]``."""
    if _wants_help(argv):
        _print_help("speedrun")
        return 0
    try:
        from marin_optim.speedrun.trainer import run_speedrun

        cfg = _parse(argv)
        run_speedrun(cfg)
    except ConfigError as e:
        print(f"{PROG} speedrun: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} speedrun: interrupted (resume with --resume true)", file=sys.stderr)
        return 130
    return 0


def run_script(config, argv: Sequence[str] | None = None) -> int:
    """Runs a script's ``SpeedrunConfig`` with the command line's overrides on top; returns the exit status.

    ``python experiments/speedrun/lion.py --train.num_train_steps 50`` changes one field and keeps
    the rest of the script's config (the optimizer included). Bad input prints one line and
    returns 2, like the CLI.
    """
    import os
    import tempfile

    argv = list(sys.argv[1:] if argv is None else argv)
    if _wants_help(argv):
        _print_help("speedrun")
        return 0
    try:
        from marin_optim.speedrun.trainer import run_speedrun

        if argv:
            if any(a.startswith("--config_path") for a in argv):
                raise ConfigError(
                    "a speedrun script carries its own config: pass dotted overrides, not --config_path"
                )
            fd, path = tempfile.mkstemp(suffix=".yaml")
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(config.to_yaml())
                config = _parse(["--config_path", path, *argv])
            finally:
                os.unlink(path)
        run_speedrun(config)
    except ConfigError as e:
        print(f"{PROG} speedrun: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} speedrun: interrupted (resume with --resume true)", file=sys.stderr)
        return 130
    return 0


def split_compare_argv(argv: Sequence[str]) -> tuple[list[str], dict[str, str], dict[str, str], list[str]]:
    """``(optimizer specs, compare options, shared --optimizer.* overrides, speedrun argv)``."""
    argv = list(argv)
    specs: list[str] = []
    while argv and not argv[0].startswith("--"):
        specs.append(argv.pop(0))
    options: dict[str, str] = {}
    shared: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(
                f"compare: unexpected argument {arg!r}: optimizer names come first, then --name value options"
            )
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv):
                raise ConfigError(f"--{key}: missing a value")
            value = argv[i + 1]
            i += 1
        i += 1
        if key in ("target_loss", "output_dir"):
            options[key] = value
        elif key.startswith("optimizer."):
            field = key[len("optimizer.") :]
            if field == "type":
                raise ConfigError(
                    "compare: name the optimizers as arguments (compare adamw lion), not --optimizer.type"
                )
            shared[field] = value
        else:
            rest += [f"--{key}", value]
    return specs, options, shared, rest


def compare_main(argv: list[str]) -> int:
    """``marin-optim compare adamw lion [--target_loss X] [--output_dir DIR] [speedrun options]``."""
    if _wants_help(argv):
        _print_help("compare")
        return 0
    try:
        import yaml

        from marin_optim.speedrun.compare import DEFAULT_OUTPUT_DIR, parse_optimizer_spec, run_compare

        specs, options, shared_raw, rest = split_compare_argv(argv)
        if not specs:
            raise ConfigError("compare: name at least one optimizer, e.g. `marin-optim compare adamw lion`")
        shared = {k: yaml.safe_load(v) for k, v in shared_raw.items()}
        optimizers = [parse_optimizer_spec(spec, shared) for spec in specs]
        target = None
        if "target_loss" in options:
            try:
                target = float(options["target_loss"])
            except ValueError:
                raise ConfigError(f"--target_loss={options['target_loss']!r}: expected a number") from None
        base = _parse(rest)
        run_compare(
            base, optimizers, output_dir=options.get("output_dir", DEFAULT_OUTPUT_DIR), target_loss=target
        )
    except ConfigError as e:
        print(f"{PROG} compare: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} compare: interrupted", file=sys.stderr)
        return 130
    return 0
