"""Parameter groups (``group_overrides``): which parameters get which settings, resolved and described.

A group is ``{params: [fnmatch patterns], name: ..., lr_multiplier: ..., <any field>: ...}``;
its config is the base config with those fields replaced. Patterns match parameter paths or
class paths (``*RmsNorm*``); a pattern matching nothing, or a parameter matched by two groups, is
a ``ConfigError`` (OLMo-core's rule, made strict). The clip and the guards stay global.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax

from marin_optim.errors import ConfigError, did_you_mean
from marin_optim.state import GROUP_SEPARATOR
from marin_optim.validation import is_finite_real, where_of

if TYPE_CHECKING:
    from marin_optim.config.base import OptimizerConfig

DEFAULT_GROUP = "default"
GLOBAL_FIELDS = frozenset(
    {
        "max_grad_norm",
        "clip_scope",
        "skip_nonfinite",
        "max_nonfinite_steps",
        "skip_bad_steps",
        "skip_window",
        "skip_sigma",
        "skip_advances_schedule",
        "group_overrides",
        "fixed_fields",
        "schedule_units",
        "tokens_per_step",
        "update_path",
        "model_averaging",
    }
)


@dataclass(frozen=True)
class ParameterGroup:
    """One entry of ``group_overrides``, resolved: its name, patterns and its own config."""

    name: str
    patterns: tuple[str, ...]
    config: OptimizerConfig


def group_hp(hp: Mapping[str, Any], group: str | None) -> dict[str, Any]:
    """The injected values of one group (``group__name`` -> ``name``), or of the default group."""
    if group is None:
        return {k: v for k, v in hp.items() if GROUP_SEPARATOR not in k}
    prefix = group + GROUP_SEPARATOR
    return {k[len(prefix) :]: v for k, v in hp.items() if k.startswith(prefix)}


def label_groups(groups: list[ParameterGroup], params: Any) -> Any:
    """Each leaf's group name; a pattern that matches nothing or a leaf in two groups is an error."""
    from marin_optim.params import is_leaf, leaf_class_paths, leaf_paths

    hits: dict[str, int] = {}

    def label(path: str, class_path: str) -> str:
        matched = [g.name for g in groups if any(_match(p, path, class_path) for p in g.patterns)]
        for g in groups:
            for p in g.patterns:
                if _match(p, path, class_path):
                    hits[p] = hits.get(p, 0) + 1
        if len(matched) > 1:
            raise ConfigError(f"group_overrides: parameter {path!r} is matched by several groups: {matched}")
        return matched[0] if matched else DEFAULT_GROUP

    labels = jax.tree.map(label, leaf_paths(params), leaf_class_paths(params), is_leaf=is_leaf)
    unmatched = [p for g in groups for p in g.patterns if not hits.get(p)]
    if unmatched:
        example = jax.tree.leaves(leaf_paths(params), is_leaf=is_leaf)[:3]
        raise ConfigError(
            f"group_overrides: pattern(s) {unmatched} match no parameter (paths look like {example})"
        )
    return labels


def _match(pattern: str, path: str, class_path: str) -> bool:
    return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(class_path, pattern)


def parameter_groups(cfg: OptimizerConfig) -> list[ParameterGroup]:
    """The resolved ``group_overrides``: name, patterns and the group's own config."""
    if not cfg.group_overrides:
        return []
    if not isinstance(cfg.group_overrides, list):
        raise ConfigError(f"{where_of(cfg, 'group_overrides')}: expected a list of {{params: [...], ...}}")
    fields = {f.name for f in dataclasses.fields(cfg)}
    groups: list[ParameterGroup] = []
    for i, override in enumerate(cfg.group_overrides):
        where = f"{where_of(cfg, 'group_overrides')}[{i}]"
        if not isinstance(override, Mapping):
            raise ConfigError(f"{where}={override!r}: expected a mapping with a 'params' list")
        opts = dict(override)
        patterns = opts.pop("params", None)
        if isinstance(patterns, str):
            patterns = [patterns]
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise ConfigError(f"{where}.params={patterns!r}: expected a non-empty list of fnmatch patterns")
        name = opts.pop("name", f"group{i}")
        if not isinstance(name, str) or not name.isidentifier() or GROUP_SEPARATOR in name:
            raise ConfigError(f"{where}.name={name!r}: must be an identifier without '__'")
        if name == DEFAULT_GROUP or name in {g.name for g in groups}:
            raise ConfigError(f"{where}.name={name!r}: already used")
        multiplier = opts.pop("lr_multiplier", 1.0)
        if not is_finite_real(multiplier) or multiplier <= 0:
            raise ConfigError(f"{where}.lr_multiplier={multiplier!r}: must be a number > 0")
        for key in opts:
            if key in GLOBAL_FIELDS:
                raise ConfigError(f"{where}.{key}: is global (one clip, one guard), not per group")
            if key not in fields:
                allowed = sorted((fields - GLOBAL_FIELDS) | {"params", "name", "lr_multiplier"})
                raise ConfigError(f"{where}.{key}: unknown field{did_you_mean(key, allowed)}")
        for key in ("learning_rate", "weight_decay"):
            if key in opts and not is_finite_real(opts[key]):
                raise ConfigError(f"{where}.{key}={opts[key]!r}: expected a number")
        opts["learning_rate"] = opts.get("learning_rate", cfg.learning_rate) * multiplier
        opts.update(_scaled_with_the_group(cfg, opts, where))
        try:
            config = dataclasses.replace(cfg, group_overrides=None, **opts)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        groups.append(ParameterGroup(name, tuple(patterns), config))
    return groups


def _scaled_with_the_group(cfg: OptimizerConfig, opts: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The base's schedules, scaled to a group's peaks where the group does not set them: the
    learning rate's absolute floor and start (``min_lr``, ``warmup_init_lr``) by the group's
    learning rate over the base's, as :meth:`OptimizerConfig.lr_scheduler` scales them; the
    weight decay's end by the group's weight decay over the base's (``weight_decay: 0`` switches
    a moving decay off). A group's ``min_lr_ratio`` replaces the base's absolute floor."""
    out: dict[str, Any] = {}
    lr_ratio = opts["learning_rate"] / cfg.learning_rate
    if "min_lr" not in opts and cfg.min_lr is not None:
        out["min_lr"] = None if "min_lr_ratio" in opts else cfg.min_lr * lr_ratio
    if "warmup_init_lr" not in opts and cfg.warmup_init_lr:
        out["warmup_init_lr"] = cfg.warmup_init_lr * lr_ratio
    moving = opts.get("weight_decay_schedule", cfg.weight_decay_schedule) != "constant"
    if "weight_decay_end" not in opts and cfg.weight_decay_end is not None and not moving:
        out["weight_decay_end"] = None  # a constant decay has no other end
    elif "weight_decay" in opts and "weight_decay_end" not in opts and cfg.weight_decay_end is not None:
        if cfg.weight_decay > 0:
            out["weight_decay_end"] = cfg.weight_decay_end * opts["weight_decay"] / cfg.weight_decay
        elif opts["weight_decay"] == 0:
            out["weight_decay_end"] = 0.0
        else:
            raise ConfigError(
                f"{where}.weight_decay={opts['weight_decay']!r}: the base's weight decay moves from 0 to "
                f"weight_decay_end={cfg.weight_decay_end!r}, which no ratio scales; give the group's "
                "weight_decay_end too"
            )
    return out


def describe_params(cfg: OptimizerConfig, params: Any) -> list[tuple[str, str, bool]]:
    """``(path, group, decayed)`` for every parameter leaf: what this config does to a model."""
    return [(path, group, decayed) for path, group, decayed, _ in _described(cfg, params)[0]]


def _described(
    cfg: OptimizerConfig, params: Any
) -> tuple[list[tuple[str, str, bool, tuple[float | str, float]]], list[str]]:
    """``([(path, group, decayed, (peak learning rate, weight decay))], group names)``: one
    pass of labelling for :func:`describe_params` and :func:`param_table`."""
    from marin_optim.params import is_leaf, leaf_paths

    groups = parameter_groups(cfg)
    labels = (
        label_groups(groups, params)
        if groups
        else jax.tree.map(lambda _: DEFAULT_GROUP, params, is_leaf=is_leaf)
    )
    configs = {DEFAULT_GROUP: cfg, **{g.name: g.config for g in groups}}
    rates = {name: group_cfg.peak_rates(params) for name, group_cfg in configs.items()}
    rows = []
    paths = jax.tree.leaves(leaf_paths(params), is_leaf=is_leaf)
    label_list = jax.tree.leaves(labels, is_leaf=is_leaf)
    decay_by_group = {}
    for name, group_cfg in configs.items():
        mask_fn = group_cfg.build_weight_decay_mask()
        mask = (
            mask_fn(params) if mask_fn is not None else jax.tree.map(lambda _: True, params, is_leaf=is_leaf)
        )
        decay_by_group[name] = jax.tree.leaves(mask, is_leaf=is_leaf)
    values = jax.tree.leaves(params, is_leaf=is_leaf)
    for i, (path, label) in enumerate(zip(paths, label_list, strict=True)):
        if values[i] is None:  # an absent submodule (e.g. a bias the model does not use)
            continue
        group_cfg = configs[label]  # decayed where the mask says and its rule's decay is on
        decayed = bool(decay_by_group[label][i]) and (
            rates[label][path][1] > 0 or bool(group_cfg.weight_decay_end)
        )
        rows.append((path, label, decayed, rates[label][path]))
    return rows, list(configs)


def param_table(cfg: OptimizerConfig, params: Any) -> str:
    """A printable table of what this config does to each parameter of ``params``.

    One row per parameter: path, shape, group, the group's peak learning rate and the
    weight decay applied to it ("-" where the mask excludes it). ``params`` may be
    abstract (``jax.eval_shape`` of the model's init). Matrix-aware optimizers add which
    update rule each parameter gets.
    """
    from marin_optim.params import is_leaf

    described_rows, groups = _described(cfg, params)
    # NamedArray.shape is a dict of axis sizes; the array underneath has the plain shape.
    leaves = jax.tree.leaves(params, is_leaf=is_leaf)
    shapes = [tuple(getattr(x, "array", x).shape) for x in leaves if x is not None]
    described = list(zip(described_rows, shapes, strict=True))
    rows = [("path", "shape", "group", "learning_rate", "weight_decay")]
    for (path, group, decayed, (lr, wd)), x in described:
        decay = f"{wd:g}" if decayed else "-"
        shape = "x".join(map(str, x)) or "()"
        rows.append((path, shape, group, lr if isinstance(lr, str) else f"{lr:g}", decay))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, [*widths, 0], strict=True)).rstrip() for r in rows]
    decayed_values = sum(math.prod(x) for (_, _, decayed, _), x in described if decayed)
    total = sum(math.prod(x) for x in shapes)
    lines.append(
        f"{len(shapes)} parameters ({total:,} values), weight decay on {decayed_values:,} values"
        + (f"; groups: {', '.join(groups)}" if len(groups) > 1 else "")
    )
    return "\n".join(lines)
