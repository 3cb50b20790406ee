"""``marin-optim``: list, show, schedule, params, speedrun, compare.

Every verb takes draccus-style input: ``--config_path file.yaml`` plus dotted overrides
(``--optimizer.type lion --optimizer.beta2 0.98``). Bad input prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import draccus
import yaml

from marin_optim.config import OptimizerConfig, check_num_train_steps
from marin_optim.errors import ConfigError, config_error_in, did_you_mean

T = TypeVar("T")
PROG = "marin-optim"


# -- parsing configs with one-line errors ----------------------------------------------------


def _split_argv(argv: Sequence[str]) -> tuple[str | None, dict[str, str]]:
    """``--a.b value`` / ``--a.b=value`` pairs -> (config_path, {"a.b": "value"})."""
    config_path: str | None = None
    pairs: dict[str, str] = {}
    i = 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}: options look like --name value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv) or (argv[i + 1].startswith("--") and len(argv[i + 1]) > 2):
                raise ConfigError(f"--{key}: missing a value")
            value = argv[i + 1]
            i += 1
        i += 1
        if key in ("config_path", "config-path"):
            config_path = value
        else:
            pairs[key] = value
    return config_path, pairs


def _load_yaml(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config_path={path!r}: no such file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "invalid YAML"
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
                default = _field_default(cls, key)
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


def _field_default(cls: type, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return None


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
    yaml_tree = _load_yaml(config_path) if config_path else {}
    check_keys(config_cls, yaml_tree, overrides)
    args: list[str] = []
    for key, value in overrides.items():
        args += [f"--{key}", value]
    try:
        return draccus.parse(config_class=config_cls, config_path=config_path, args=args, exit_on_error=False)
    except ConfigError:
        raise
    except SystemExit as e:  # argparse inside draccus
        raise ConfigError(f"invalid arguments: {' '.join(argv)}") from e
    except Exception as e:
        raise ConfigError(one_line(e)) from e


# -- verbs ---------------------------------------------------------------------------------


def cmd_list(argv: Sequence[str]) -> int:
    """Every registered optimizer (grouped) and schedule, one line each; ``--levanter``: every name
    in Levanter's optimizer registry and the implementation it reaches."""
    if list(argv) == ["--levanter"]:
        return _list_levanter()
    if argv:
        raise ConfigError(f"list takes no arguments but --levanter, got {' '.join(argv)!r}")
    from marin_optim.optimizers import group_of
    from marin_optim.schedules import ScheduleConfig

    groups: dict[str, list[tuple[str, str]]] = {}
    for name, cls in OptimizerConfig.registered().items():
        groups.setdefault(group_of(cls), []).append((name, cls.describe()))
    width = max(len(n) for rows in groups.values() for n, _ in rows)
    total = sum(len(r) for r in groups.values())
    print(f"Optimizers ({total}); choose with --optimizer.type NAME or `type: NAME` in YAML")
    for group in sorted(groups, key=lambda g: (g == "User-defined", g)):
        print(f"\n  {group}")
        for name, doc in groups[group]:
            print(f"    {name:<{width}}  {doc}")
    schedules = dict(sorted(ScheduleConfig.get_known_choices().items()))
    swidth = max(len(n) for n in schedules)
    print(f"\nLR schedules ({len(schedules)}); choose with --optimizer.lr_schedule NAME")
    for name, cls in schedules.items():
        print(f"    {name:<{swidth}}  {_first_line(cls.__doc__)}")
    return 0


def _levanter_plugin() -> Any:
    """``marin_optim.levanter``, or the one-line ConfigError saying which extra to install."""
    try:
        import marin_optim.levanter as plugin
    except ImportError as e:
        raise ConfigError(str(e)) from None
    return plugin


def _list_levanter() -> int:
    plugin = _levanter_plugin()
    rows = plugin.implementations()
    ours = [r for r in rows if r[1] == "marin_optim"]
    theirs = [r for r in rows if r[1] == "levanter"]
    width = max(len(r[0]) for r in rows)
    print(
        f"Levanter's optimizer registry: {len(theirs)} names reach Levanter's classes, "
        f"{len(ours)} reach marin_optim's (choose with `type: NAME` in a train_lm config)"
    )
    taken = set(plugin.taken_over())
    for name, origin, path in rows:
        note = "  (taken over; Levanter's is levanter." + name + ")" if name in taken else ""
        print(f"    {name:<{width}}  {origin:<11}  {path}{note}")
    print(
        f"\nEvery marin_optim optimizer is {plugin.PREFIX}<name>. Levanter's names stay Levanter's unless "
        "taken over: python -m marin_optim.levanter --take-over NAME train_lm ..."
    )
    return 0


def _levanter(argv: Sequence[str]) -> int:
    _levanter_plugin()
    from marin_optim.levanter.__main__ import main as levanter_main

    return levanter_main(list(argv), prog=f"{PROG} levanter")


def _first_line(doc: str | None) -> str:
    doc = (doc or "").strip()
    return doc.splitlines()[0] if doc else ""


def _field_doc(cls: type, name: str) -> str:
    from draccus.wrappers.docstring import get_attribute_docstring

    for klass in cls.__mro__:
        if not dataclasses.is_dataclass(klass) or name not in inspect.get_annotations(klass):
            continue
        try:
            doc = get_attribute_docstring(klass, name)
        except Exception:
            continue
        text = doc.docstring_below or doc.comment_inline or doc.comment_above
        if text:
            return " ".join(text.split())
    for f in dataclasses.fields(cls):  # generated configs (optax_*) carry their docs in metadata
        if f.name == name and f.metadata.get("doc"):
            return " ".join(str(f.metadata["doc"]).split())
    return ""


def _type_str(tp: Any) -> str:
    from marin_optim.validation import type_name

    return type_name(tp).replace("NoneType", "None")


def cmd_show(argv: Sequence[str]) -> int:
    """Fields, types, defaults and docs of one optimizer or schedule."""
    from marin_optim.schedules import ScheduleConfig

    if len(argv) != 1:
        raise ConfigError("show takes one NAME (an optimizer or schedule; see `marin-optim list`)")
    name = argv[0]
    optimizers = OptimizerConfig.get_known_choices()
    schedules = ScheduleConfig.get_known_choices()
    if name in optimizers:
        cls, kind = optimizers[name], "optimizer"
    elif name in schedules:
        cls, kind = schedules[name], "schedule"
    else:
        raise ConfigError(
            f"NAME={name!r}: no optimizer or schedule by that name"
            f"{did_you_mean(name, list(optimizers) + list(schedules))}"
        )
    print(f"{name} ({kind}, {cls.__module__}.{cls.__qualname__})")
    doc = (cls.__doc__ or "").strip()
    if doc:
        import textwrap

        print(
            textwrap.indent(
                textwrap.dedent(doc.split("\n", 1)[0] + "\n" + (doc.split("\n", 1)[1:] or [""])[0]), "  "
            )
        )
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
        )
        shown = draccus.encode(default) if dataclasses.is_dataclass(default) else default
        rows.append((f.name, _type_str(hints.get(f.name, Any)), repr(shown), _field_doc(cls, f.name)))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    print("\nFields:")
    for r in rows:
        print(f"  {r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}")
    return 0


@dataclass(frozen=True)
class ScheduleCommand:
    """Arguments of ``marin-optim schedule``."""

    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig.get_choice_class("adam")())
    """The optimizer whose learning-rate and weight-decay schedules to print."""
    num_train_steps: int = 1000
    """Length of the run."""
    plot: str | None = None
    """Write the curves to this PNG file."""


def cmd_schedule(argv: Sequence[str]) -> int:
    """LR and weight decay at the key steps as a table, and optionally the curve as a PNG."""
    import numpy as np

    from marin_optim.schedules import encode_schedule, key_steps

    cmd = parse_config(ScheduleCommand, argv)
    n = check_num_train_steps(cmd.num_train_steps)
    opt = cmd.optimizer
    lr = opt.lr_scheduler(n)
    wd = opt.weight_decay_scheduler(n)
    ctx = opt.schedule_context(n)
    rows = key_steps(opt.lr_schedule, ctx)
    name = OptimizerConfig.get_choice_name(type(opt))
    print(f"{name}: lr_schedule={encode_schedule(opt.lr_schedule)}  num_train_steps={n}")
    print(f"{'step':>8}  {'learning_rate':>14}  {'weight_decay':>12}  where")
    for step, label in rows:
        lr_s = float(lr(int(step)))
        wd_s = float(wd(int(step))) if callable(wd) else float(wd)
        print(f"{int(step):>8}  {lr_s:>14.6g}  {wd_s:>12.6g}  {label}")
    if cmd.plot:
        import jax
        import jax.numpy as jnp

        steps = np.unique(np.linspace(0, n, num=min(n + 1, 2001)).round().astype(np.int32))
        lr_values = np.asarray(jax.vmap(lr)(jnp.asarray(steps)))
        wd_values = np.asarray(jax.vmap(wd)(jnp.asarray(steps))) if callable(wd) else np.full(steps.shape, wd)
        _plot_schedule(cmd.plot, steps, lr_values, wd_values, f"{name}: {type(opt.lr_schedule).__name__}")
        print(f"wrote {cmd.plot}")
    return 0


def _plot_schedule(path: str, steps: Any, lr: Any, wd: Any, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    (lr_line,) = ax.plot(steps, lr, label="learning_rate", color="tab:blue")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax2 = ax.twinx()
    (wd_line,) = ax2.plot(steps, wd, label="weight_decay", color="tab:orange", linestyle="--")
    ax2.set_ylabel("weight decay")
    ax.set_title(title)
    ax.legend(handles=[lr_line, wd_line], loc="lower left", framealpha=0.9)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    tmp.replace(out)


def _speedrun(argv: Sequence[str]) -> int:
    from marin_optim.speedrun.cli import speedrun_main

    return speedrun_main(list(argv))


def _compare(argv: Sequence[str]) -> int:
    from marin_optim.speedrun.cli import compare_main

    return compare_main(list(argv))


def _params(argv: Sequence[str]) -> int:
    from marin_optim.speedrun.cli import params_main

    return params_main(list(argv))


VERBS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "speedrun": (_speedrun, "train the speedrun model with any optimizer (default: a 2-core CPU run)"),
    "compare": (_compare, "the same speedrun for several optimizers, one table and one plot"),
    "list": (cmd_list, "every optimizer and LR schedule with a one-line description"),
    "show": (cmd_show, "fields, types, defaults and docs of one optimizer or schedule"),
    "schedule": (cmd_schedule, "LR and weight decay at the key steps (--plot lr.png for the curve)"),
    "params": (_params, "each model parameter's optimizer group, learning rate, weight decay, update rule"),
    "levanter": (_levanter, "run a Levanter entry point (train_lm ...) with every marin_optim optimizer"),
}


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


IMPORT_FLAGS = ("--import", "-i")
"""Flags that, before the verb, load a user's module or .py file (each takes one argument)."""


def _verb(argv: Sequence[str]) -> str | None:
    """The verb of a command line, past any leading ``--import X`` pairs."""
    i = 0
    while i < len(argv) and argv[i] in IMPORT_FLAGS:
        i += 2
    return argv[i] if i < len(argv) else None


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # the program itself (not a call from Python): training verbs restart with huge pages
        from marin_optim.host import reexec_with_malloc_hugepages
        from marin_optim.speedrun.cli import TRAINING_VERBS

        if _verb(sys.argv[1:]) in TRAINING_VERBS:
            reexec_with_malloc_hugepages()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        OptimizerConfig.load_plugins()
        while argv and argv[0] in IMPORT_FLAGS:
            if len(argv) < 2:
                raise ConfigError("--import: missing a module name or .py file")
            import_user_code(argv[1])
            argv = argv[2:]
    except ConfigError as e:
        print(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
        return 2
    if not argv or argv[0] in ("-h", "--help", "help"):
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
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"{PROG}: error: unknown command {verb!r}{did_you_mean(verb, VERBS)}", file=sys.stderr)
        return 2
    try:
        return VERBS[verb][0](rest)
    except ConfigError as e:
        print(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `marin-optim list | head`: the reader left; not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
