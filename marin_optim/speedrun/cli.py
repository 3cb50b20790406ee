"""``marin-optim speedrun`` and ``marin-optim compare``: argv in, exit status out.

Both take ``--config_path file.yaml`` and dotted overrides (``--train.num_train_steps 100``,
``--optimizer.type lion``). Bad input prints one line to stderr and returns 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from marin_optim.errors import ConfigError

PROG = "marin-optim"
TRAINING_VERBS = ("speedrun", "compare")


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


def _guarded(verb: str, body: Callable[[], object]) -> int:
    """Runs ``body`` with the CLI's error contract: bad input -> one line and 2; a run stopped by
    its non-finite guard -> one line and 1; Ctrl-C -> 130. Training verbs first switch on
    XLA:CPU multi-output fusion for this process (:mod:`marin_optim.xla`)."""
    if verb in TRAINING_VERBS:
        from marin_optim.xla import configure_training_process

        configure_training_process()
    from marin_optim.transforms.guards import NonFiniteError

    try:
        body()
    except ConfigError as e:
        print(f"{PROG} {verb}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"{PROG} {verb}: stopped: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = " (resume with --resume true)" if verb == "speedrun" else ""
        print(f"{PROG} {verb}: interrupted{hint}", file=sys.stderr)
        return 130
    return 0


def speedrun_main(argv: list[str]) -> int:
    """``marin-optim speedrun [--config_path f.yaml] [--a.b value ...]``."""
    if _wants_help(argv):
        _print_help("speedrun")
        return 0

    def body() -> None:
        from marin_optim.speedrun.trainer import run_speedrun

        run_speedrun(_parse(argv))

    return _guarded("speedrun", body)


def params_main(argv: list[str]) -> int:
    """``marin-optim params [speedrun options]``: what the optimizer does to each model parameter."""
    if _wants_help(argv):
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

    return _guarded("params", body)


def run_script(config, argv: Sequence[str] | None = None) -> int:
    """Runs a script's ``SpeedrunConfig`` with the command line's overrides on top; returns the exit status.

    ``python experiments/speedrun/lion.py --train.num_train_steps 50`` changes one field and keeps
    the rest of the script's config (the optimizer included). Bad input prints one line and
    returns 2, like the CLI.
    """
    import os
    import tempfile

    if argv is None:  # the script run as a program: restart with huge pages (marin_optim/host.py)
        from marin_optim.host import reexec_with_malloc_hugepages

        reexec_with_malloc_hugepages()
    argv = list(sys.argv[1:] if argv is None else argv)
    if _wants_help(argv):
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

    return _guarded("speedrun", body)


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

    return _guarded("compare", body)
