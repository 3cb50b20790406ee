"""The training verbs: ``speedrun``, ``compare``, ``params``, and ``run_script`` for speedrun scripts.

Each takes speedrun options (``--config_path file.yaml`` and dotted overrides such as
``--train.num_train_steps 100``). ``speedrun`` and ``compare`` set up the process first
(:func:`marin_optim.runtime.setup_process`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from marin_optim.cli.parsing import PROG, parse_config, run_guarded, split_options, wants_help
from marin_optim.errors import ConfigError

TRAINING_VERBS = ("speedrun", "compare")
"""Verbs that train (and so set up the process, re-executing a program for huge pages)."""


def _parse(argv: Sequence[str]) -> Any:
    from marin_optim.speedrun.config import SpeedrunConfig

    return parse_config(SpeedrunConfig, list(argv))


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


def _training(verb: str, body: Callable[[], None], *, program: bool = False) -> int:
    """``body`` under the CLI's error contract, in a process set up for training."""
    from marin_optim.runtime import setup_process

    setup_process(program=program)
    hint = " (resume with --resume true)" if verb == "speedrun" else ""
    return run_guarded(f"{PROG} {verb}", body, interrupted=f"interrupted{hint}")


def speedrun_main(argv: list[str]) -> int:
    """``marin-optim speedrun [--config_path f.yaml] [--a.b value ...]``."""
    if wants_help(argv):
        _print_help("speedrun")
        return 0

    def body() -> None:
        from marin_optim.speedrun.trainer import run_speedrun

        run_speedrun(_parse(argv))

    return _training("speedrun", body)


def params_main(argv: list[str]) -> int:
    """``marin-optim params [speedrun options]``: what the optimizer does to each model parameter."""
    if wants_help(argv):
        print(
            f"usage: {PROG} params [--config_path f.yaml] [speedrun options]\n\n"
            "Prints every parameter of the speedrun model with its optimizer group, learning rate\n"
            "and weight decay (and, for matrix-aware optimizers, its update rule); nothing is trained.\n"
        )
        return 0

    def body() -> None:
        from marin_optim.speedrun.trainer import abstract_params

        cfg = _parse(argv)
        print(f"{cfg.optimizer_name} on model {cfg.model.preset}:")
        print(cfg.optimizer.param_table(abstract_params(cfg.model)))

    return run_guarded(f"{PROG} params", body)


def run_script(config: Any, argv: Sequence[str] | None = None) -> int:
    """Runs a script's ``SpeedrunConfig`` with the command line's overrides on top; returns the exit status.

    ``python experiments/speedrun/lion.py --train.num_train_steps 50`` changes one field and keeps
    the rest of the script's config (the optimizer included). Bad input prints one line and
    returns 2, like the CLI. Called with ``argv=None`` (the script run as a program) it may
    re-execute the process for huge pages (:mod:`marin_optim.runtime`).
    """
    import os
    import tempfile

    program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_help(argv):
        _print_help("speedrun")
        return 0

    def body() -> None:
        from marin_optim.speedrun.trainer import run_speedrun

        cfg = config
        if argv:
            if any(a.startswith("--config_path") for a in argv):
                raise ConfigError(
                    "a speedrun script carries its own config: pass dotted overrides, not --config_path"
                )
            fd, path = tempfile.mkstemp(suffix=".yaml")
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(config.to_yaml())
                cfg = _parse(["--config_path", path, *argv])
            finally:
                os.unlink(path)
        run_speedrun(cfg)

    return _training("speedrun", body, program=program)


def split_compare_argv(argv: Sequence[str]) -> tuple[list[str], dict[str, str], dict[str, str], list[str]]:
    """``(optimizer specs, compare options, shared --optimizer.* overrides, speedrun argv)``."""
    argv = list(argv)
    specs: list[str] = []
    while argv and not argv[0].startswith("--"):
        specs.append(argv.pop(0))
    options: dict[str, str] = {}
    shared: dict[str, str] = {}
    rest: list[str] = []
    what = "optimizer names come first, then --name value options"
    for key, value in split_options(argv, what=what):
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
    if wants_help(argv):
        _print_help("compare")
        return 0

    def body() -> None:
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

    return _training("compare", body)
