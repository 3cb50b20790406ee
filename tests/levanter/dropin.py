"""Drop-in harness: a Levanter optimizer block loaded into marin_optim, and both updates compared.

The comparison: the same parameters (a tiny Levanter Llama's, haliax modules as Levanter's
masks expect them), the same 10 gradients (seeded normals, scaled like a language model's),
10 jitted updates of each implementation; the measure is the relative difference of the
total parameter change, ``||dW_ours - dW_levanter|| / ||dW_levanter||`` over every leaf.
"""

from __future__ import annotations

import dataclasses
import io
from functools import cache
from typing import Any

import draccus
import equinox as eqx
import haliax as hax
import jax
import jax.numpy as jnp
import levanter.optim as lo
import numpy as np
import yaml
from levanter.models.llama import LlamaConfig

from marin_optim import OptimizerConfig

# Levanter's mars, rmsprop and scion call jax.tree_map, which jax 0.10 removed: the reference
# implementations run with the alias restored (jax.tree.map is the same function).
if not hasattr(jax, "tree_map"):
    jax.tree_map = jax.tree.map  # type: ignore[attr-defined]

ELEMENTWISE = 1e-5
"""Elementwise optimizers: the same float32 operations, some in another order; 10 steps of
rounding give ~1e-6 of the parameter change, so 1e-5 leaves room and no real difference hides
below it."""

NEWTON_SCHULZ = 2e-5
"""Newton-Schulz optimizers: both iterate in float32 with the same operations (one iteration alone
is bitwise Levanter's), but the input carries float32 rounding (~1e-7: a norm summed in another
order, a fused multiply-add), which the iterations amplify: a relative input perturbation of 6e-8
moves a 5-step result by 8e-7 and a 10-step one by 4e-6. Measured: <= 1.1e-6 with 5 or 8 steps,
6e-6 with scion's 10; any difference of meaning is above 1e-3."""

HYPERBALL = 1e-4
"""adamH, muonH: Levanter computes each step as ``R normalize(W - lr R u) - W``, a float32 difference
of two numbers ~1/lr (1/6e-4) times larger than it, which loses ~4 digits (~6e-5 relative per
step); ours computes the same step without the cancellation. Against float64 over the 10 steps
ours is off by 1.3e-5 (adamH) and 1.4e-5 (muonH), Levanter's by 2.8e-5 and 4.2e-5
(tests/levanter/test_dropin_new.py and test_dropin_muonh.py assert ours is the closer)."""

KRON = 1e-5
"""kron: the same float32 operations, but contracted in another order (Levanter forms ``A``, the
Gram matrices and ``Q^T Q G`` with one einsum each, ours axis by axis), and every fit feeds the
next; measured 3.4e-6 (default block, a fit every step) and 2.5e-6 (blocks of 32, one_diag,
normalised gradients, no momentum, fits every second step). A wrong factor, probe or schedule
moves the change by more than 1e-2."""

TOLERANCE = {
    **dict.fromkeys(("muon", "scion", "namo", "namoD", "grug_muon"), NEWTON_SCHULZ),
    **dict.fromkeys(("adamH", "muonH"), HYPERBALL),
    "kron": KRON,
}
"""Per Levanter name, where it is not :data:`ELEMENTWISE`."""

PLAIN_FIELDS = {"kron"}
"""Levanter names whose config draccus cannot encode or decode (see :func:`levanter_block`)."""

STEPS = 10
TRAIN_STEPS = 100
"""``num_train_steps`` both configs are built with: 1 warmup step, then the cosine decay."""


def levanter_names() -> list[str]:
    """Every optimizer name Levanter itself registers (not the ``marin_optim.*`` names we add)."""
    return sorted(
        name
        for name, cls in lo.OptimizerConfig.get_known_choices().items()
        if not issubclass(cls, OptimizerConfig)
    )


def levanter_class(name: str) -> type:
    return lo.OptimizerConfig.get_choice_class(name)


def levanter_block(name: str, **fields: Any) -> dict[str, Any]:
    """Levanter's ``name`` with every field at its default (``fields`` replaced), as the
    ``optimizer:`` block of a YAML file carries it (encoded by draccus, through YAML text).

    Levanter's ``kron`` cannot go through draccus (a field typed ``float | Callable`` has no
    decoder and one typed by a ``TypeVar`` no encoder: ``type: kron`` in a Levanter YAML fails in
    Levanter itself), so its block is its dataclass fields' plain values."""
    cls = levanter_class(name)
    if name in PLAIN_FIELDS:
        cfg = cls(**fields)
        return yaml.safe_load(yaml.safe_dump({f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}))
    cfg = draccus.decode(cls, fields) if fields else cls()
    return yaml.safe_load(yaml.safe_dump(draccus.encode(cfg)))


def load_ours(name: str, block: dict[str, Any]) -> OptimizerConfig:
    """The block loaded into our registry unchanged, as a YAML file naming ``type: name``."""
    text = yaml.safe_dump({"type": name, **block})
    return draccus.load(OptimizerConfig, io.StringIO(text))


def load_levanter(name: str, block: dict[str, Any]) -> Any:
    if name in PLAIN_FIELDS:
        return levanter_class(name)(**block)
    return draccus.decode(levanter_class(name), block)


@cache
def llama_params() -> Any:
    llama = LlamaConfig(
        hidden_dim=64, intermediate_dim=128, num_layers=2, num_heads=2, num_kv_heads=2, max_seq_len=64
    )
    model = llama.build(hax.Axis("vocab", 128), key=jax.random.PRNGKey(0))
    return eqx.filter(model, eqx.is_array)


def gradients(step: int) -> Any:
    params = llama_params()
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1000 + step), len(leaves))
    return jax.tree.unflatten(
        treedef, [0.01 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    )


def parameter_change(config: Any, steps: int = STEPS, dtype: Any = jnp.float32) -> list[np.ndarray]:
    """Every leaf's ``W_steps - W_0`` (float64) after ``steps`` updates of ``config.build``, with
    parameters and gradients in ``dtype`` (the gradients drawn in float32, then cast)."""
    tx = config.build(TRAIN_STEPS)
    grads = [gradients(i) for i in range(steps)]
    with jax.enable_x64(dtype == jnp.float64):
        params = jax.tree.map(lambda x: jnp.asarray(x, dtype), llama_params())

        @eqx.filter_jit
        def step(p: Any, state: Any, g: Any) -> tuple[Any, Any]:
            updates, state = tx.update(g, state, p)
            return eqx.apply_updates(p, updates), state

        p, state = params, tx.init(params)
        for g in grads:
            p, state = step(p, state, jax.tree.map(lambda x: jnp.asarray(x, dtype), g))
        return [
            np.asarray(a, np.float64) - np.asarray(b, np.float64)
            for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(params), strict=True)
        ]


def relative_difference(ours: list[np.ndarray], theirs: list[np.ndarray]) -> float:
    num = sum(float(np.sum((a - b) ** 2)) for a, b in zip(ours, theirs, strict=True))
    den = sum(float(np.sum(b**2)) for b in theirs)
    return (num / den) ** 0.5


def compare(name: str, **fields: Any) -> float:
    """Levanter's ``name`` and ours loaded from the same block: relative difference of the change."""
    block = levanter_block(name, **fields)
    return relative_difference(
        parameter_change(load_ours(name, block)), parameter_change(load_levanter(name, block))
    )
