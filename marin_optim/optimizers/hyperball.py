"""AdamH and MuonH (Levanter's ``adamH``, ``muonH``): Adam's or Muon's directions on a hyperball,
every weight matrix at a fixed norm."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import jax
import optax

from marin_optim.config import OptimizerConfig
from marin_optim.labels import ParamLabel
from marin_optim.optimizers.muon import MatrixAdamWConfig, check_newton_schulz_fields
from marin_optim.transforms.clipping import clip_by_global_norm
from marin_optim.transforms.hyperball import hyperball
from marin_optim.transforms.muon import scale_by_muon
from marin_optim.transforms.newton_schulz import NS_DTYPES
from marin_optim.validation import check_choice, check_range

GROUP = "Hyperball (fixed weight norms)"

PyTree = Any


@OptimizerConfig.register_subclass("adamH")
@dataclass(frozen=True)
class AdamHConfig(MatrixAdamWConfig):
    """AdamH: Adam's direction for weight matrices, stepped on the sphere of their initial norm.

    Update rule (Wen, Dang, Lyu, Ma & Liang, 2026, "Fantastic Pretraining Optimizers and Where
    to Find Them II: Hyperball Optimization", https://arxiv.org/abs/2606.16899; see
    :func:`~marin_optim.transforms.hyperball`), for each weight matrix ``W`` (hidden matrices
    and the LM head; per layer when scan-stacked), with Adam's ``u = m_hat / (sqrt(v_hat) +
    epsilon)`` and ``R = ||W||_F``::

        W <- R * normalize(W - learning_rate * R * normalize(u)),   normalize(x) = x / ||x||_F

    so every matrix keeps its initial Frobenius norm and turns by at most about
    ``learning_rate`` radians a step (``atan(learning_rate)`` for ``u`` orthogonal to ``W``);
    weight decay has nothing left to do there. Embeddings, norm gains and biases take Adam at
    ``adam_lr`` (same schedule shape), with ``weight_decay`` where the decay mask selects them
    (the default mask selects none of them). A learning rate near ``sqrt(lr * weight_decay)``
    of a tuned AdamW (the angle AdamW settles at) is a start.

    Fields, defaults and numbers are Levanter's ``adamH`` (``max_grad_norm`` clips each branch by
    its own norm). Ours adds ``clip_scope: all`` (one global clip), ``param_labels`` and the
    schedule, guard and group fields. Deliberate differences, none visible with the defaults
    on a Llama: ``nesterov: true`` applies Nesterov momentum in both branches (Levanter accepts
    and ignores it); ``weight_decay`` decays the Adam parameters the mask selects (Levanter never
    decays); a plain array of two or more axes is a matrix (:mod:`marin_optim.labels`) where
    Levanter's mask gives only ``Linear`` weights the hyperball; a matrix is one matrix whatever
    its layout (Levanter takes the norm per leading index of an unstacked multi-axis weight),
    and a zero matrix stays zero where Levanter's unstacked 2-D path divides 0 by 0. The step
    is computed without cancellation (:func:`~marin_optim.transforms.hyperball.hyperball_delta`):
    at Levanter's learning rate of 6e-4 its float32 step is ~1e-4 off in relative terms, so
    ours differs from Levanter's by Levanter's rounding (2.9e-5 over 10 steps of a Llama; ours
    is the closer of the two to float64).
    """

    learning_rate: float = 6e-4
    """Peak step of the matrices on the hyperball: each moves by learning_rate * ||W||_F (about
    learning_rate radians) a step."""
    weight_decay: float = 0.1
    """Decoupled decay of the Adam-branch parameters the decay mask selects (none under the default
    mask), times adam_lr; never of the matrices on the hyperball."""

    beta1: float = 0.9
    """Decay rate of Adam's first moment (both branches)."""
    beta2: float = 0.95
    """Decay rate of Adam's second moment (both branches)."""
    epsilon: float = 1e-8
    """Added to sqrt(v_hat) (both branches)."""
    nesterov: bool = False
    """Nesterov momentum (Dozat's form, as adam's nesterov) in both branches; Levanter's adamH
    ignores it."""
    adam_lr: float = 6e-4
    """Peak learning rate of the Adam branch (embeddings, norm gains, biases); same schedule shape."""
    max_grad_norm: float | None = 1.0
    """Gradient-norm clip of the gradients clip_scope names; None or 0 disables it."""
    clip_scope: Literal["branch", "all"] = "branch"
    """What max_grad_norm clips: branch = each branch's gradients by their own norm (Levanter;
    the branches are in describe_labels), all = one global clip over every parameter."""

    BRANCHES: ClassVar[dict[str, str]] = {
        "matrix": "adamh",
        "head": "adamh",
        "embedding": "adam",
        "vector": "adam",
    }

    def validate(self) -> None:
        super().validate()
        check_choice(self, "clip_scope", ("branch", "all"))

    def _clip(self) -> list[optax.GradientTransformation]:
        if self.clip_scope != "branch" or not self.max_grad_norm:
            return []
        return [clip_by_global_norm(self.max_grad_norm)]

    def _adam(self, nesterov: bool) -> optax.GradientTransformation:
        """The branch's clip, then Adam's direction (``beta1``, ``beta2``, ``epsilon``)."""
        return optax.chain(
            *self._clip(), optax.scale_by_adam(self.beta1, self.beta2, self.epsilon, nesterov=nesterov)
        )

    def _on_sphere(
        self, hp: Mapping[str, Any], direction: optax.GradientTransformation
    ) -> optax.GradientTransformation:
        """``direction``, then the hyperball step at the injected ``learning_rate``."""
        return optax.chain(direction, hyperball(hp["learning_rate"], self.labeler().matrix_axes))

    def update_rule(self, hp: Mapping[str, Any]) -> optax.GradientTransformation:
        sphere = self._on_sphere(hp, self._adam(self.nesterov))
        adam = self.branch(hp, self._adam(self.nesterov), hp["adam_learning_rate"])
        return self.partition({"adamh": sphere, "adam": adam})

    def build_weight_decay_mask(self) -> Callable[[PyTree], PyTree]:
        """The configured mask, restricted to the Adam branch: matrices on the hyperball are
        never decayed (their norm is fixed)."""
        base = super().build_weight_decay_mask()
        labeler, branches = self.labeler(), self.branches

        def one(label: Any, selected: Any = True) -> Any:
            if not isinstance(label, ParamLabel):  # None, or a leaf another branch owns
                return label
            return bool(selected) and branches[label.kind] == "adam"

        def mask(tree: PyTree) -> PyTree:
            labels = labeler.labels(tree, strict=False)
            if base is None:
                return jax.tree.map(one, labels, is_leaf=_is_label)
            return jax.tree.map(one, labels, base(tree), is_leaf=_is_label)

        return mask


@OptimizerConfig.register_subclass("muonH")
@dataclass(frozen=True)
class MuonHConfig(AdamHConfig):
    """MuonH: Muon's orthogonalised momentum for hidden matrices, stepped on the sphere of their initial norm.

    Update rule, for each hidden weight matrix ``W`` (per layer when scan-stacked) with gradient
    ``G`` and ``R = ||W||_F``: Muon's direction (Jordan et al., 2024,
    https://kellerjordan.github.io/posts/muon/; :func:`~marin_optim.transforms.muon.scale_by_muon`)
    then the Hyperball step (Wen, Dang, Lyu, Ma & Liang, 2026, https://arxiv.org/abs/2606.16899;
    :func:`~marin_optim.transforms.hyperball`)::

        M = momentum M + G;  U = momentum M + G (nesterov) or M;  O = NS(U)
        W <- R * normalize(W - learning_rate * R * normalize(O)),   normalize(x) = x / ||x||_F

    so every hidden matrix keeps its initial Frobenius norm and turns by about ``learning_rate``
    radians a step (Muon's shape scale and weight decay have nothing left to do there). The LM
    head takes adamH's step (Adam's direction on its hyperball, at the same ``learning_rate``);
    embeddings, norm gains and biases take Adam at ``adam_lr`` (same schedule shape), with
    ``weight_decay`` where the decay mask selects them (the default mask selects none). A
    learning rate near ``sqrt(lr * weight_decay)`` of a tuned Muon is a start.

    Fields, defaults and numbers are Levanter's ``muonH`` (``max_grad_norm`` clips each of the
    three branches by its own norm; Newton-Schulz in float32). Ours adds ``clip_scope: all``,
    ``ns_dtype: bfloat16``, ``param_labels`` and the schedule, guard and group fields. The
    deliberate differences are adamH's (the decay of masked Adam parameters, plain arrays as
    matrices, one norm per matrix whatever its layout, zero matrices, the step computed without
    float32 cancellation), and those of ``muon`` for ``coefficient_type`` ``polar_express`` past 8
    steps and ``aol`` past 4 (:mod:`marin_optim.transforms.newton_schulz`).
    """

    nesterov: bool = True
    """Orthogonalise momentum M + G (Nesterov) instead of M; the Adam branches never use
    Nesterov (as Levanter)."""
    momentum: float = 0.95
    """Momentum of the hidden matrices (M = momentum M + G)."""
    backend_steps: int = 5
    """Newton-Schulz iterations."""
    muon_epsilon: float = 1e-8
    """Added to the Frobenius norm before Newton-Schulz."""
    coefficient_type: str = "quintic"
    """Newton-Schulz coefficients: simple, quintic, polar_express or aol (see muon)."""
    ns_dtype: Literal["bfloat16", "float32"] = "float32"
    """Operand dtype of the Newton-Schulz matrix products (float32 = Levanter's numbers)."""

    BRANCHES: ClassVar[dict[str, str]] = {
        "matrix": "muonh",
        "head": "adamh",
        "embedding": "adam",
        "vector": "adam",
    }

    def validate(self) -> None:
        super().validate()
        check_range(self, "momentum", 0.0, 1.0, hi_open=True)
        check_range(self, "muon_epsilon", 0.0)
        check_newton_schulz_fields(self)

    def update_rule(self, hp: Mapping[str, Any]) -> optax.GradientTransformation:
        muon = scale_by_muon(
            self.labeler().matrix_axes,
            momentum=self.momentum,
            nesterov=self.nesterov,
            ns_coefficients=self.coefficient_type,
            ns_steps=self.backend_steps,
            eps=self.muon_epsilon,
            ns_dtype=NS_DTYPES[self.ns_dtype],
            lr_scaling="none",  # the hyperball step normalises the direction
        )
        return self.partition(
            {
                "muonh": self._on_sphere(hp, optax.chain(*self._clip(), muon)),
                "adamh": self._on_sphere(hp, self._adam(nesterov=False)),
                "adam": self.branch(hp, self._adam(nesterov=False), hp["adam_learning_rate"]),
            }
        )


def _is_label(x: Any) -> bool:
    return isinstance(x, ParamLabel) or x is None or isinstance(x, optax.MaskedNode)
