"""Muon and NorMuon: orthogonalised momentum for hidden matrices, AdamW for everything else.

Both split the parameters with :class:`~marin_optim.labels.ParamLabeler` (hidden matrices vs
embeddings, the output head and vectors; print the split with ``describe_labels``) and build one
``optax.multi_transform`` inside the base template, so the global gradient-norm clip sees every
parameter (Levanter clips only the AdamW branch) and both learning rates are injected
(``learning_rate`` for the matrices, ``adam_learning_rate`` for the rest), each following the
configured schedule shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import optax

from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError
from marin_optim.labels import ParamLabeler
from marin_optim.transforms.cautious_weight_decay import add_decayed_weights
from marin_optim.transforms.muon import LR_SCALINGS, scale_by_muon, scale_by_normuon
from marin_optim.transforms.newton_schulz import NS_DTYPES, NS_PRESETS
from marin_optim.validation import check_choice, check_int, check_positive

GROUP = "Matrix-aware (orthogonalised updates)"

PyTree = Any


@dataclass(frozen=True)
class MatrixOptimizerConfig(OptimizerConfig):
    """Base of optimizers that update hidden weight matrices apart from everything else.

    Not registered itself. Subclasses set ``BRANCHES`` (kind -> branch name) and build one
    ``optax.multi_transform`` over those branches in ``update_rule``; weight decay (plain or
    cautious, with the configured mask) is applied in every branch, scaled by that branch's LR.
    """

    param_labels: dict[str, str] | None = None
    """Overrides of the matrix/embedding/head/vector split: {fnmatch pattern on the parameter path:
    kind}, e.g. {"*lm_head*": "head", "*conv*": "matrix(in=(1, 2), out=0)"}. A pattern matching
    nothing is an error; print the result with `describe_labels`."""
    cautious_weight_decay: bool = False
    """Decay a coordinate only where the update has the same sign as the parameter (cautious WD)."""

    BRANCHES: ClassVar[dict[str, str]] = {}

    def validate(self) -> None:
        super().validate()
        if self.param_labels is not None:
            if not isinstance(self.param_labels, Mapping):
                raise ConfigError(
                    f"{self._name()}.param_labels={self.param_labels!r}: expected a mapping {{pattern: kind}}"
                )
            try:
                self.labeler()  # parses every value
            except ConfigError as e:
                raise ConfigError(f"{self._name()}.{e}") from None

    def _name(self) -> str:
        try:
            return type(self).get_choice_name(type(self))
        except ConfigError:
            return type(self).__name__

    def labeler(self) -> ParamLabeler:
        """The labelling rules with this config's overrides."""
        return ParamLabeler(dict(self.param_labels or {}))

    @property
    def branches(self) -> dict[str, str]:
        """Which ``multi_transform`` branch updates each kind of parameter."""
        return dict(self.BRANCHES)

    def describe_labels(self, params: PyTree) -> str:
        """A printable table: every parameter's kind, the branch that updates it, its matrix view."""
        return self.labeler().describe(params, branches=self.branches)

    def param_table(self, params: PyTree) -> str:
        """The groups and weight decay of every parameter, then its kind and update rule."""
        return super().param_table(params) + "\n\n" + self.describe_labels(params)

    def weight_decay_step(self, hp: Mapping[str, Any]) -> list[optax.GradientTransformation]:
        """``[decayed weights]`` (cautious if configured) when weight decay is on, else ``[]``."""
        if not self.uses_weight_decay:
            return []
        return [
            add_decayed_weights(
                hp["weight_decay"], self.build_weight_decay_mask(), cautious=self.cautious_weight_decay
            )
        ]

    def branch(
        self, hp: Mapping[str, Any], direction: optax.GradientTransformation, learning_rate: Any
    ) -> optax.GradientTransformation:
        """One branch of :meth:`partition`: ``direction``, this config's weight decay, then ``-lr``.

        ``learning_rate`` is the branch's (injected) learning rate, or a transformation that
        applies it (e.g. Dion's per-matrix rate for the output head).
        """
        if not isinstance(learning_rate, optax.GradientTransformation):
            learning_rate = optax.scale_by_learning_rate(learning_rate)
        return optax.chain(direction, *self.weight_decay_step(hp), learning_rate)

    def partition(self, branches: Mapping[str, optax.GradientTransformation]) -> optax.GradientTransformation:
        """``optax.multi_transform`` over ``branches``, routed by :attr:`branches`."""
        return optax.multi_transform(dict(branches), self.labeler().branch_labels(self.branches))


@dataclass(frozen=True)
class MatrixAdamWConfig(MatrixOptimizerConfig):
    """Base of matrix optimizers whose other parameters take AdamW at their own peak ``adam_lr``.

    Not registered itself. ``adam_lr`` follows the configured schedule shape and is injected as
    ``adam_learning_rate``.
    """

    adam_lr: float = 6e-4
    """Peak learning rate of the AdamW branch (embeddings, norms, biases, and the output head
    where the optimizer does not route it elsewhere); same schedule shape."""
    beta1: float = 0.9
    """AdamW branch: decay rate of the first moment."""
    beta2: float = 0.95
    """AdamW branch: decay rate of the second moment."""
    epsilon: float = 1e-8
    """AdamW branch: added to sqrt(v_hat)."""

    def validate(self) -> None:
        super().validate()
        check_positive(self, "adam_lr")

    def hyperparameter_schedules(self, num_train_steps: int) -> dict[str, Any]:
        schedules = super().hyperparameter_schedules(num_train_steps)
        schedules["adam_learning_rate"] = self.lr_scheduler(num_train_steps, override_lr=self.adam_lr)
        return schedules

    def adam_branch(self, hp: Mapping[str, Any], learning_rate: Any) -> optax.GradientTransformation:
        """AdamW (``beta1``, ``beta2``, ``epsilon``) at ``learning_rate``, as a :meth:`branch`."""
        return self.branch(hp, optax.scale_by_adam(self.beta1, self.beta2, self.epsilon), learning_rate)


def _check_ns_fields(cfg: Any, steps_field: str) -> None:
    check_int(cfg, steps_field)
    check_choice(cfg, "ns_coefficients", tuple(NS_PRESETS))
    check_choice(cfg, "ns_dtype", tuple(NS_DTYPES))


@OptimizerConfig.register_subclass("muon")
@dataclass(frozen=True)
class MuonConfig(MatrixAdamWConfig):
    """Muon: Newton-Schulz-orthogonalised momentum for hidden matrices, AdamW for the rest.

    Matrix update (Jordan et al., 2024, https://kellerjordan.github.io/posts/muon/; see
    :func:`~marin_optim.transforms.muon.scale_by_muon`)::

        M = momentum M + G;  U = momentum M + G (nesterov) or M
        p = p - lr (scale(out, in) NS(U) + wd p)

    with ``scale = sqrt(max(1, out/in))`` (``lr_scaling: spectral``) or ``0.2 sqrt(max(out,
    in))`` (``rms_norm``, Liu et al., 2025, https://arxiv.org/abs/2502.16982: use AdamW-like
    learning rate and weight decay). Embeddings, the output head, norms and biases use AdamW at
    ``adam_lr`` (same schedule shape). Fields follow Levanter's ``muon``, with three differences:
    the matrix learning rate ``learning_rate`` defaults to 0.02 (Levanter's to 6e-4, beside an
    ``lr`` of 0.02 it never reads), the Newton-Schulz coefficients are ``ns_coefficients``
    (default ``standard``; Levanter's ``coefficient_type`` defaults to quintic), and one clip
    covers every parameter (Levanter clips only the AdamW branch).
    """

    learning_rate: float = 0.02
    """Peak learning rate of the Muon (matrix) branch."""
    weight_decay: float = 0.0
    """Decoupled weight decay in both branches, multiplied by each branch's learning rate."""
    momentum: float = 0.95
    """Momentum of the matrix branch (M = momentum M + G)."""
    nesterov: bool = True
    """Orthogonalise momentum M + G (Nesterov) instead of M."""
    backend_steps: int = 5
    """Newton-Schulz iterations."""
    muon_epsilon: float = 1e-8
    """Added to the Frobenius norm before Newton-Schulz."""
    lr_scaling: Literal["spectral", "rms_norm"] = "spectral"
    """Per-matrix LR multiplier: spectral = sqrt(max(1, out/in)); rms_norm = 0.2 sqrt(max(out, in))
    (an update RMS like AdamW's, so AdamW's learning rate and weight decay carry over)."""
    ns_coefficients: str = "standard"
    """Newton-Schulz coefficients: standard (3.4445, -4.7750, 2.0315), quintic (Dion's 5-step
    table) or polar_express (Amsel et al. 2025, per-step optimal)."""
    ns_dtype: Literal["bfloat16", "float32"] = "bfloat16"
    """Compute dtype of the Newton-Schulz iterations."""

    BRANCHES: ClassVar[dict[str, str]] = {
        "matrix": "muon",
        "embedding": "adam",
        "head": "adam",
        "vector": "adam",
    }

    def validate(self) -> None:
        super().validate()
        check_choice(self, "lr_scaling", LR_SCALINGS[:2])
        _check_ns_fields(self, "backend_steps")

    def momentum_options(self) -> dict[str, Any]:
        """Keyword arguments of the matrix transform shared by Muon and NorMuon."""
        return {
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "ns_coefficients": self.ns_coefficients,
            "ns_steps": self.backend_steps,
            "eps": self.muon_epsilon,
            "ns_dtype": NS_DTYPES[self.ns_dtype],
            "lr_scaling": self.lr_scaling,
        }

    def matrix_direction(self) -> optax.GradientTransformation:
        """The matrix branch's direction (before weight decay and the learning rate)."""
        return scale_by_muon(self.labeler().matrix_axes, **self.momentum_options())

    def update_rule(self, hp: Mapping[str, Any]) -> optax.GradientTransformation:
        matrix = self.branch(hp, self.matrix_direction(), hp["learning_rate"])
        adam = self.adam_branch(hp, hp["adam_learning_rate"])
        return self.partition({self.BRANCHES["matrix"]: matrix, "adam": adam})


@OptimizerConfig.register_subclass("normuon")
@dataclass(frozen=True)
class NorMuonConfig(MuonConfig):
    """NorMuon: Muon with neuron-wise second-moment normalisation after orthogonalisation.

    Matrix update (Li et al., 2025, https://arxiv.org/abs/2510.05491; see
    :func:`~marin_optim.transforms.muon.scale_by_normuon`): Muon's ``O = NS(U)``, then
    ``v = muon_beta2 v + (1 - muon_beta2) mean_row(O^2)`` per output neuron, ``N = O / (sqrt(v)
    + eps)``, rescaled to a fixed norm: with ``lr_scaling: rms_norm`` the update RMS is exactly
    0.2 (the paper's Algorithm 1), with ``spectral`` it keeps ``||O||_F`` times
    ``sqrt(max(1, out/in))`` (the authors' code). Other fields as in ``muon``; Nesterov is off
    by default, as in the paper.
    """

    nesterov: bool = False
    """Orthogonalise momentum M + G (Nesterov) instead of M (off in the NorMuon paper)."""
    muon_beta2: float = 0.95
    """Decay rate of the per-neuron second moment of the orthogonalised update."""

    BRANCHES: ClassVar[dict[str, str]] = {
        "matrix": "normuon",
        "embedding": "adam",
        "head": "adam",
        "vector": "adam",
    }

    def matrix_direction(self) -> optax.GradientTransformation:
        return scale_by_normuon(self.labeler().matrix_axes, beta2=self.muon_beta2, **self.momentum_options())
