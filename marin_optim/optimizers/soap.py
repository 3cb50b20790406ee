"""SOAP (Vyas et al., 2024): Adam in the eigenbasis of Shampoo's preconditioner, as Levanter has it."""

from __future__ import annotations

from dataclasses import dataclass

import optax

from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError
from marin_optim.transforms.soap import scale_by_soap
from marin_optim.validation import check_choice, check_int, where_of

GROUP = "Matrix-aware (orthogonalised updates)"

SOAP_DTYPES = (None, "float32", "bfloat16")


@OptimizerConfig.register_subclass("soap")
@dataclass(frozen=True)
class SoapConfig(OptimizerConfig):
    """SOAP: Adam run in the eigenbasis of Shampoo's preconditioner (arXiv:2409.11321).

    Per parameter (per layer of scan-stacked ones; after merging small axes and cutting into
    blocks), with ``G`` the clipped gradient:

        L <- b_s L + (1 - b_s) G G^T,   R <- b_s R + (1 - b_s) G^T G       (b_s = shampoo_beta)
        m <- b1 m + (1 - b1) G,  G' = Q_L^T G Q_R,  v <- b2 v + (1 - b2) G'^2
        u  = Q_L (Q_L^T m Q_R / (sqrt(v) + epsilon)) Q_R^T * sqrt(1 - b2^t) / (1 - b1^t)
        p <- p - lr_t (u + weight_decay p)

    ``Q_L``, ``Q_R`` are the eigenbases of ``L``, ``R``: by ``eigh`` on the first step (whose
    update is zero), then one QR power-iteration step every ``precondition_frequency`` steps. An
    axis of ``max_precond_dim`` or more is not rotated; 1-D parameters (and blocks) get one
    ``d x d`` rotation. Levanter's fields, defaults and numbers (``type: soap``); every parameter
    is updated this way. ``marin_optim.transforms.soap`` has the pieces.
    """

    weight_decay: float = 0.0
    """Decoupled weight decay, multiplied by the learning rate (Levanter's SOAP default: 0)."""
    beta1: float = 0.95
    """Decay rate of the first moment (kept in the parameter's own basis)."""
    beta2: float = 0.95
    """Decay rate of the second moment (kept in the eigenbasis)."""
    shampoo_beta: float = 0.95
    """Decay rate of the factors L = EMA(G G^T) and R = EMA(G^T G); a negative value: beta2."""
    epsilon: float = 1e-8
    """Added to sqrt(v) in the denominator, and to the factors' diagonal before the first eigh."""
    schedule_list: list[str] | None = None
    """Levanter declares this field on soap but never reads it: accepted as null only."""
    precondition_frequency: int = 10
    """Refresh the eigenbases (one QR power-iteration step) every this many steps."""
    max_precond_dim: int = 10000
    """An axis (after merging and blocking) of this size or larger gets no rotation."""
    merge_small_dims: bool = True
    """Merge consecutive axes of a parameter so each merged size is near target_merged_dim_size."""
    one_diag: bool = False
    """Rotate only the first eligible axis of each block (the others stay diagonal, like Adam)."""
    target_merged_dim_size: int = 2048
    """The size merge_small_dims aims at."""
    mu_dtype: str | None = None
    """Storage dtype of both Adam moments: float32, bfloat16, or None (the parameter's)."""
    precond_dtype: str | None = None
    """Storage dtype of the factors and eigenbases: float32, bfloat16, or None (float32)."""
    partition_grads_into_blocks: bool = True
    """Cut every rotated axis longer than block_size into blocks (zero-padded), each with its own
    factors and bases."""
    block_size: int = 256
    """Block size of partition_grads_into_blocks (also the padding multiple of every block axis)."""

    def validate(self) -> None:
        super().validate()
        if self.schedule_list is not None:
            raise ConfigError(
                f"{where_of(self, 'schedule_list')}={self.schedule_list!r}: Levanter's soap declares this "
                "field but never reads it (it changes nothing there); remove it and set the schedule "
                "with lr_schedule"
            )
        if not -1.0 <= self.shampoo_beta < 1.0:
            raise ConfigError(
                f"{where_of(self, 'shampoo_beta')}={self.shampoo_beta!r}: must be in [0, 1), "
                "or negative (below 0 down to -1) for beta2"
            )
        check_int(self, "precondition_frequency", 1)
        check_int(self, "max_precond_dim", 1)
        check_int(self, "target_merged_dim_size", 1)
        check_int(self, "block_size", 1)
        check_choice(self, "mu_dtype", SOAP_DTYPES)
        check_choice(self, "precond_dtype", SOAP_DTYPES)
        if self.partition_grads_into_blocks and self.block_size >= self.max_precond_dim:
            raise ConfigError(
                f"{where_of(self, 'block_size')}={self.block_size!r}: must be < "
                f"max_precond_dim={self.max_precond_dim!r} (a block this large is never rotated)"
            )

    def direction(self) -> optax.GradientTransformation:
        return scale_by_soap(
            b1=self.beta1,
            b2=self.beta2,
            shampoo_beta=self.shampoo_beta if self.shampoo_beta >= 0 else self.beta2,
            eps=self.epsilon,
            precondition_frequency=self.precondition_frequency,
            max_precond_dim=self.max_precond_dim,
            merge_dims=self.merge_small_dims,
            target_merged_dim_size=self.target_merged_dim_size,
            block_size=self.block_size if self.partition_grads_into_blocks else None,
            one_diag=self.one_diag,
            mu_dtype=self.mu_dtype,
            precond_dtype=self.precond_dtype,
        )
