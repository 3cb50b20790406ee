"""Muon and NorMuon: orthogonalised momentum for hidden matrices, AdamW for everything else.

Both split the parameters with :class:`~marin_optim.labels.ParamLabeler` (hidden matrices vs
embeddings, the output head and vectors; print the split with ``describe_labels``) and build one
``optax.multi_transform`` inside the base template; both learning rates are injected
(``learning_rate`` for the matrices, ``adam_learning_rate`` for the rest), each following the
configured schedule shape. ``muon`` takes Levanter's fields, defaults and numbers; ``clip_scope``
chooses between Levanter's clip (the AdamW branch only, the default) and one global clip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import jax
import optax

from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError
from marin_optim.labels import ParamLabel, ParamLabeler
from marin_optim.transforms.cautious_weight_decay import add_decayed_weights
from marin_optim.transforms.clipping import clip_by_global_norm
from marin_optim.transforms.muon import scale_by_muon, scale_by_normuon
from marin_optim.transforms.newton_schulz import NS_DTYPES, NS_PRESETS
from marin_optim.validation import check_choice, check_int, check_positive, check_range, where_of

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

    def branch_rates(self) -> dict[str, tuple[float | str, float]]:
        """Each branch's peak learning rate and weight decay: the matrix rule's (this config's)
        unless a subclass gives a branch its own."""
        return {branch: (self.learning_rate, self.weight_decay) for branch in self.branches.values()}

    def peak_rates(self, params: PyTree) -> dict[str, tuple[float | str, float]]:
        """Per parameter path, its branch's :meth:`branch_rates`."""
        rates = self.branch_rates()
        labels = jax.tree.leaves(self.labeler().labels(params), is_leaf=lambda x: isinstance(x, ParamLabel))
        return {lab.path: rates[self.branches[lab.kind]] for lab in labels if isinstance(lab, ParamLabel)}

    def describe_labels(self, params: PyTree) -> str:
        """A printable table: every parameter's kind, the branch that updates it, its matrix view."""
        return self.labeler().describe(params, branches=self.branches)

    def param_table(self, params: PyTree) -> str:
        """The groups and weight decay of every parameter, then its kind and update rule."""
        return super().param_table(params) + "\n\n" + self.describe_labels(params)

    def weight_decay_step(
        self, hp: Mapping[str, Any], rate: Any = None
    ) -> list[optax.GradientTransformation]:
        """``[decayed weights]`` (cautious if configured, with the configured mask) at ``rate``, or
        at the injected ``weight_decay`` when weight decay is on; ``[]`` when it is off."""
        if rate is None:
            if not self.uses_weight_decay:
                return []
            rate = hp["weight_decay"]
        return [
            add_decayed_weights(rate, self.build_weight_decay_mask(), cautious=self.cautious_weight_decay)
        ]

    def branch(
        self,
        hp: Mapping[str, Any],
        direction: optax.GradientTransformation,
        learning_rate: Any,
        decay: list[optax.GradientTransformation] | None = None,
    ) -> optax.GradientTransformation:
        """One branch of :meth:`partition`: ``direction``, weight decay, then ``-lr``.

        ``learning_rate`` is the branch's (injected) learning rate, or a transformation that
        applies it (e.g. Dion's per-matrix rate for the output head); ``decay`` replaces this
        config's :meth:`weight_decay_step`.
        """
        if not isinstance(learning_rate, optax.GradientTransformation):
            learning_rate = optax.scale_by_learning_rate(learning_rate)
        decay = self.weight_decay_step(hp) if decay is None else decay
        return optax.chain(direction, *decay, learning_rate)

    @property
    def clip_norm(self) -> float | None:
        """The global clip's norm: ``None`` where ``clip_scope`` (Muon, Scion) names one branch,
        whose gradients :meth:`branch_clip` clips instead."""
        return super().clip_norm if getattr(self, "clip_scope", "all") == "all" else None

    def branch_clip(self, branch: str) -> list[optax.GradientTransformation]:
        """``[clip]`` of ``branch``'s gradients by their own global norm when ``clip_scope`` is
        ``branch`` and ``max_grad_norm`` is set (Levanter's Muon and Scion), else ``[]``."""
        if getattr(self, "clip_scope", "all") != branch or not self.max_grad_norm:
            return []
        return [clip_by_global_norm(self.max_grad_norm)]

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

    def branch_rates(self) -> dict[str, tuple[float | str, float]]:
        return {**super().branch_rates(), "adam": (self.adam_lr, self.weight_decay)}

    def hyperparameter_schedules(self, num_train_steps: int) -> dict[str, Any]:
        schedules = super().hyperparameter_schedules(num_train_steps)
        schedules["adam_learning_rate"] = self.lr_scheduler(num_train_steps, override_lr=self.adam_lr)
        return schedules

    def adam_branch(
        self,
        hp: Mapping[str, Any],
        learning_rate: Any,
        decay: list[optax.GradientTransformation] | None = None,
    ) -> optax.GradientTransformation:
        """AdamW (``beta1``, ``beta2``, ``epsilon``) at ``learning_rate``, as a :meth:`branch`
        (after the branch's own clip where ``clip_scope`` is ``adam``)."""
        adam = optax.scale_by_adam(self.beta1, self.beta2, self.epsilon)
        return self.branch(hp, optax.chain(*self.branch_clip("adam"), adam), learning_rate, decay)


def check_newton_schulz_fields(cfg: Any) -> None:
    """``backend_steps``, ``coefficient_type`` and ``ns_dtype`` of Muon-like configs."""
    check_int(cfg, "backend_steps")
    check_choice(cfg, "coefficient_type", tuple(NS_PRESETS))
    check_choice(cfg, "ns_dtype", tuple(NS_DTYPES))


def check_unread_lr(cfg: Any, rate: str) -> None:
    """Levanter's ``muon`` and ``scion`` declare ``lr: 0.02`` and never read it: accepted at that
    value (every Levanter block carries it), refused otherwise, since it would change nothing."""
    if cfg.lr != 0.02:
        raise ConfigError(
            f"{where_of(cfg, 'lr')}={cfg.lr!r}: Levanter declares lr but never reads it; "
            f"the {rate} peak rate is learning_rate (set that, and leave lr at 0.02)"
        )


@dataclass(frozen=True)
class AdamWFallbackConfig(MatrixAdamWConfig):
    """Base of Levanter's Newton-Schulz configs (``muon``, ``grug_muon``, ``namo``, ``namoD``):
    their AdamW fallback's own weight decay and their clip of that branch only.

    Not registered itself. :meth:`fallback_branch` is the AdamW branch (embeddings, the output
    head, norms and biases) at ``adam_lr`` with ``adam_weight_decay``.
    """

    adam_weight_decay: float | None = None
    """Decoupled weight decay of the AdamW branch; None = weight_decay."""
    max_grad_norm: float | None = 1.0
    """Gradient-norm clip of the gradients clip_scope names; None or 0 disables it."""
    clip_scope: Literal["adam", "all"] = "adam"
    """What max_grad_norm clips: adam = the AdamW branch's gradients by their own norm
    (Levanter; per parameter group with group_overrides), all = one global clip over every
    parameter."""

    def validate(self) -> None:
        super().validate()
        check_range(self, "adam_weight_decay", 0.0, allow_none=True)
        if self.adam_weight_decay is not None and self.weight_decay_end is not None:
            raise ConfigError(
                f"{where_of(self, 'adam_weight_decay')}={self.adam_weight_decay!r} and "
                f"weight_decay_end={self.weight_decay_end!r}: the AdamW branch's decay schedule "
                "would be ambiguous; set at most one"
            )

    def hyperparameter_schedules(self, num_train_steps: int) -> dict[str, Any]:
        schedules = super().hyperparameter_schedules(num_train_steps)
        if self.adam_weight_decay is not None:
            schedules["adam_weight_decay"] = self.adam_weight_decay
        return schedules

    def branch_rates(self) -> dict[str, tuple[float | str, float]]:
        decay = self.weight_decay if self.adam_weight_decay is None else self.adam_weight_decay
        return {**super().branch_rates(), "adam": (self.adam_lr, decay)}

    def adam_weight_decay_step(self, hp: Mapping[str, Any]) -> list[optax.GradientTransformation]:
        """The AdamW branch's decay: at ``adam_weight_decay`` when set (off at 0), else as the matrices'."""
        if self.adam_weight_decay is None:
            return self.weight_decay_step(hp)
        return self.weight_decay_step(hp, hp["adam_weight_decay"]) if self.adam_weight_decay > 0 else []

    def fallback_branch(self, hp: Mapping[str, Any]) -> optax.GradientTransformation:
        """The AdamW branch at the injected ``adam_learning_rate`` with :meth:`adam_weight_decay_step`."""
        return self.adam_branch(hp, hp["adam_learning_rate"], decay=self.adam_weight_decay_step(hp))


@OptimizerConfig.register_subclass("muon")
@dataclass(frozen=True)
class MuonConfig(AdamWFallbackConfig):
    """Muon: Newton-Schulz-orthogonalised momentum for hidden matrices, AdamW for the rest.

    Matrix update (Jordan et al., 2024, https://kellerjordan.github.io/posts/muon/; see
    :func:`~marin_optim.transforms.muon.scale_by_muon`)::

        M = momentum M + G;  U = momentum M + G (nesterov) or M
        p = p - lr (scale(out, in) NS(U) + wd p)

    with ``scale = sqrt(max(1, out/in))``, or ``0.2 sqrt(max(out, in))`` with
    ``use_kimi_scaling`` (Liu et al., 2025, https://arxiv.org/abs/2502.16982: use AdamW-like
    learning rate and weight decay). Embeddings, the output head, norms and biases use AdamW at
    ``adam_lr`` (same schedule shape) with ``adam_weight_decay``. Fields, defaults and numbers
    are Levanter's ``muon`` (``max_grad_norm`` clips the AdamW branch only, Newton-Schulz runs in
    float32); ours adds ``clip_scope: all`` (one global clip), ``ns_dtype: bfloat16``,
    ``param_labels``, ``cautious_weight_decay`` and the schedule, guard and group fields.
    ``coefficient_type`` ``polar_express`` past 8 steps and ``aol`` past 4 repeat their last
    row where Levanter cycles (:mod:`marin_optim.transforms.newton_schulz`).
    """

    learning_rate: float = 6e-4
    """Peak learning rate of the Muon (matrix) branch (Levanter's default)."""
    lr: float = 0.02
    """Levanter's unread field: accepted at 0.02 only (learning_rate is the matrix rate)."""
    weight_decay: float = 0.0
    """Decoupled weight decay of the matrix branch (and of the AdamW branch unless
    adam_weight_decay is set), multiplied by the branch's learning rate."""
    momentum: float = 0.95
    """Momentum of the matrix branch (M = momentum M + G)."""
    nesterov: bool = True
    """Orthogonalise momentum M + G (Nesterov) instead of M."""
    backend_steps: int = 5
    """Newton-Schulz iterations."""
    muon_epsilon: float = 1e-8
    """Added to the Frobenius norm before Newton-Schulz."""
    use_kimi_scaling: bool = False
    """Per-matrix LR multiplier 0.2 sqrt(max(out, in)) (Kimi: an update RMS like AdamW's, so
    AdamW's learning rate and weight decay carry over) instead of sqrt(max(1, out/in))."""
    coefficient_type: str = "quintic"
    """Newton-Schulz coefficients: simple (Jordan's 3.4445, -4.7750, 2.0315), quintic (a 5-step
    table), polar_express (Amsel et al. 2025) or aol (Turbo-Muon's 4-step table)."""
    ns_dtype: Literal["bfloat16", "float32"] = "float32"
    """Operand dtype of the Newton-Schulz matrix products (float32 = Levanter's numbers with
    float32 gradients; bfloat16 = faster on accelerators, ~1% from float32)."""

    RENAMED_FIELDS: ClassVar[dict[str, str]] = {
        "ns_coefficients": "coefficient_type (Levanter's name; `standard` is `simple`)",
        "lr_scaling": "use_kimi_scaling (rms_norm: true)",
    }
    BRANCHES: ClassVar[dict[str, str]] = {
        "matrix": "muon",
        "embedding": "adam",
        "head": "adam",
        "vector": "adam",
    }

    def validate(self) -> None:
        super().validate()
        check_newton_schulz_fields(self)
        check_unread_lr(self, "Muon (matrix)")

    def momentum_options(self) -> dict[str, Any]:
        """Keyword arguments of the matrix transform shared by Muon and NorMuon."""
        return {
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "ns_coefficients": self.coefficient_type,
            "ns_steps": self.backend_steps,
            "eps": self.muon_epsilon,
            "ns_dtype": NS_DTYPES[self.ns_dtype],
            "lr_scaling": "rms_norm" if self.use_kimi_scaling else "spectral",
        }

    def matrix_direction(self) -> optax.GradientTransformation:
        """The matrix branch's direction (before weight decay and the learning rate)."""
        return scale_by_muon(self.labeler().matrix_axes, **self.momentum_options())

    def update_rule(self, hp: Mapping[str, Any]) -> optax.GradientTransformation:
        matrix = self.branch(hp, self.matrix_direction(), hp["learning_rate"])
        return self.partition({self.BRANCHES["matrix"]: matrix, "adam": self.fallback_branch(hp)})


@OptimizerConfig.register_subclass("normuon")
@dataclass(frozen=True)
class NorMuonConfig(MuonConfig):
    """NorMuon: Muon with neuron-wise second-moment normalisation after orthogonalisation.

    Matrix update (Li et al., 2025, https://arxiv.org/abs/2510.05491; see
    :func:`~marin_optim.transforms.muon.scale_by_normuon`): Muon's ``O = NS(U)``, then
    ``v = muon_beta2 v + (1 - muon_beta2) mean_row(O^2)`` per output neuron, ``N = O / (sqrt(v)
    + eps)``, rescaled to a fixed norm: with ``use_kimi_scaling`` the update RMS is exactly
    0.2 (the paper's Algorithm 1), without it the update keeps ``||O||_F`` times
    ``sqrt(max(1, out/in))`` (the authors' code). Other fields as in ``muon``, with defaults of
    its own (Levanter has no ``normuon``): Nesterov off, as in the paper; learning rate 0.02,
    ``simple`` coefficients in bfloat16 and one global clip.
    """

    learning_rate: float = 0.02
    """Peak learning rate of the NorMuon (matrix) branch."""
    nesterov: bool = False
    """Orthogonalise momentum M + G (Nesterov) instead of M (off in the NorMuon paper)."""
    coefficient_type: str = "simple"
    """Newton-Schulz coefficients: simple, quintic, polar_express or aol (see muon)."""
    ns_dtype: Literal["bfloat16", "float32"] = "bfloat16"
    """Operand dtype of the Newton-Schulz matrix products."""
    clip_scope: Literal["adam", "all"] = "all"
    """What max_grad_norm clips: all = one global clip over every parameter, adam = the AdamW
    branch's gradients by their own norm."""
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
