"""Fuzzing: random configs either build and step finitely or raise ConfigError; CLI junk exits 2.

Every registered optimizer is fuzzed with values drawn from its fields' annotations (out-of-range
numbers, NaN/inf, wrong types, unknown names). Whatever is accepted at construction must build,
initialise and take 3 steps on a small model without any exception but ConfigError, and never
produce a NaN silently: either the parameters stay finite or the non-finite guard counted the
bad steps.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marin_optim import ConfigError, OptimizerConfig, ScheduleConfig, hyperparams
from marin_optim.cli import main
from marin_optim.optimizers._wrapper import NestedOptimizerConfig

FUZZ = settings(
    max_examples=2,  # per optimizer; 8 in the extended tier (pytest --extended)
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_NUMBERS = st.one_of(
    st.sampled_from([0.0, 1.0, -1.0, 0.5, 1e-3, 0.9, 0.999, 2.0, 1e6, -1e-8]),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
)


def _strategy(tp: Any, default: Any) -> st.SearchStrategy:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*[_strategy(a, default) for a in typing.get_args(tp)])
    if origin is Literal:
        return st.sampled_from([*typing.get_args(tp), "bogus"])
    if tp is type(None):
        return st.none()
    if tp is bool:
        return st.one_of(st.booleans(), st.just("yes"))
    if tp is int:
        return st.one_of(st.integers(-3, 300), st.just(1.5))
    if tp is float:
        return st.one_of(_NUMBERS, st.integers(-2, 3), st.just("fast"))
    if tp is str:
        return st.one_of(st.text(max_size=6), st.just(default if isinstance(default, str) else "x"))
    if origin is list:
        (arg,) = typing.get_args(tp) or (Any,)
        return st.lists(_strategy(arg, None), max_size=3)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(_strategy(args[0], None), max_size=3).map(tuple)
        return st.tuples(*[_strategy(a, None) for a in args])
    if isinstance(tp, type) and issubclass(tp, ScheduleConfig):
        return st.sampled_from([*ScheduleConfig.get_known_choices(), "cosin"])
    if isinstance(tp, type) and issubclass(tp, NestedOptimizerConfig):
        return st.sampled_from([default, {"type": "sgd"}, {"type": "lion", "beta1": 2.0}, {"type": "adamz"}])
    return st.just(default)


def _field_strategies(cls: type) -> dict[str, st.SearchStrategy]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            continue
        if f.name == "group_overrides":
            out[f.name] = st.sampled_from(
                [
                    None,
                    [{"params": ["w*"], "weight_decay": 0.0}],
                    [{"params": ["nomatch*"]}],
                    [{"param": ["w*"]}],
                ]
            )
        else:
            out[f.name] = _strategy(hints.get(f.name, Any), default)
    return out


def _kwargs(cls: type) -> st.SearchStrategy:
    """Up to three fields drawn at random, the rest left at their defaults.

    Changing every field at once would make almost every example fail validation on its first
    field and never reach ``build``; a few at a time explores both sides of each check.
    """
    fields = _field_strategies(cls)
    chosen = st.lists(st.sampled_from(sorted(fields)), min_size=0, max_size=3, unique=True)
    return chosen.flatmap(lambda names: st.fixed_dictionaries({n: fields[n] for n in names}))


def _model():
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    return {
        "embed": 0.5 * jax.random.normal(k[0], (16, 8)),
        "w1": 0.3 * jax.random.normal(k[1], (8, 12)),
        "w2": 0.3 * jax.random.normal(k[2], (12, 8)),
        "norm": jnp.ones((8,)),
        "lm_head": 0.3 * jax.random.normal(k[3], (8, 16)),
    }


def _loss(params, tokens):
    h = params["embed"][tokens] * params["norm"]
    h = h + jnp.tanh(h @ params["w1"]) @ params["w2"]
    logits = h @ params["lm_head"]
    return optax.softmax_cross_entropy_with_integer_labels(logits[:-1], tokens[1:]).mean()


TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 16, size=32))


def _three_steps(cfg: OptimizerConfig, num_train_steps: int) -> None:
    tx = cfg.build(num_train_steps)
    params = _model()
    state = tx.init(params)
    obj_fn = lambda p: _loss(p, TOKENS)
    for _ in range(3):
        loss, grads = jax.value_and_grad(obj_fn)(params)
        updates, state = tx.update(grads, state, params, loss=loss, obj_fn=obj_fn)
        params = optax.apply_updates(params, updates)
    finite = all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))
    if not finite:
        counted = int(hyperparams(state).get("skip/nonfinite_steps", 0))
        assert counted > 0 or not cfg.skip_nonfinite, f"silent NaN with {cfg}"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OptimizerConfig.registered()))
def test_random_configs_build_and_step_or_raise_config_error(name, extended):
    cls = OptimizerConfig.get_choice_class(name)

    @settings(FUZZ, max_examples=8 if extended else FUZZ.max_examples)
    @given(_kwargs(cls), st.one_of(st.integers(1, 40), st.integers(-1, 0)))  # the simplest: 1 step, built
    def check(kwargs, num_train_steps):
        try:
            cfg = cls(**kwargs)
        except ConfigError:
            return
        try:
            _three_steps(cfg, num_train_steps)
        except ConfigError:
            return

    check()


_WORDS = st.sampled_from(
    [
        "schedule",
        "show",
        "list",
        "adam",
        "lion",
        "--optimizer.type",
        "--optimizer.learning_rate",
        "--optimizer.lr",
        "--optimizer.lr_schedule",
        "--optimizer.lr_schedule.type",
        "--optimizer.warmup",
        "--optimizer.cycles",
        "--num_train_steps",
        "--config_path",
        "--plot",
        "wsd",
        "cosine",
        "-1",
        "0",
        "1e9",
        "nan",
        "1.5",
        "[1, 2]",
        "{a: 1}",
        "--",
        "=",
        "--optimizer.type=lion",
    ]
)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.one_of(_WORDS, st.text(max_size=8)), min_size=1, max_size=6))
def test_cli_junk_exits_2_with_one_line_never_a_traceback(argv):
    if argv[0] in ("speedrun", "compare"):
        return
    argv = [a for a in argv if a != "--plot"]  # keep the fuzzer from writing files
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    assert rc in (0, 2)
    if rc == 2:
        assert len(err.getvalue().strip().splitlines()) == 1, err.getvalue()


_YAML_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(width=32), st.text(max_size=6)),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)
_YAML_KEYS = st.sampled_from(
    ["type", "learning_rate", "lr", "beta1", "warmup", "lr_schedule", "cycles", "junk"]
)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    st.dictionaries(
        st.sampled_from(["optimizer", "num_train_steps", "plot_", "x"]),
        st.one_of(_YAML_VALUES, st.dictionaries(_YAML_KEYS, _YAML_VALUES, max_size=4)),
        max_size=3,
    )
)
def test_yaml_junk_exits_2_with_one_line(tmp_path_factory, data):
    import contextlib
    import io

    path = tmp_path_factory.mktemp("yaml") / "junk.yaml"
    path.write_text(yaml.safe_dump(data))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["schedule", "--config_path", str(path)])
    assert rc in (0, 2)
    if rc == 2:
        assert len(err.getvalue().strip().splitlines()) == 1, err.getvalue()


def test_fuzz_strategies_cover_every_field_kind():
    """Guards the fuzzer itself: every field of every config gets a strategy that can vary (an
    unknown type falls back to its default alone, ``just(...)``)."""
    for cls in OptimizerConfig.registered().values():
        strategies = _field_strategies(cls)
        assert set(strategies) >= {"learning_rate", "warmup", "lr_schedule"}
        fixed = [name for name, s in strategies.items() if repr(s).startswith("just(")]
        assert not fixed, f"{cls.__name__}: no strategy for {fixed}"
