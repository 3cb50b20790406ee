"""``optax_<name>``: every optax optimizer by name, with optax's parameters and our template.

The central check runs every registered ``optax_<name>`` next to the optax function called
directly with the same arguments: with a constant schedule and no clip the trajectories must be
identical, which shows the learning rate and the weight decay are each applied exactly once.
"""

from __future__ import annotations

import inspect
import types
import warnings

import draccus
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest

from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError
from marin_optim.optimizers import optax_registry as reg
from marin_optim.state import hyperparams

STEPS = 3
X = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
Y = np.random.default_rng(1).normal(size=(8, 3)).astype(np.float32)


def loss(p):
    return jnp.mean((jnp.asarray(X) @ p["w"] + p["bias"] - jnp.asarray(Y)) ** 2)


def _params():
    return {"w": jnp.full((4, 3), 0.3, jnp.float32), "bias": jnp.zeros((3,), jnp.float32)}


def _ours(cfg, steps=STEPS):
    params = _params()
    tx = cfg.build(20)

    def step(params, state):
        value, g = jax.value_and_grad(loss)(params)
        u, state = tx.update(g, state, params, loss=value, obj_fn=loss)
        return optax.apply_updates(params, u), state

    return _loop(step, params, tx.init(params), steps)


def _loop(step, params, state, steps):
    """Runs ``steps`` steps eagerly: 47 optimizers x 2 compilations would cost more than dispatch."""
    for _ in range(steps):
        params, state = step(params, state)
    return params, state


def _direct(cls, cfg, steps=STEPS, **overrides):
    spec = cls.OPTAX
    kwargs = cfg.optax_kwargs()
    kwargs[spec.lr_param] = cfg.learning_rate
    if spec.decay_param:
        kwargs[spec.decay_param] = (
            cfg.weight_decay if cfg.weight_decay or spec.decay_default is not None else None
        )
    kwargs.update(overrides)
    tx = spec.fn(**kwargs)
    params = _params()

    accepted = inspect.signature(tx.update).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())

    def step(params, state):
        value, g = jax.value_and_grad(loss)(params)
        extra = {k: v for k, v in (("value", value), ("obj_fn", loss)) if takes_all or k in accepted}
        u, state = tx.update(g, state, params, **extra)
        return optax.apply_updates(params, u), state

    return _loop(step, params, tx.init(params), steps)[0]


CONSTANT = dict(lr_schedule="constant", warmup=0, max_grad_norm=None, default_weight_decay_mask=False)


def _close(a, b, tol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.all(np.isfinite(np.asarray(x))), "non-finite parameters"
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol, equal_nan=False)


@pytest.mark.parametrize("name", sorted(reg.CONFIGS))
def test_matches_optax_called_directly(name):
    cls = reg.CONFIGS[name]
    cfg = cls(**CONSTANT)
    _close(_ours(cfg)[0], _direct(cls, cfg))


def test_every_optax_optimizer_is_registered_or_explained():
    candidates = set()
    for module in (optax, optax.contrib):
        for name in dir(module):
            fn = getattr(module, name)
            if name.startswith(("_", "scale_by_")) or isinstance(fn, type) or not callable(fn):
                continue
            try:
                if "learning_rate" in inspect.signature(fn).parameters:
                    candidates.add(name)
            except (TypeError, ValueError):
                continue
    assert candidates, "found no optax optimizers at all"
    for name in candidates:
        assert name in reg.CONFIGS or name in reg.UNSUPPORTED, name
        if name in reg.CONFIGS:
            assert OptimizerConfig.get_choice_class(f"optax_{name}") is reg.CONFIGS[name]
    expected = {"adam", "adamw", "sgd", "rmsprop", "adagrad", "adadelta", "adamax", "nadamw", "radam"}
    expected |= {"adafactor", "lamb", "lars", "lion", "prodigy", "schedule_free_adamw", "polyak_sgd"}
    expected |= {n for n in ("adopt", "ademamix", "muon", "sophia") if hasattr(optax.contrib, n)}
    assert expected <= set(reg.CONFIGS)
    assert "lbfgs" in reg.UNSUPPORTED and "line search" in reg.UNSUPPORTED["lbfgs"]


@pytest.mark.parametrize("name", sorted(reg.CONFIGS))
def test_parameters_are_optaxs_own(name):
    cls = reg.CONFIGS[name]
    signature = inspect.signature(cls.OPTAX.fn).parameters
    for p in cls.OPTAX.params:
        assert p.name in signature
        assert p.field == p.name or p.field == f"optax_{p.name}"
        default = getattr(cls(), p.field)
        optax_default = signature[p.name].default
        overridden = p.name in reg._DEFAULT_OVERRIDES.get(name, {})
        if isinstance(optax_default, (int, float, str, bool)) and not p.is_dtype and not overridden:
            assert default == optax_default, p.name
    assert cls.describe().startswith(f"{cls.OPTAX.qualname}:")


def test_unknown_parameter_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"optax_adam: unknown parameter 'beta1'") as err:
        reg.CONFIGS["adam"](beta1=0.8)
    assert "b1, b2, eps, eps_root, mu_dtype, nesterov" in str(err.value)
    with pytest.raises(ConfigError, match=r"did you mean 'b1'"):
        reg.optax_config("adam", bb1=0.8)


def test_hidden_parameters_say_why():
    if "adopt" not in reg.CONFIGS:
        pytest.skip("optax.contrib.adopt needs optax >= 0.2.6")
    with pytest.raises(ConfigError, match=r"clip_value_fn: not configurable from a config \(a callable\)"):
        reg.CONFIGS["adopt"](clip_value_fn=None)


def test_colliding_names_get_a_prefix():
    cfg = reg.optax_config("rmsprop", optax_decay=0.5, decay=0.2)
    assert cfg.optax_kwargs()["decay"] == 0.5 and cfg.decay == 0.2  # ours: the LR decay length
    assert "optax_decay" in reg.CONFIGS["rmsprop"].__doc__


def test_weight_decay_goes_to_optax_with_our_mask():
    cfg = reg.optax_config("adamw", weight_decay=0.1, lr_schedule="constant", warmup=0, max_grad_norm=None)
    mask = {"w": True, "bias": False}  # Levanter's default: biases are exempt
    _close(_ours(cfg)[0], _direct(reg.CONFIGS["adamw"], cfg, mask=mask))


def test_decay_is_added_once_where_optax_has_none():
    """optax.adam has no decay: ours adds -lr * wd * p after it, which is exactly optax.adamw."""
    cfg = reg.optax_config("adam", weight_decay=0.1, **CONSTANT)
    expected = _direct(reg.CONFIGS["adamw"], reg.optax_config("adamw", weight_decay=0.1, **CONSTANT))
    _close(_ours(cfg)[0], expected)


def test_the_schedule_drives_optaxs_learning_rate():
    for name in ("adam", "lion", "prodigy"):
        cfg = reg.optax_config(
            name,
            lr_schedule="linear",
            warmup=2,
            min_lr_ratio=0.2,
            max_grad_norm=None,
            default_weight_decay_mask=False,
        )
        schedule = cfg.lr_scheduler(20)
        expected = _direct(reg.CONFIGS[name], cfg, learning_rate=schedule)
        params, state = _ours(cfg)
        _close(params, expected)
        assert float(hyperparams(state)["learning_rate"]) == pytest.approx(float(schedule(STEPS - 1)))


def test_a_scheduled_weight_decay_reaches_optax():
    cfg = reg.optax_config(
        "adamw", weight_decay=0.1, weight_decay_end=0.0, weight_decay_schedule="linear", **CONSTANT
    )
    params, state = _ours(cfg)
    # the value injected for the last update (count STEPS - 1) of a linear 0.1 -> 0 over 20 steps
    assert float(hyperparams(state)["weight_decay"]) == pytest.approx(0.1 * (1 - (STEPS - 1) / 20))
    constant, _ = _ours(reg.optax_config("adamw", weight_decay=0.1, **CONSTANT))
    assert not np.allclose(np.asarray(params["w"]), np.asarray(constant["w"]), rtol=0, atol=1e-7)


def test_learning_rates_read_at_init_are_the_peak():
    """optax.rprop reads learning_rate once, as the initial step size: it gets the peak, and the
    schedule scales the steps; otherwise a warmup from 0 would freeze it at step size 0."""
    spec = reg.CONFIGS["rprop"].OPTAX
    assert spec.lr_read_at_init and not reg.CONFIGS["adam"].OPTAX.lr_read_at_init
    cfg = reg.optax_config("rprop", learning_rate=0.01, warmup=2, lr_schedule="constant", max_grad_norm=None)
    params, _ = _ours(cfg, steps=6)
    assert float(jnp.max(jnp.abs(params["w"] - _params()["w"]))) > 1e-3


def test_the_mask_is_refused_where_optax_takes_none():
    if "prodigy" not in reg.CONFIGS:
        pytest.skip("no optax.contrib.prodigy")
    with pytest.raises(ConfigError, match=r"decays every parameter"):
        reg.optax_config("prodigy", weight_decay=0.1)
    reg.optax_config("prodigy", weight_decay=0.1, default_weight_decay_mask=False)


def test_the_loss_reaches_optax_as_value():
    cfg = reg.optax_config("polyak_sgd", **CONSTANT)
    tx = cfg.build(10)
    params = _params()
    state = tx.init(params)
    g = jax.grad(loss)(params)
    with pytest.raises(ValueError, match=r"loss=loss"):
        tx.update(g, state, params)
    u, _ = tx.update(g, state, params, loss=loss(params))
    assert float(jnp.max(jnp.abs(u["w"]))) > 0


def test_yaml_and_cli():
    decoded = draccus.decode(
        OptimizerConfig, {"type": "optax_adamw", "b1": 0.8, "mu_dtype": "bfloat16", "learning_rate": 1e-3}
    )
    assert decoded == reg.optax_config("adamw", b1=0.8, mu_dtype="bfloat16", learning_rate=1e-3)
    assert draccus.decode(OptimizerConfig, draccus.encode(decoded, OptimizerConfig)) == decoded
    from marin_optim.cli import parse_config

    @draccus.wrappers.dataclass_wrapper.dataclasses.dataclass(frozen=True)
    class Top:
        optimizer: OptimizerConfig = draccus.wrappers.dataclass_wrapper.dataclasses.field(
            default_factory=lambda: OptimizerConfig.get_choice_class("adam")()
        )

    parsed = parse_config(Top, ["--optimizer.type", "optax_sgd", "--optimizer.momentum", "0.9"])
    assert parsed.optimizer == reg.optax_config("sgd", momentum=0.9)


def test_bad_values_fail_at_construction():
    with pytest.raises(ConfigError, match=r"mu_dtype='float37': not a dtype name"):
        reg.optax_config("adam", mu_dtype="float37")
    with pytest.raises(ConfigError, match=r"optax_adam.b1"):
        reg.optax_config("adam", b1=1.5)
    with pytest.raises(ConfigError, match=r"not supported: quasi-Newton"):
        reg.optax_config("lbfgs")
    with pytest.raises(ConfigError, match=r"did you mean 'adamax'"):
        reg.optax_config("adamx")


def test_radam_threshold_below_four_is_refused():
    """optax takes it, but its rectifier is NaN while 2 < rho_t < 4 (every b2 passes there)."""
    with pytest.raises(ConfigError, match=r"optax_radam.threshold=3.0: must be >= 4"):
        reg.optax_config("radam", threshold=3.0)
    tx = reg.optax_config("radam", threshold=4.0).build(10)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    for _ in range(4):  # rho_t = 1, 2, 3, 4 at b2 = 0.999: the NaN steps of threshold 0
        updates, state = tx.update({"w": jnp.asarray([1.0, -2.0, 0.5])}, state, params)
        assert bool(jnp.all(jnp.isfinite(updates["w"])))


def test_noisy_sgd_is_seeded():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = reg.optax_config("noisy_sgd", **CONSTANT)
        a, _ = _ours(cfg, steps=2)
    b, _ = _ours(reg.optax_config("noisy_sgd", **CONSTANT), steps=2)
    _close(a, b, tol=0)


def test_a_new_optax_optimizer_needs_no_code_change():
    def shiny(
        learning_rate,
        beta: float = 0.5,
        mode: str = "fast",
        steps: int = 3,
        weight_decay: float = 0.0,
        mask=None,
    ) -> optax.GradientTransformation:
        """Shiny: a new optimizer."""
        return optax.chain(
            optax.trace(decay=beta),
            optax.add_decayed_weights(weight_decay, mask),
            optax.scale_by_learning_rate(learning_rate),
        )

    fake = types.SimpleNamespace(shiny=shiny, helper=lambda x: x, scale_by_shiny=shiny)
    specs, unsupported = reg.discover([("fakeoptax", fake)])
    assert set(specs) == {"shiny"} and not unsupported
    cls = reg.make_config_class(specs["shiny"])
    assert cls.describe() == "fakeoptax.shiny: Shiny: a new optimizer."
    cfg = cls(beta=0.9, mode="slow", steps=5, weight_decay=0.1, **CONSTANT)
    assert cfg.optax_kwargs() == {"beta": 0.9, "mode": "slow", "steps": 5}
    params, _ = _ours(cfg)
    _close(params, _direct(cls, cfg))
    with pytest.raises(ConfigError, match="unknown parameter 'betta'"):
        cls(betta=0.1)


def test_every_parameter_is_typed_or_explained():
    """A parameter whose type its default does not tell must be in ``_AMBIGUOUS``: a new one in a
    new optax fails here (it would otherwise be hidden, or its optimizer unsupported)."""
    for name, cls in reg.CONFIGS.items():
        assert all(why != reg.UNLISTED for _, why in cls.OPTAX.hidden), name
    for name, why in reg.UNSUPPORTED.items():
        assert reg.UNLISTED not in why, name


def test_parameters_typed_by_default_or_by_the_table():
    def fancy(
        learning_rate,
        momentum=None,
        ratio=0.5,
        steps=3,
        flag=False,
        betas=(0.9, 0.99),
        mu_dtype=None,
        fn=jnp.sign,
        mystery=None,
    ) -> optax.GradientTransformationExtraArgs:
        return optax.sgd(learning_rate)

    def needy(learning_rate, mystery) -> optax.GradientTransformation:
        return optax.sgd(learning_rate)

    fake = types.SimpleNamespace(fancy=fancy, needy=needy)
    specs, unsupported = reg.discover([("fakeoptax", fake)])
    typed = {p.name: (p.type, p.default) for p in specs["fancy"].params}
    assert typed == {
        "momentum": (float | None, None),  # from the table
        "ratio": (float, 0.5),
        "steps": (int, 3),
        "flag": (bool, False),
        "betas": (tuple[float, ...], (0.9, 0.99)),
        "mu_dtype": (str | None, None),
    }
    assert dict(specs["fancy"].hidden) == {"fn": "a callable", "mystery": reg.UNLISTED}
    assert reg.UNLISTED in unsupported["needy"]


def test_a_failing_probe_fails_the_build():
    """The probes catch nothing they do not expect: a bug surfaces instead of a silent default."""

    def broken(learning_rate, beta: float = 0.5) -> optax.GradientTransformation:
        def init(params):
            raise RuntimeError("broken init")

        return optax.GradientTransformation(init, optax.sgd(learning_rate).update)

    specs, _ = reg.discover([("fakeoptax", types.SimpleNamespace(broken=broken))])
    cls = reg.make_config_class(specs["broken"])
    with pytest.raises(RuntimeError, match="broken init"):
        cls(**CONSTANT).build(10)


def test_debug_nans_counts_as_breaking_at_zero_lr():
    """With jax_debug_nans on, D-Adaptation's 0/0 at learning rate 0 raises FloatingPointError:
    the probe's answer is still "breaks" (so the schedule is floored), not an error."""
    if "dadapt_adamw" not in reg.CONFIGS:
        pytest.skip("no optax.contrib.dadapt_adamw")
    cls = reg.CONFIGS["dadapt_adamw"]
    probe = reg.breaks_at_zero_lr.__wrapped__  # uncached: run it under the flag
    with jax.debug_nans(True):
        assert probe(cls.OPTAX, cls()._probe_key())
    assert probe(cls.OPTAX, cls()._probe_key())
    assert not probe(reg.CONFIGS["adam"].OPTAX, reg.CONFIGS["adam"]()._probe_key())


def test_return_annotations_that_make_a_factory():
    check = reg._returns_transformation
    assert check(inspect.Signature.empty)
    assert check(optax.GradientTransformation) and check(optax.GradientTransformationExtraArgs)
    assert check(optax.GradientTransformationExtraArgs | None)
    assert check("optax.GradientTransformation") and check("base.GradientTransformationExtraArgs")
    assert not check(float) and not check("Schedule") and not check(optax.Schedule)


def test_a_tuple_parameter_keeps_its_defaults_length():
    # optax.contrib.muon checks ns_coeffs only when it first runs: refused here, naming the field
    with pytest.raises(ConfigError, match=r"optax_muon\.ns_coeffs=\[\]: must hold 3 numbers"):
        reg.optax_config("muon", ns_coeffs=())
