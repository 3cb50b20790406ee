"""Per-coordinate step sizes from squared-gradient statistics: Adagrad, Adadelta, RMSprop, Adafactor.

The torch-named ones follow ``torch.optim`` exactly (same defaults, checked step by step in
``tests/test_torch_parity.py``), except that weight decay is decoupled (``p -= lr * wd * p``)
where torch adds an L2 term ``wd * p`` to the gradient; their default decay is 0, as in torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optax

from marin_optim.config import OptimizerConfig
from marin_optim.transforms.adafactor import scale_by_adafactor
from marin_optim.transforms.adagrad import scale_by_adagrad
from marin_optim.transforms.rmsprop import scale_by_rmsprop_momentum
from marin_optim.transforms.single_pass import (
    OnePassRule,
    adagrad_rule,
    rms_rule,
    rmsprop_momentum_rule,
)
from marin_optim.validation import check_positive, check_range

GROUP = "Adagrad / RMSprop family"


@OptimizerConfig.register_subclass("adagrad")
@dataclass(frozen=True)
class AdagradConfig(OptimizerConfig):
    """Adagrad: steps scaled by the root of the sum of all past squared gradients.

    Update (Duchi et al., 2011, https://jmlr.org/papers/v12/duchi11a.html)::

        s = s + g^2;   p = p - lr (g / (sqrt(s) + epsilon) / (1 + (t - 1) lr_decay) + wd p)

    Matches ``torch.optim.Adagrad`` (epsilon outside the root, accumulator starting at 0).
    """

    learning_rate: float = 1e-2
    """Peak learning rate (torch's default)."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""
    initial_accumulator_value: float = 0.0
    """Starting value of the sum of squares."""
    epsilon: float = 1e-10
    """Added to sqrt(s)."""
    lr_decay: float = 0.0
    """torch's extra 1 / (1 + (t - 1) lr_decay) decay, on top of the schedule."""

    def validate(self) -> None:
        super().validate()
        check_range(self, "initial_accumulator_value", 0.0)
        check_range(self, "lr_decay", 0.0)

    def direction(self) -> optax.GradientTransformation:
        return scale_by_adagrad(self.initial_accumulator_value, self.epsilon, self.lr_decay)

    def single_pass_rule(self) -> OnePassRule:
        return adagrad_rule(self.epsilon, self.lr_decay)


@OptimizerConfig.register_subclass("adadelta")
@dataclass(frozen=True)
class AdadeltaConfig(OptimizerConfig):
    """Adadelta: steps scaled by the ratio of running RMS of past updates to that of gradients.

    Update (Zeiler, 2012, "ADADELTA: An Adaptive Learning Rate Method",
    https://arxiv.org/abs/1212.5701, Algorithm 1)::

        s = rho s + (1 - rho) g^2;   d = sqrt(x + epsilon) / sqrt(s + epsilon) g
        x = rho x + (1 - rho) d^2;   p = p - lr (d + wd p)

    The direction is ``optax.scale_by_adadelta``; matches ``torch.optim.Adadelta``.
    """

    learning_rate: float = 1.0
    """Peak learning rate (torch's default: Adadelta needs none in theory)."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""
    rho: float = 0.9
    """Decay rate of both running averages."""
    epsilon: float = 1e-6
    """Added inside both roots."""

    def validate(self) -> None:
        super().validate()
        check_range(self, "rho", 0.0, 1.0, hi_open=True)

    def direction(self) -> optax.GradientTransformation:
        return optax.scale_by_adadelta(self.rho, self.epsilon)


@OptimizerConfig.register_subclass("rmsprop")
@dataclass(frozen=True)
class RMSPropMomentumConfig(OptimizerConfig):
    """RMSprop with a bias-corrected momentum of the normalised gradients (Levanter's rmsprop).

    Update (Tieleman & Hinton, 2012, Lecture 6.5; this momentum form is Levanter's)::

        s = beta2 s + (1 - beta2) g^2;   r = g / (sqrt(s / (1 - beta2^t)) + eps)
        m = beta1 m + (1 - beta1) r;     p = p - lr (m / (1 - beta1^t) + wd p)

    Same fields and defaults as Levanter (``eps``, not ``epsilon``), so its YAML works unchanged.
    For ``torch.optim.RMSprop`` (heavy-ball momentum, centred variant) use ``rmsprop_plain``.
    """

    beta1: float = 0.9
    """Decay rate of the momentum of the normalised gradients."""
    beta2: float = 0.99
    """Decay rate of the mean square."""
    eps: float = 1e-30
    """Added to the root of the mean square."""

    def direction(self) -> optax.GradientTransformation:
        return scale_by_rmsprop_momentum(self.beta1, self.beta2, self.eps)

    def single_pass_rule(self) -> OnePassRule:
        return rmsprop_momentum_rule(self.beta1, self.beta2, self.eps)


@OptimizerConfig.register_subclass("rmsprop_plain")
@dataclass(frozen=True)
class RMSPropConfig(OptimizerConfig):
    """RMSprop as in torch.optim.RMSprop: optional heavy-ball momentum and centred variant.

    Update (Tieleman & Hinton, 2012; centred: Graves, 2013, https://arxiv.org/abs/1308.0850)::

        s = beta2 s + (1 - beta2) g^2;   a = beta2 a + (1 - beta2) g     (centred)
        r = g / (sqrt(s - a^2) + epsilon)          (not centred: sqrt(s))
        b = momentum b + r;   p = p - lr (b + wd p)          (momentum 0: b = r)

    ``beta2`` is torch's ``alpha``. Matches ``torch.optim.RMSprop`` for every combination of
    ``momentum`` and ``centered``; built from ``optax.scale_by_rms`` / ``scale_by_stddev``
    with ``eps_in_sqrt=False`` and ``optax.trace``. Unlike ``optax.rmsprop``, the momentum
    accumulates *before* the learning rate, so a schedule changes the step, not the history.
    """

    learning_rate: float = 1e-2
    """Peak learning rate (torch's default)."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""
    beta2: float = 0.99
    """Decay rate of the mean square (torch's alpha)."""
    epsilon: float = 1e-8
    """Added to the root (outside it, as in torch)."""
    momentum: float = 0.0
    """Heavy-ball momentum on the normalised gradient; 0 disables it."""
    centered: bool = False
    """Normalise by the standard deviation instead of the root mean square."""

    def direction(self) -> optax.GradientTransformation:
        scale = optax.scale_by_stddev if self.centered else optax.scale_by_rms
        parts = [scale(decay=self.beta2, eps=self.epsilon, eps_in_sqrt=False)]
        if self.momentum > 0:
            parts.append(optax.trace(decay=self.momentum))
        return optax.chain(*parts)

    def single_pass_rule(self) -> OnePassRule | None:
        return None if self.centered else rms_rule(self.beta2, self.epsilon, self.momentum)

    def single_pass_unsupported(self) -> str | None:
        return "centered" if self.centered else super().single_pass_unsupported()


@OptimizerConfig.register_subclass("adafactor")
@dataclass(frozen=True)
class AdafactorConfig(OptimizerConfig):
    """Adafactor: factored second moments, relative step sizes (torch.optim.Adafactor).

    Update (Shazeer & Stern, 2018, https://arxiv.org/abs/1804.04235; the torch form)::

        rho_t = min(lr_t, 1 / sqrt(t));   alpha_t = max(epsilon2, RMS(p)) rho_t
        V = factored (ndim >= 2: row and column means of g^2) or full EMA with 1 - t^beta2_decay
        U = g / sqrt(max(V, epsilon1^2));   p = p (1 - lr_t wd) - alpha_t U / max(1, RMS(U) / clip_threshold)

    Matches ``torch.optim.Adafactor`` (``beta2_decay``, ``eps=(epsilon1, epsilon2)``, ``d`` is
    ``clip_threshold``). The schedule's ``lr_t`` caps ``rho_t`` (with ``relative_step: false`` it is
    the step size itself). For optax's variant (momentum, ``min_dim_size_to_factor``, ...) use
    ``optax_adafactor``.
    """

    learning_rate: float = 1e-2
    """Peak learning rate: an upper bound of the relative step 1/sqrt(t) (torch's default)."""
    weight_decay: float = 0.0
    """Decoupled weight decay, multiplied by lr_t (not by the relative step)."""
    beta2_decay: float = -0.8
    """The second-moment EMA weight of step t is t^beta2_decay."""
    epsilon1: float | None = None
    """Floor of the second moment's root; null: the parameter dtype's machine epsilon."""
    epsilon2: float = 1e-3
    """Floor of RMS(p) in the relative step."""
    clip_threshold: float = 1.0
    """Update clipping: U is divided by max(1, RMS(U) / clip_threshold) (torch's d)."""
    relative_step: bool = True
    """Use min(lr_t, 1/sqrt(t)) * RMS(p) as the step (False: lr_t * RMS(p))."""

    def validate(self) -> None:
        super().validate()
        check_range(self, "beta2_decay", None, 0.0)
        check_positive(self, "epsilon1", allow_none=True)
        check_range(self, "epsilon2", 0.0)
        check_positive(self, "clip_threshold")

    def update_rule(self, hp: Mapping[str, Any]) -> optax.GradientTransformation:
        lr = hp["learning_rate"]
        parts = [
            scale_by_adafactor(
                lr,
                beta2_decay=self.beta2_decay,
                eps1=self.epsilon1,
                eps2=self.epsilon2,
                d=self.clip_threshold,
                relative_step=self.relative_step,
            )
        ]
        if self.uses_weight_decay:
            parts.append(optax.add_decayed_weights(lr * hp["weight_decay"], self.build_weight_decay_mask()))
        parts.append(optax.scale(-1.0))
        return optax.chain(*parts)
