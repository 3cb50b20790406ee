"""Levanter's data x model mesh on 8 simulated devices: our optimizer state is sharded like the parameters."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import haliax as hax, jax
    from levanter.models.llama import LlamaConfig
    from levanter.tracker.json_logger import JsonLoggerConfig
    from levanter.trainer import Trainer, TrainerConfig
    from levanter.utils.mesh import MeshConfig
    import marin_optim.levanter
    from marin_optim import OptimizerConfig

    def shares(tree):
        # (shape, per-device share of the bytes) of every parameter-sized leaf
        out = []
        for x in jax.tree.leaves(tree):
            a = x.array if isinstance(x, hax.NamedArray) else x
            if a.size >= 1024:  # small replicated scalars and guard windows aside
                out.append((list(a.shape), a.addressable_shards[0].data.nbytes / a.nbytes))
        return out

    optimizer = OptimizerConfig.from_dict(json.loads(sys.argv[1]))
    llama = LlamaConfig(hidden_dim=64, intermediate_dim=128, num_layers=2, num_heads=2, num_kv_heads=2,
                        max_seq_len=64)
    config = TrainerConfig(mesh=MeshConfig(axes={"data": 4, "model": 2}), require_accelerator=False,
                           tracker=JsonLoggerConfig(), num_train_steps=10, train_batch_size=8,
                           log_jaxprs=False, log_xla_hlo=False)
    config.initialize()
    loss = lambda model, ex, *, key=None: model.compute_next_token_loss(ex, key=key)
    with Trainer(config, optimizer.build(10), loss) as trainer:
        build = lambda: llama.build(hax.Axis("vocab", 128), key=jax.random.PRNGKey(1))
        state = trainer.initial_state(jax.random.PRNGKey(0), model_init=build)
        print("SHARES", json.dumps([shares(state.model), shares(state.opt_state)]))
    """
)


@pytest.mark.parametrize(
    "optimizer",
    [
        # adamw's moments: the extended tier's (muon's AdamW branch has them too)
        pytest.param({"type": "adamw"}, marks=pytest.mark.extended),
        {"type": "muon"},
        {"type": "lion", "skip_bad_steps": True},
    ],
    ids=lambda o: o["type"],
)
def test_optimizer_state_is_sharded_like_the_parameters(tmp_path, optimizer):
    """Every parameter-sized state leaf (moments, momentum) has its parameter's sharding: embed over
    `data`, mlp and heads over `model`. (Dion's low-rank factors are not parameter-shaped and are
    still replicated.)"""
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(optimizer)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**_env(), "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("SHARES"))
    params, state = json.loads(line.split(" ", 1)[1])
    by_shape = {tuple(shape): share for shape, share in params}
    assert len(by_shape) == len({(tuple(s), x) for s, x in params})  # one sharding per shape
    assert max(by_shape.values()) <= 0.25  # every parameter is sharded over data (4) at least
    assert len(state) >= len(params)
    for shape, share in state:
        assert tuple(shape) in by_shape, shape
        assert share == by_shape[tuple(shape)], shape


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)
