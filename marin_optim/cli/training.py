"""The training verbs: ``speedrun``, ``compare``, ``sweep``, ``params``; ``run_script`` for scripts.

Each takes speedrun options (``--config_path file.yaml`` and dotted overrides such as
``--train.num_train_steps 100``). ``speedrun``, ``compare`` and ``sweep`` set up the process first
(:func:`marin_optim.runtime.setup_process`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from marin_optim.cli.parsing import PROG, parse_config, run_guarded, split_options, wants_help
from marin_optim.errors import ConfigError

TRAINING_VERBS = ("speedrun", "compare", "sweep")
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
            "Values are YAML, bracketed commas kept: 'lion:lr_schedule={type: wsd, decay_fraction: 0.2}'.\n"
            "--optimizer.FIELD VALUE applies to every optimizer, under each one's own fields\n"
            "(dotted for a nested config: --optimizer.lr_schedule.type wsd); speedrun options follow:\n"
        )
    if verb == "sweep":
        print(SWEEP_USAGE)
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
        print(f"{cfg.optimizer_name} on model {cfg.model.name}:")
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
            if any(a.startswith(("--config_path", "--config-path")) for a in argv):
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


def split_optimizers_argv(
    verb: str, argv: Sequence[str], own: Sequence[str]
) -> tuple[list[str], dict[str, list[str]], dict[str, str], list[str]]:
    """``(optimizer names, the verb's own options, shared --optimizer.* overrides, speedrun argv)``
    for the verbs that take several optimizers (``compare``, ``sweep``). Each of ``own`` maps to
    every value it was given, in order."""
    argv = list(argv)
    names: list[str] = []
    while argv and not argv[0].startswith("--"):
        names.append(argv.pop(0))
    options: dict[str, list[str]] = {}
    shared: dict[str, str] = {}
    rest: list[str] = []
    for key, value in split_options(argv, what="optimizer names come first, then --name value options"):
        if key in own:
            options.setdefault(key, []).append(value)
        elif key.startswith("optimizer."):
            field = key[len("optimizer.") :]
            if field == "type":
                raise ConfigError(
                    f"{verb}: name the optimizers as arguments ({verb} adamw lion), not --optimizer.type"
                )
            shared[field] = value
        else:
            rest += [f"--{key}", value]
    return names, options, shared, rest


def split_compare_argv(argv: Sequence[str]) -> tuple[list[str], dict[str, str], dict[str, str], list[str]]:
    """``(optimizer specs, compare options, shared --optimizer.* overrides, speedrun argv)``."""
    specs, options, shared, rest = split_optimizers_argv("compare", argv, ("target_loss", "output_dir"))
    return specs, {k: v[-1] for k, v in options.items()}, shared, rest


def _number(options: dict[str, str], key: str, kind: type, default: Any) -> Any:
    if key not in options:
        return default
    try:
        return kind(options[key])
    except ValueError:
        raise ConfigError(
            f"--{key}={options[key]!r}: expected {'an integer' if kind is int else 'a number'}"
        ) from None


def compare_main(argv: list[str]) -> int:
    """``marin-optim compare adamw lion [--target_loss X] [--output_dir DIR] [speedrun options]``."""
    if wants_help(argv):
        _print_help("compare")
        return 0

    def body() -> None:
        from marin_optim.errors import yaml_value
        from marin_optim.speedrun.compare import DEFAULT_OUTPUT_DIR, parse_optimizer_spec, run_compare

        specs, options, shared_raw, rest = split_compare_argv(argv)
        if not specs:
            raise ConfigError("compare: name at least one optimizer, e.g. `marin-optim compare adamw lion`")
        shared = {k: yaml_value(f"compare: --optimizer.{k}", v) for k, v in shared_raw.items()}
        optimizers = [parse_optimizer_spec(spec, shared) for spec in specs]
        target = _number(options, "target_loss", float, None)
        base = _parse(rest)
        run_compare(
            base, optimizers, output_dir=options.get("output_dir", DEFAULT_OUTPUT_DIR), target_loss=target
        )

    return _training("compare", body)


SWEEP_USAGE = f"""usage: {PROG} sweep NAME [NAME ...] [--grid [NAME.]FIELD=v1,v2,...]... [--fields F1,F2]
    [--seeds 3] [--threshold 0.005] [--max_rounds 3] [--lengths 1,2,4] [--baseline adamw|none]
    [--start DIR]... [--output_dir runs/sweep] [--force true]
    [--workers N | --ray auto|local|ADDRESS [--ray_cpus 1] [--ray_gpus 0]] [speedrun options]

Tunes every named optimizer by coordinate descent on the speedrun (the learning rate first, then
warmup, weight decay, betas / momentum, each on a grid around its default; --fields: only these
fields, in this order), re-runs the best config with --seeds seeds, runs tuned AdamW at --lengths
times the steps, and writes sweep.md, sweep.json, best/NAME.yaml and plots into --output_dir.
--start DIR (repeatable): an optimizer with a DIR/NAME.yaml (e.g. another sweep's best/; the
first DIR that has one) starts from its optimizer section instead of its defaults, its grids
centred there.
--ray: each trial a Ray task asking for --ray_cpus CPUs and --ray_gpus GPUs (without GPUs it
runs on XLA:CPU, kept to its own share of its node's CPUs).
Interrupted: run the same command again; a trial is never run twice.
  e.g. marin-optim sweep adamw lion --grid learning_rate=1e-3,3e-3,1e-2 --train.num_train_steps 200
--optimizer.FIELD VALUE sets a field of every optimizer that has it (dotted for a nested config:
--optimizer.lr_schedule.type wsd; a field none of them has is refused); speedrun options follow:
"""

SWEEP_OPTIONS = (
    "fields",
    "seeds",
    "threshold",
    "max_rounds",
    "lengths",
    "baseline",
    "output_dir",
    "workers",
    "ray",
    "ray_cpus",
    "ray_gpus",
    "force",
)


def split_sweep_argv(
    argv: Sequence[str],
) -> tuple[list[str], dict[str, str], list[str], list[str], dict[str, str], list[str]]:
    """``(optimizer names, sweep options, --grid texts, --start directories, shared --optimizer.*
    overrides, speedrun argv)``."""
    names, options, shared, rest = split_optimizers_argv("sweep", argv, (*SWEEP_OPTIONS, "grid", "start"))
    grids, starts = options.pop("grid", []), options.pop("start", [])
    return names, {k: v[-1] for k, v in options.items()}, grids, starts, shared, rest


def sweep_main(argv: list[str]) -> int:
    """``marin-optim sweep adamw lion [--grid ...] [sweep options] [speedrun options]``."""
    if wants_help(argv):
        _print_help("sweep")
        return 0

    def body() -> None:
        from marin_optim.errors import yaml_value
        from marin_optim.sweep import DEFAULT_OUTPUT_DIR, make_spec, run_sweep

        names, options, grids, starts, shared_raw, rest = split_sweep_argv(argv)
        if not names:
            raise ConfigError("sweep: name at least one optimizer, e.g. `marin-optim sweep adamw lion`")
        lengths_text = options.get("lengths", "1,2,4")
        try:
            lengths = tuple(int(x) for x in lengths_text.split(","))
        except ValueError:
            raise ConfigError(f"--lengths={lengths_text!r}: expected whole numbers like 1,2,4") from None
        baseline = options.get("baseline", "adamw")
        force = str(yaml_value("sweep: --force", options.get("force", "false"))).lower()
        if force not in ("true", "false"):
            raise ConfigError(f"--force={options['force']!r}: expected true or false")
        spec = make_spec(
            names,
            grids=grids,
            fields=[f.strip() for f in options["fields"].split(",") if f.strip()]
            if "fields" in options
            else None,
            shared={k: yaml_value(f"sweep: --optimizer.{k}", v) for k, v in shared_raw.items()},
            seeds=_number(options, "seeds", int, 3),
            threshold=_number(options, "threshold", float, 0.005),
            max_rounds=_number(options, "max_rounds", int, 3),
            lengths=lengths,
            baseline=None if baseline == "none" else baseline,
            start=starts,
        )
        ray_resources = {k: _number(options, f"ray_{k}", float, d) for k, d in (("cpus", 1.0), ("gpus", 0.0))}
        given = [f"--ray_{k}" for k in ("cpus", "gpus") if f"ray_{k}" in options]
        if given and "ray" not in options:
            raise ConfigError(
                f"{' and '.join(given)}: only with --ray (the resources of each trial's Ray task)"
            )
        base = _parse(rest)
        run_sweep(
            base,
            spec,
            options.get("output_dir", DEFAULT_OUTPUT_DIR),
            workers=_number(options, "workers", int, 1),
            ray=options.get("ray"),
            ray_cpus=ray_resources["cpus"],
            ray_gpus=ray_resources["gpus"],
            force=force == "true",
        )

    return _training("sweep", body)
