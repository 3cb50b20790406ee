"""OptimizerConfig: validation, the registry, YAML round trips, the build template."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import draccus
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import marin_optim
from marin_optim import AdamConfig, ConfigError, LionConfig, OptimizerConfig, SGDConfig, hyperparams
from marin_optim.cli.parsing import check_keys


@pytest.mark.parametrize(
    ("kwargs", "field", "allowed"),
    [
        ({"learning_rate": 0.0}, "learning_rate", "(0, inf)"),
        ({"learning_rate": -1e-3}, "learning_rate", "(0, inf)"),
        ({"beta1": 1.0}, "beta1", "[0, 1)"),
        ({"beta2": -0.1}, "beta2", "[0, 1)"),
        ({"epsilon": -1e-8}, "epsilon", "[0, inf)"),
        ({"weight_decay": -0.1}, "weight_decay", "[0, inf)"),
        ({"warmup": 1.5}, "warmup", "fraction"),
        ({"warmup": -3}, "warmup", ">= 0"),
        ({"decay": 2.0}, "decay", "fraction"),
        ({"rewarmup": 1.01}, "rewarmup", "fraction"),
        ({"min_lr_ratio": 1.5}, "min_lr_ratio", "[0, 1]"),
        ({"max_grad_norm": -1.0}, "max_grad_norm", "[0, inf)"),
        ({"haps": [10, 20]}, "haps", "cycles: [10, 20]"),
        ({"cooldown": 0.1}, "cooldown", "decay"),
        ({"cycles": 0}, "cycles", ">= 1"),
        ({"cycles": [10, 5]}, "cycles", "increase"),
        ({"cycles": 2, "cycle_length": 10}, "cycles", "at most one"),
        ({"learning_rate": "fast"}, "learning_rate", "expected float"),
        ({"nesterov": "yes"}, "nesterov", "expected bool"),
        ({"learning_rate": float("nan")}, "learning_rate", "finite"),
        ({"lr_schedule": "cosin"}, "lr_schedule", "cosine"),
        ({"weight_decay_schedule": "linear"}, "weight_decay_schedule", "weight_decay_end"),
        ({"schedule_units": "tokens"}, "schedule_units", "tokens_per_step"),
        ({"weight_decay_modules": "(["}, "weight_decay_modules", "regular expression"),
        ({"min_lr": 1.0}, "min_lr", "learning_rate"),
        ({"warmup_init_lr": 1.0}, "warmup_init_lr", "must be <= learning_rate"),
        ({"weight_decay_end": 0.0}, "weight_decay_end", "weight_decay_schedule='constant' keeps"),
        ({"cycles": (0,)}, "cycles", "ints >= 1"),
        ({"cycle_length": (10, 0)}, "cycle_length", "ints >= 1"),
    ],
)
def test_bad_values_name_the_field_value_and_rule(kwargs, field, allowed):
    with pytest.raises(ConfigError) as e:
        AdamConfig(**kwargs)
    msg = str(e.value)
    assert field in msg
    assert allowed in msg
    if field in kwargs and isinstance(kwargs[field], (int, float)) and kwargs[field] == kwargs[field]:
        assert repr(kwargs[field]) in msg


@pytest.mark.parametrize(
    "name, fields, match",
    [
        (
            "ademamix",
            {"beta1": 0.0, "alpha_beta3_warmup": 10},
            r"ademamix\.beta1=0\.0: must be > 0 with alpha_beta3",
        ),
        ("ademamix", {"beta3": 0.0, "alpha_beta3_warmup": 0.1}, r"ademamix\.beta3=0\.0: must be > 0"),
        ("cautious", {"epsilon": 0.0}, r"cautious\.epsilon=0\.0: must be > 0"),
        ("dion", {"seed": -1}, r"dion\.seed=-1: must be an int >= 0"),
    ],
)
def test_fields_an_optimizer_divides_by_or_takes_logs_of(name, fields, match):
    with pytest.raises(ConfigError, match=match):
        OptimizerConfig.from_dict({"type": name, **fields})
    assert OptimizerConfig.from_dict({"type": name, **{k: v for k, v in fields.items() if "warmup" in k}})


def test_levanters_zero_max_grad_norm_is_no_clip():
    """Levanter writes ``max_grad_norm: 0.0`` for no clip (``if self.max_grad_norm:``)."""
    params = {"w": jnp.zeros((3,))}
    grads = {"w": jnp.array([30.0, -40.0, 0.0])}
    steps = {}
    for norm in (0.0, None, 1.0):
        tx = SGDConfig(learning_rate=0.1, max_grad_norm=norm, warmup=0, weight_decay=0.0).build(10)
        updates, state = tx.update(grads, tx.init(params), params)
        steps[norm] = np.asarray(updates["w"])
        assert ("grad_norm" in hyperparams(state)) == (norm == 1.0)
    np.testing.assert_array_equal(steps[0.0], steps[None])
    np.testing.assert_allclose(np.linalg.norm(steps[1.0]), 0.1, rtol=1e-6)


def test_integers_are_steps_and_floats_are_fractions():
    assert AdamConfig(warmup=1).warmup == 1
    assert AdamConfig(warmup=1.0).warmup == 1.0
    one_step = AdamConfig(warmup=1, lr_schedule="constant", learning_rate=1e-3).lr_scheduler(100)
    assert float(one_step(0)) == 0.0
    assert float(one_step(1)) == pytest.approx(1e-3)
    whole_run = AdamConfig(warmup=1.0, lr_schedule="constant", learning_rate=1e-3).lr_scheduler(100)
    assert float(whole_run(50)) == pytest.approx(0.5e-3)


@pytest.mark.parametrize("n", [0, -5, 2.5, True])
def test_num_train_steps_must_be_a_positive_int(n):
    with pytest.raises(ConfigError, match="num_train_steps"):
        AdamConfig().build(n)


def test_cycles_that_do_not_fit_the_run_fail_at_build():
    with pytest.raises(ConfigError, match="cycles"):
        AdamConfig(cycles=[50, 200]).build(100)


def test_builtin_registry_and_default_choice():
    reg = OptimizerConfig.registered()
    for name in ("adam", "adamw", "adamax", "lion", "sgd"):
        assert name in reg
    assert OptimizerConfig.default_choice_name() == "adam"
    assert OptimizerConfig.get_choice_name(LionConfig) == "lion"


def test_registering_the_same_class_twice_is_harmless():
    OptimizerConfig.register_subclass("lion")(LionConfig)
    assert OptimizerConfig.get_choice_class("lion") is LionConfig


def test_a_different_class_under_a_taken_name_raises_naming_both():
    @dataclass(frozen=True)
    class First(OptimizerConfig):
        def direction(self):
            return optax.identity()

    @dataclass(frozen=True)
    class Second(OptimizerConfig):
        def direction(self):
            return optax.identity()

    OptimizerConfig.register_subclass("test_taken_name")(First)
    try:
        with pytest.raises(ConfigError) as e:
            OptimizerConfig.register_subclass("test_taken_name")(Second)
        assert "First" in str(e.value) and "Second" in str(e.value)
    finally:
        OptimizerConfig._choice_registry.pop("test_taken_name")


def test_registration_listeners_see_every_registration_now_and_later():
    seen: list[tuple[str, type]] = []
    OptimizerConfig.on_register(lambda name, cls: seen.append((name, cls)))
    try:
        assert dict(seen) == OptimizerConfig._choice_registry  # replayed on subscription
        seen.clear()

        @dataclass(frozen=True)
        class Later(OptimizerConfig):
            def direction(self):
                return optax.identity()

        OptimizerConfig.register_subclass("test_listened")(Later)
        OptimizerConfig.register_subclass("test_listened")(Later)  # the same class again: no event
        assert seen == [("test_listened", Later)]
    finally:
        OptimizerConfig._listeners.pop()
        OptimizerConfig._choice_registry.pop("test_listened", None)


def test_built_by_finds_the_config_of_a_built_transformation_only():
    from marin_optim.config import built_by

    cfg = AdamConfig(max_nonfinite_steps=3)
    tx = cfg.build(10)
    assert built_by(tx) is cfg
    assert built_by(optax.MultiSteps(tx, 2)) is None  # wrapped again: another transformation
    assert built_by(optax.adam(1e-3)) is None
    assert built_by(object()) is None
    sam = OptimizerConfig.from_dict({"type": "sam", "base": {"type": "adamw", "max_nonfinite_steps": 5}})
    assert built_by(sam.build(10)).max_nonfinite_steps == 5  # a wrapper builds its (derived) base


def test_beyond_injected_is_what_a_levanter_style_trainer_does_not_log():
    from marin_optim.state import beyond_injected

    cfg = OptimizerConfig.from_dict(
        {"type": "adamw", "group_overrides": [{"params": ["b"], "lr_multiplier": 0.5, "name": "head"}]}
    )
    params = {"a": jnp.ones((3,)), "b": jnp.ones((2,))}
    tx = cfg.build(10)
    _, state = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    extra = beyond_injected(state)
    assert "grad_norm" in extra and "skip/nonfinite_steps" in extra
    assert not set(extra) & {"learning_rate", "weight_decay", "head/learning_rate"}
    # Everything is either in the outermost injected values or in the rest.
    injected = {k.replace("__", "/") for k in state.hyperparams}
    assert injected | set(extra) == set(hyperparams(state))


def test_a_field_of_another_optimizer_says_which_has_it():
    """A field that only other optimizers have names them (``optax_*`` last) and the type to write;
    a misspelt one of the chosen optimizer's own fields suggests it."""
    owners = r"backend_steps: unknown field of adam; .*muon.* have it \(type: \w+\)"
    with pytest.raises(ConfigError, match=owners):
        OptimizerConfig.from_dict({"type": "adam", "backend_steps": 5})
    with pytest.raises(ConfigError, match=r"betta1: unknown field of adam \(did you mean 'beta1'"):
        OptimizerConfig.from_yaml("type: adam\nbetta1: 0.9")
    with pytest.raises(ConfigError, match=r"optimizer.momentum: unknown field of adam; .*have it"):
        check_keys(AdamConfig, {"momentum": 0.9}, {}, "optimizer.")


def test_unknown_type_suggests_close_names():
    with pytest.raises(ConfigError, match="did you mean 'adamw'"):
        OptimizerConfig.get_choice_class("adamw_")


@pytest.mark.parametrize("name", sorted(OptimizerConfig.registered()))
def test_yaml_round_trip_for_every_registered_config(name):
    cls = OptimizerConfig.get_choice_class(name)
    cfg = cls()
    text = cfg.to_yaml()
    assert text.startswith(f"type: {name}\n")
    loaded = OptimizerConfig.from_yaml(text)
    assert type(loaded) is cls
    assert loaded == cfg
    assert OptimizerConfig.from_yaml(loaded.to_yaml()) == cfg


def test_yaml_selects_type_and_overrides_fields():
    @dataclass(frozen=True)
    class Holder:
        optimizer: OptimizerConfig = dataclasses.field(default_factory=AdamConfig)

    text = "optimizer:\n  type: lion\n  learning_rate: 3.0e-4\n  beta2: 0.98\n  lr_schedule: {type: linear}\n"
    holder = draccus.load(Holder, text)
    assert isinstance(holder.optimizer, LionConfig)
    assert holder.optimizer.learning_rate == 3e-4 and holder.optimizer.beta2 == 0.98
    assert type(holder.optimizer.lr_schedule).__name__.lower().startswith("linear")


def test_hyperparams_exposes_lr_weight_decay_and_grad_norm():
    cfg = AdamConfig(learning_rate=1e-2, warmup=0, lr_schedule="linear", weight_decay=0.25, min_lr_ratio=0.0)
    params = {"w": jnp.ones((3,))}
    tx = cfg.build(10)
    state = tx.init(params)
    grads = {"w": jnp.full((3,), 4.0)}
    _, state = tx.update(grads, state, params)
    hp = hyperparams(state)
    assert set(hp) >= {"learning_rate", "weight_decay", "grad_norm"}
    assert float(hp["weight_decay"]) == pytest.approx(0.25)
    assert float(hp["grad_norm"]) == pytest.approx(np.sqrt(3 * 16.0))
    # The recorded value is the one the latest update used (step 0 of a linear decay: the peak).
    assert float(hp["learning_rate"]) == pytest.approx(1e-2)
    _, state = tx.update(grads, state, params)
    assert float(hyperparams(state)["learning_rate"]) == pytest.approx(1e-2 * (1 - 1 / 10))


def test_weight_decay_schedule_is_injected_and_applied():
    cfg = SGDConfig(
        learning_rate=1.0,
        momentum=0.0,
        lr_schedule="constant",
        warmup=0,
        weight_decay=0.0,
        weight_decay_end=0.5,
        weight_decay_schedule="linear",
        max_grad_norm=None,
        default_weight_decay_mask=False,
    )
    params = {"w": jnp.ones((2,))}
    tx = cfg.build(4)
    state = tx.init(params)
    zeros = {"w": jnp.zeros((2,))}
    seen = []
    for _ in range(4):
        u, state = tx.update(zeros, state, params)
        seen.append(-float(u["w"][0]))
    np.testing.assert_allclose(seen, [0.0, 0.125, 0.25, 0.375], rtol=1e-6)


def test_default_weight_decay_mask_skips_norms_embeddings_and_biases():
    import equinox as eqx

    class Embedding(eqx.Module):
        weight: jax.Array

    class RMSNorm(eqx.Module):
        weight: jax.Array

    class Block(eqx.Module):
        embed: Embedding
        norm: RMSNorm
        proj: eqx.nn.Linear

    block = Block(
        Embedding(jnp.ones((4, 2))), RMSNorm(jnp.ones((2,))), eqx.nn.Linear(2, 2, key=jax.random.PRNGKey(0))
    )
    mask = AdamConfig().build_weight_decay_mask()(block)
    assert mask.embed.weight is False and mask.norm.weight is False
    assert mask.proj.weight is True and mask.proj.bias is False
    only_proj = AdamConfig(weight_decay_modules=["proj"]).build_weight_decay_mask()(block)
    assert only_proj.proj.weight is True and only_proj.proj.bias is True and only_proj.norm.weight is False
    regex = AdamConfig(weight_decay_modules=r".*proj\.weight").build_weight_decay_mask()(block)
    assert regex.proj.weight is True and regex.proj.bias is False
    assert AdamConfig(default_weight_decay_mask=False).build_weight_decay_mask() is None


def test_decay_mask_is_applied_in_the_update():
    cfg = SGDConfig(
        learning_rate=1.0,
        momentum=0.0,
        lr_schedule="constant",
        warmup=0,
        weight_decay=0.5,
        max_grad_norm=None,
    )
    params = {"w": jnp.ones((2,)), "bias": jnp.ones((2,))}
    tx = cfg.build(3)
    u, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    np.testing.assert_allclose(u["w"], [-0.5, -0.5])
    np.testing.assert_allclose(u["bias"], [0.0, 0.0])


def test_update_is_jittable_without_recompilation_and_keeps_dtypes():
    cfg = AdamConfig(learning_rate=1e-3)
    params = {"w": jnp.ones((4, 4), jnp.float32), "h": jnp.ones((4,), jnp.bfloat16)}
    tx = cfg.build(100)
    state = tx.init(params)
    traces = []

    @jax.jit
    def step(p, s, g):
        traces.append(1)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    g = jax.tree.map(jnp.ones_like, params)
    for _ in range(3):
        params, state = step(params, state, g)
    assert len(traces) == 1
    assert params["w"].dtype == jnp.float32 and params["h"].dtype == jnp.bfloat16


def test_extra_args_pass_through_update():
    tx = AdamConfig().build(10)
    params = {"w": jnp.ones((2,))}
    state = tx.init(params)
    u, _ = tx.update({"w": jnp.ones((2,))}, state, params, loss=jnp.float32(1.0), obj_fn=lambda p: 0.0)
    plain, _ = tx.update({"w": jnp.ones((2,))}, state, params)
    np.testing.assert_array_equal(np.asarray(u["w"]), np.asarray(plain["w"]))  # Adam ignores them


DESIGN_ADAMAX = """
from dataclasses import dataclass
import optax
from marin_optim import OptimizerConfig

@OptimizerConfig.register_subclass("adamax")
@dataclass(frozen=True)
class AdamaxConfig(OptimizerConfig):
    beta1: float = 0.9
    beta2: float = 0.95
    epsilon: float = 1e-8
    max_grad_norm: float | None = 1.0

    def build(self, num_train_steps: int) -> optax.GradientTransformation:
        def _optimizer(learning_rate):
            parts = []
            if self.max_grad_norm is not None:
                parts.append(optax.clip_by_global_norm(self.max_grad_norm))
            parts.append(optax.scale_by_adamax(self.beta1, self.beta2, self.epsilon))
            if self.weight_decay > 0:
                parts.append(optax.add_decayed_weights(self.weight_decay, self.build_weight_decay_mask()))
            parts.append(optax.scale(-learning_rate))
            return optax.chain(*parts)
        return optax.inject_hyperparams(_optimizer)(learning_rate=self.lr_scheduler(num_train_steps))
"""


def test_design_adamax_written_outside_the_package(tmp_path):
    """A Levanter-style AdamaxConfig with its own build (Marin's speedrun guide), in a user's file:
    Python, YAML and the CLI."""
    (tmp_path / "user_adamax.py").write_text(DESIGN_ADAMAX)
    script = textwrap.dedent(
        """
        import dataclasses, sys
        import draccus, jax, jax.numpy as jnp, optax
        from marin_optim import OptimizerConfig, hyperparams
        from marin_optim.cli import main
        import user_adamax

        cls = OptimizerConfig.get_choice_class("adamax")
        assert cls is user_adamax.AdamaxConfig, cls
        cfg = user_adamax.AdamaxConfig(learning_rate=3e-3, beta2=0.99)
        tx = cfg.build(50)
        params = {"w": jnp.ones((3, 3)), "b": jnp.zeros((3,))}
        state = tx.init(params)
        loss = lambda p: jnp.sum((p["w"] @ jnp.arange(3.0) + p["b"] - 1.0) ** 2)
        before = loss(params)
        for _ in range(10):
            u, state = tx.update(jax.grad(loss)(params), state, params)
            params = optax.apply_updates(params, u)
        assert loss(params) < before
        assert "learning_rate" in hyperparams(state)

        @dataclasses.dataclass(frozen=True)
        class Holder:
            optimizer: OptimizerConfig = dataclasses.field(default_factory=cfg.__class__)

        loaded = draccus.load(Holder, "optimizer: {type: adamax, learning_rate: 3.0e-3}")
        assert type(loaded.optimizer) is user_adamax.AdamaxConfig
        assert loaded.optimizer.learning_rate == 3e-3
        assert OptimizerConfig.from_yaml(cfg.to_yaml()) == cfg
        argv = ["--optimizer.type", "adamax", "--optimizer.beta2", "0.99", "--num_train_steps", "20"]
        rc = main(["schedule", *argv])
        assert rc == 0
        print("USER-ADAMAX-OK")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "USER-ADAMAX-OK" in proc.stdout
    assert "adamax" in proc.stdout


def test_cli_import_flag_loads_a_user_file(tmp_path):
    path = tmp_path / "user_adamax.py"
    path.write_text(DESIGN_ADAMAX)
    proc = subprocess.run(
        [sys.executable, "-m", "marin_optim.cli", "--import", str(path), "show", "adamax"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "user_adamax" in proc.stdout and "beta2" in proc.stdout


def test_public_api_is_importable():
    for name in marin_optim.__all__:
        assert hasattr(marin_optim, name)
