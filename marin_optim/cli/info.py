"""The informational verbs: `list` (`--levanter`), `show`, `schedule`, and `levanter` (the launcher)."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import draccus
import yaml

from marin_optim.cli.parsing import PROG, parse_config
from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError, did_you_mean
from marin_optim.registry import field_defaults
from marin_optim.validation import check_num_train_steps


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
        print(f"    {name:<{swidth}}  {cls.describe()}")
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


def cmd_levanter(argv: Sequence[str]) -> int:
    """``marin-optim levanter [--take-over N] [--import F] ENTRY [Levanter's arguments]``."""
    _levanter_plugin()
    from marin_optim.levanter.__main__ import main as levanter_main

    return levanter_main(list(argv), prog=f"{PROG} levanter")


def as_written(value: Any) -> str:
    """A default as a user writes it in YAML: ``cosine`` (a schedule at its defaults, by name),
    ``{type: wsd, decay: 0.2}``, ``1.0e-08``, ``null``, ``[]``."""
    from marin_optim.schedules import ScheduleConfig, encode_schedule

    if isinstance(value, ScheduleConfig):
        if value == type(value)():
            return value.type_name
        value = encode_schedule(value)
    elif dataclasses.is_dataclass(value):
        value = draccus.encode(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("\n...").strip()


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
    for name, default in field_defaults(cls).items():
        shown = "(required)" if default is dataclasses.MISSING else as_written(default)
        rows.append((name, _type_str(hints.get(name, Any)), shown, cls.field_doc(name)))
    if not rows:  # a schedule with nothing to set (linear, constant, ...)
        print("\nFields: none")
        return 0
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
    if cmd.plot:
        from marin_optim.speedrun.results import make_dir

        make_dir(Path(cmd.plot).parent, "plot", cmd.plot)
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
    from marin_optim.speedrun.plots import save_png

    save_png(fig, path, dpi=110)
