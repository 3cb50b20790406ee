"""PSGD Kron (Li, 2018-2024): SGD with a fitted Kronecker-factored preconditioner, as Levanter has it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optax

from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError
from marin_optim.transforms.kron import MEMORY_SAVE_MODES, PRECISIONS, scale_by_kron
from marin_optim.validation import check_choice, check_int, check_positive, check_range, where_of

GROUP = "Second-order"

KRON_DTYPES = (None, "float32", "bfloat16")
UPDATE_CLIP_RMS = 1.1
"""Levanter's Kron clips every leaf of its preconditioned update to this RMS (fixed, not a field)."""


@OptimizerConfig.register_subclass("kron")
@dataclass(frozen=True)
class KronConfig(OptimizerConfig):
    """PSGD Kron: momentum preconditioned by ``P = Q^T Q``, ``Q`` a Kronecker product of per-axis
    triangular (or diagonal) factors fitted online (arXiv:1809.10232, arXiv:1512.04202; psgd_torch).

    Per parameter (per layer of scan-stacked ones; after merging small axes and cutting into
    blocks), with ``g`` the clipped gradient and ``t`` the step::

        m <- beta1 m + (1 - beta1) g,      m^ = m / (1 - beta1^t)
        on a fit step:  Q <- fit(Q, m^ + damping, probe)      (one Lie-group gradient step)
        u  = P m^ / max(1, RMS(P m^) / 1.1)                    (per leaf)
        p <- p - lr_t (u + weight_decay p)

    The fit (``marin_optim.transforms.kron``) runs every step for ``update_prob_flat_start`` steps,
    then ever more rarely, down to every ``1 / preconditioner_update_probability``-th step.
    Levanter's fields, defaults and numbers (``type: kron``); its probes' key lives in the
    optimizer state (seeded by ``rng_seed``; Levanter's is 0), so runs are reproducible and a
    resumed run continues the same stream. Every parameter is updated this way.
    """

    beta1: float = 0.9
    """Momentum decay (0: no momentum)."""
    normalize_grads: bool = False
    """Divide every gradient leaf by its norm first (then max_grad_norm is not applied)."""
    preconditioner_update_probability: float = 0.05
    """The fit frequency the schedule anneals to (0.05: every 20th step)."""
    update_prob_flat_start: int = 500
    """Steps of fitting every step before the anneal (exp(-0.001 (t - flat_start)))."""
    max_size_triangular: int = 25000
    """An axis larger than this gets a diagonal factor."""
    min_ndim_triangular: int = 2
    """A tensor with fewer axes than this gets only diagonal factors (vectors, by default)."""
    memory_save_mode: str | None = None
    """None: every eligible axis triangular; one_diag: the largest axis diagonal; all_diag: all."""
    preconditioner_lr: float = 0.1
    """Step size of the fit."""
    preconditioner_init_scale: float = 1.0
    """Q starts as this (split evenly over the factors) times the identity."""
    mu_dtype: str | None = None
    """Storage dtype of the momentum: float32, bfloat16, or None (the parameter's)."""
    precond_dtype: str | None = None
    """Storage dtype of the factors: float32, bfloat16, or None (float32)."""
    precond_update_precision: str | None = "tensorfloat32"
    """Matmul precision of the fit: bfloat16, tensorfloat32, float32 (None: JAX's default)."""
    precond_grads_precision: str | None = None
    """Matmul precision of applying P (None: JAX's default)."""
    lax_map_scanned_layers: bool = False
    """Map over scan-stacked layers with lax.map (less memory) instead of vmap."""
    lax_map_batch_size: int = 8
    """Layers per lax.map step when lax_map_scanned_layers."""
    merge_small_dims: bool = True
    """Merge consecutive axes of a parameter so each merged size is near target_merged_dim_size."""
    target_merged_dim_size: int = 8192
    """The size merge_small_dims aims at."""
    partition_grads_into_blocks: bool = True
    """Cut every triangular axis longer than block_size into blocks (zero-padded), each with its
    own factors."""
    block_size: int = 256
    """Block size of partition_grads_into_blocks (also the padding multiple of every block axis)."""
    params_sharding: Any = None
    """Levanter's per-parameter PartitionSpec tree: not a config value here; null only (the state
    follows the parameters' own sharding)."""
    preconditioner_sharding: list[str | None] | None = None
    """Levanter's PartitionSpec for the factors: null only (XLA places them from the parameters')."""
    weight_decay: float = 0.1
    """Decoupled weight decay, multiplied by the learning rate."""
    rng_seed: int = 0
    """Seed of the probes' PRNG key (kept and advanced in the optimizer state; Levanter's: 0)."""

    def validate(self) -> None:
        super().validate()
        check_range(self, "preconditioner_update_probability", 0.0, 1.0, lo_open=True)
        check_int(self, "update_prob_flat_start", 0)
        check_int(self, "max_size_triangular", 0)
        check_int(self, "min_ndim_triangular", 0)
        check_choice(self, "memory_save_mode", MEMORY_SAVE_MODES)
        check_positive(self, "preconditioner_lr")
        check_positive(self, "preconditioner_init_scale")
        check_choice(self, "mu_dtype", KRON_DTYPES)
        check_choice(self, "precond_dtype", KRON_DTYPES)
        check_choice(self, "precond_update_precision", PRECISIONS)
        check_choice(self, "precond_grads_precision", PRECISIONS)
        check_int(self, "lax_map_batch_size", 1)
        check_int(self, "target_merged_dim_size", 1)
        check_int(self, "block_size", 1)
        check_int(self, "rng_seed", 0)
        for name in ("params_sharding", "preconditioner_sharding"):
            if getattr(self, name) is not None:
                raise ConfigError(
                    f"{where_of(self, name)}={getattr(self, name)!r}: accepted as null only; marin_optim's "
                    "kron keeps its state sharded from the parameters' own sharding (shard the model instead)"
                )

    @property
    def clip_norm(self) -> float | None:
        """Levanter's Kron skips the global clip when it normalises the gradients."""
        return None if self.normalize_grads else super().clip_norm

    def direction(self) -> optax.GradientTransformation:
        return optax.chain(
            scale_by_kron(
                b1=self.beta1,
                normalize_grads=self.normalize_grads,
                preconditioner_update_probability=self.preconditioner_update_probability,
                update_prob_flat_start=self.update_prob_flat_start,
                max_size_triangular=self.max_size_triangular,
                min_ndim_triangular=self.min_ndim_triangular,
                memory_save_mode=self.memory_save_mode,
                preconditioner_lr=self.preconditioner_lr,
                preconditioner_init_scale=self.preconditioner_init_scale,
                mu_dtype=self.mu_dtype,
                precond_dtype=self.precond_dtype,
                precond_update_precision=self.precond_update_precision,
                precond_grads_precision=self.precond_grads_precision,
                lax_map_scanned_layers=self.lax_map_scanned_layers,
                lax_map_batch_size=self.lax_map_batch_size,
                merge_dims=self.merge_small_dims,
                target_merged_dim_size=self.target_merged_dim_size,
                block_size=self.block_size if self.partition_grads_into_blocks else None,
                seed=self.rng_seed,
            ),
            optax.clip_by_block_rms(UPDATE_CLIP_RMS),
        )
