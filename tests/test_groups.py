"""Parameter-group overrides: strict matching, per-group values, one global clip, logging."""

from __future__ import annotations

import haliax as hax
import haliax.nn as hnn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from marin_optim import AdamConfig, ConfigError, LionConfig, hyperparams
from marin_optim.transforms import global_norm

OVERRIDES = [
    {"params": ["*embed*", "*norm*"], "weight_decay": 0.0},
    {"params": ["lm_head*"], "lr_multiplier": 0.5, "beta2": 0.99, "name": "head"},
]


def _params():
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    return {
        "embed": {"weight": jax.random.normal(k[0], (10, 4))},
        "blocks": {"w": jax.random.normal(k[1], (4, 4)), "norm": {"scale": jnp.ones((4,))}},
        "lm_head": {"weight": jax.random.normal(k[2], (4, 10))},
    }


def _grads(params, seed=1):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(
        treedef, [3.0 * jax.random.normal(kk, x.shape) for kk, x in zip(keys, leaves, strict=True)]
    )


def test_groups_match_separate_optimizers_under_one_global_clip():
    base = dict(
        learning_rate=1e-2,
        warmup=0,
        lr_schedule="constant",
        weight_decay=0.1,
        default_weight_decay_mask=False,
    )
    cfg = AdamConfig(**base, max_grad_norm=1.0, group_overrides=OVERRIDES)
    params, grads = _params(), _grads(_params())
    tx = cfg.build(10)
    updates, state = tx.update(grads, tx.init(params), params)

    scale = min(1.0, 1.0 / float(global_norm(grads)))  # one clip over every group
    clipped = jax.tree.map(lambda g: g * scale, grads)

    def alone(cfg_kwargs, keys):
        sub_p = {k: params[k] for k in keys}
        sub_g = {k: clipped[k] for k in keys}
        t = AdamConfig(**{**base, **cfg_kwargs}, max_grad_norm=None).build(10)
        return t.update(sub_g, t.init(sub_p), sub_p)[0]

    u_head = alone({"learning_rate": 5e-3, "beta2": 0.99}, ["lm_head"])
    np.testing.assert_allclose(
        updates["lm_head"]["weight"], u_head["lm_head"]["weight"], rtol=1e-5, atol=1e-7
    )
    u_embed = alone({"weight_decay": 0.0}, ["embed"])
    np.testing.assert_allclose(updates["embed"]["weight"], u_embed["embed"]["weight"], rtol=1e-5, atol=1e-7)
    u_rest = alone({}, ["blocks"])
    np.testing.assert_allclose(updates["blocks"]["w"], u_rest["blocks"]["w"], rtol=1e-5, atol=1e-7)
    # norm is in group0 (no decay): differs from the default group's decayed update
    assert not np.allclose(updates["blocks"]["norm"]["scale"], u_rest["blocks"]["norm"]["scale"])

    hp = hyperparams(state)
    assert float(hp["learning_rate"]) == pytest.approx(1e-2)
    assert float(hp["head/learning_rate"]) == pytest.approx(5e-3)
    assert float(hp["group0/learning_rate"]) == pytest.approx(1e-2)
    assert float(hp["group0/weight_decay"]) == 0.0


def test_a_pattern_that_matches_nothing_is_an_error_listing_it():
    cfg = AdamConfig(group_overrides=[{"params": ["*embed*", "*nothing_here*"], "weight_decay": 0.0}])
    tx = cfg.build(10)
    with pytest.raises(ConfigError, match=r"\*nothing_here\*"):
        tx.init(_params())


def test_a_parameter_in_two_groups_is_an_error_naming_it():
    cfg = LionConfig(group_overrides=[{"params": ["embed*"]}, {"params": ["*weight"], "beta1": 0.8}])
    with pytest.raises(ConfigError, match=r"embed\.weight.*several groups"):
        cfg.build(10).init(_params())


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"params": ["x"], "beta_2": 0.9}, "did you mean 'beta2'"),
        ({"params": ["x"], "max_grad_norm": 2.0}, "global"),
        ({"params": []}, "params"),
        ({"weight_decay": 0.0}, "params"),
        ({"params": ["x"], "beta2": 1.5}, "group_overrides[0]"),
        ({"params": ["x"], "lr_multiplier": 0}, "lr_multiplier"),
        ({"params": ["x"], "name": "a b"}, "name"),
    ],
)
def test_bad_overrides_fail_at_construction(override, expected):
    with pytest.raises(ConfigError) as e:
        AdamConfig(group_overrides=[override])
    assert expected in str(e.value)


def test_a_group_scales_the_base_schedules_it_does_not_set():
    from marin_optim.config.groups import parameter_groups

    def group(**base: object) -> AdamConfig:
        override = base.pop("group")
        return parameter_groups(AdamConfig(learning_rate=1e-3, **base, group_overrides=[override]))[0].config

    # weight decay 0 switches a moving decay off; a half decay moves to half the end
    moving = {"weight_decay": 0.1, "weight_decay_end": 0.02, "weight_decay_schedule": "cosine"}
    off = group(**moving, group={"params": ["x"], "weight_decay": 0.0})
    assert (off.weight_decay, off.weight_decay_end, off.uses_weight_decay) == (0.0, 0.0, False)
    assert group(**moving, group={"params": ["x"], "weight_decay": 0.05}).weight_decay_end == pytest.approx(
        0.01
    )
    assert (
        group(**moving, group={"params": ["x"], "weight_decay_schedule": "constant"}).weight_decay_end is None
    )
    with pytest.raises(
        ConfigError, match=r"group_overrides\[0\]\.weight_decay=0\.1: .*give the group's weight_decay_end"
    ):
        AdamConfig(weight_decay=0.0, weight_decay_end=0.1, weight_decay_schedule="linear",
                   group_overrides=[{"params": ["x"], "weight_decay": 0.1}])  # fmt: skip
    # the learning rate's absolute start and floor follow the group's peak; its own ratio wins
    scaled = group(warmup_init_lr=1e-4, min_lr=1e-5, group={"params": ["x"], "lr_multiplier": 0.1})
    assert (scaled.warmup_init_lr, scaled.min_lr) == (pytest.approx(1e-5), pytest.approx(1e-6))
    ratio = group(min_lr=1e-5, group={"params": ["x"], "min_lr_ratio": 0.0})
    assert ratio.min_lr is None and float(ratio.lr_scheduler(100)(100)) == 0.0


def test_groups_on_a_haliax_module_by_path_and_class_name():
    Embed, Out = hax.Axis("embed", 4), hax.Axis("out", 3)
    model = {
        "proj": hnn.Linear.init(In=Embed, Out=Out, key=jax.random.PRNGKey(0)),
        "ln": hnn.RmsNorm.init(Embed),
    }
    cfg = AdamConfig(
        warmup=0,
        lr_schedule="constant",
        group_overrides=[{"params": ["*RmsNorm*"], "learning_rate": 1e-3, "name": "norms"}],
    )
    rows = cfg.describe_params(model)
    assert ("ln.weight", "norms", False) in rows
    assert ("proj.weight", "default", True) in rows
    assert ("proj.bias", "default", False) in rows
    tx = cfg.build(10)
    state = tx.init(model)
    grads = jax.tree.map(jnp.ones_like, model)
    updates, state = jax.jit(tx.update)(grads, state, model)
    new = optax.apply_updates(model, updates)
    assert isinstance(new["proj"].weight, hax.NamedArray)
    assert float(hyperparams(state)["norms/learning_rate"]) == pytest.approx(1e-3)
    assert float(hyperparams(state)["learning_rate"]) == pytest.approx(6e-4)


def test_the_parameter_table_gives_each_branch_and_a_wrappers_base_its_rates():
    from marin_optim import OptimizerConfig
    from marin_optim.speedrun import ModelConfig
    from marin_optim.speedrun.trainer import abstract_params

    params = abstract_params(ModelConfig())

    def rows(spec: dict) -> dict[str, list[str]]:  # path -> [group, learning_rate, weight_decay]
        table = OptimizerConfig.from_dict(spec).param_table(params).split("\n\n")[0]
        return {line.split()[0]: line.split()[2:5] for line in table.splitlines()[1:-1]}

    # Muon: the matrices at learning_rate without decay, the rest at adam_lr with adam_weight_decay
    muon = rows(
        {
            "type": "muon",
            "learning_rate": 0.02,
            "adam_lr": 3e-3,
            "weight_decay": 0.0,
            "adam_weight_decay": 0.1,
        }
    )
    assert muon["layers.stacked.mlp.up_proj.weight"] == ["default", "0.02", "-"]
    assert muon["lm_head.weight"] == ["default", "0.003", "0.1"]
    assert muon["final_norm.weight"] == ["default", "0.003", "-"]  # the default mask skips norms
    # Scion's sign steps at a quarter of its rate
    assert rows({"type": "scion", "learning_rate": 0.02})["embed.weight"][1] == "0.005"
    # a wrapper's table is its base's, groups included
    base = {
        "type": "adamw",
        "learning_rate": 3e-3,
        "group_overrides": [{"params": ["lm_head*"], "lr_multiplier": 0.5, "name": "head"}],
    }
    assert rows({"type": "cautious_wrapper", "base": base})["lm_head.weight"][:2] == ["head", "0.0015"]
