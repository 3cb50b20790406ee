"""Dion: low-rank orthonormalised updates by power iteration with error feedback."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import optax

from marin_optim.config import OptimizerConfig
from marin_optim.optimizers.muon import MatrixAdamWConfig
from marin_optim.transforms.dion import (
    QR_METHODS,
    scale_by_dion,
    scale_by_inverse_sqrt_fan_in_learning_rate,
)
from marin_optim.validation import check_choice, check_int, check_range

GROUP = "Matrix-aware (orthogonalised updates)"


@OptimizerConfig.register_subclass("dion")
@dataclass(frozen=True)
class DionConfig(MatrixAdamWConfig):
    """Dion: rank-r orthonormal updates by amortised power iteration with error feedback.

    Matrix update (Ahn et al., 2025, "Dion: Distributed Orthonormalized Updates",
    https://arxiv.org/abs/2504.05295, Algorithm 1; see
    :func:`~marin_optim.transforms.dion.scale_by_dion`), for an ``m x n`` (out x in) matrix::

        B = M + G;  P = orthonormalize(B Q);  R = B^T P;  M = B - (1 - momentum) P R^T;  Q = colnorm(R)
        p = p - lr (sqrt(m / n) P Q^T + wd p)

    with rank ``r = rank_multiple_of * ceil(rank_fraction * min(m, n) / rank_multiple_of)``;
    ``orthonormalize`` is randomized Cholesky QR (``qr_method: rcqr``, the reference's) or
    Householder QR (``qr``), the same ``P`` up to column signs.
    Embeddings, norms and biases use AdamW at ``adam_lr``; the output head uses AdamW at
    ``learning_rate / sqrt(d_model)`` (Dion's and OLMo-core's rule; logged as
    ``lm_head/learning_rate``; ``scale_head_lr: false`` puts it with the embeddings instead).
    Set ``adam_lr`` to ``learning_rate`` for Dion's own single-learning-rate setup.
    """

    learning_rate: float = 0.02
    """Peak learning rate of the Dion (matrix) branch."""
    weight_decay: float = 0.01
    """Decoupled weight decay in every branch, multiplied by each branch's learning rate (Dion's default)."""
    momentum: float = 0.95
    """Dion's mu: the fraction of the captured low-rank part that stays in the momentum buffer."""
    rank_fraction: float = 1.0
    """Rank of the update as a fraction of min(out, in), in (0, 1]."""
    rank_multiple_of: int = 1
    """Round the rank up to a multiple of this."""
    dion_epsilon: float = 1e-8
    """Added to the column norms of R."""
    scale_head_lr: bool = True
    """Update the output head with AdamW at learning_rate / sqrt(d_model) (Dion's rule); false:
    at adam_lr, like the embeddings."""
    seed: int = 0
    """Seed of the random initial power-iteration factor Q (and of rcqr's sketch)."""
    qr_method: Literal["rcqr", "qr"] = "rcqr"
    """How B Q is orthonormalised: rcqr (randomized Cholesky QR: matrix products, one small QR and
    a Cholesky factorisation; a matrix it cannot orthonormalise is redone by Householder QR) or qr
    (Householder QR of B Q)."""
    rcqr_oversample: float = 1.25
    """At least 1: rcqr sketches B Q down to ceil(rcqr_oversample * r) rows where it has more."""

    BRANCHES: ClassVar[dict[str, str]] = {
        "matrix": "dion",
        "embedding": "adam",
        "head": "lm_head",
        "vector": "adam",
    }

    def validate(self) -> None:
        super().validate()
        check_range(self, "rank_fraction", 0.0, 1.0, lo_open=True)
        check_int(self, "rank_multiple_of")
        check_range(self, "dion_epsilon", 0.0)
        check_int(self, "seed", 0)
        check_choice(self, "qr_method", QR_METHODS)
        check_range(self, "rcqr_oversample", 1.0)

    def branch_rates(self) -> dict[str, tuple[float | str, float]]:
        rates = super().branch_rates()
        if self.scale_head_lr:
            rates["lm_head"] = (f"{self.learning_rate:g}/sqrt(fan_in)", self.weight_decay)
        return rates

    @property
    def branches(self) -> dict[str, str]:
        return dict(self.BRANCHES) if self.scale_head_lr else {**self.BRANCHES, "head": "adam"}

    def update_rule(self, hp: Mapping[str, Any]) -> optax.GradientTransformation:
        labeler = self.labeler()
        dion = scale_by_dion(
            labeler.matrix_axes,
            momentum=self.momentum,
            rank_fraction=self.rank_fraction,
            rank_multiple_of=self.rank_multiple_of,
            eps=self.dion_epsilon,
            seed=self.seed,
            qr_method=self.qr_method,
            rcqr_oversample=self.rcqr_oversample,
        )
        branches = {
            "dion": self.branch(hp, dion, hp["learning_rate"]),
            "adam": self.adam_branch(hp, hp["adam_learning_rate"]),
        }
        if self.scale_head_lr:
            head_lr = scale_by_inverse_sqrt_fan_in_learning_rate(hp["learning_rate"], labeler.matrix_axes)
            branches["lm_head"] = self.adam_branch(hp, head_lr)
        return self.partition(branches)
