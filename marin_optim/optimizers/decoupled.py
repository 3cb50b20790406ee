"""LLM Foundry / Composer optimizers: weight decay scaled by ``lr_t / lr``, not by ``lr_t``.

In Composer's ``DecoupledAdamW`` and LLM Foundry's ``DecoupledLionW`` family the decay step is
``p *= 1 - (lr_t / lr) * weight_decay``: it follows the schedule's shape but not the size of the
learning rate, so ``weight_decay`` is a per-step shrink factor at the peak (``1e-5`` shrinks by
1e-5 per step) rather than a coefficient multiplied by the learning rate. Defaults are theirs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optax

from marin_optim.config import OptimizerConfig
from marin_optim.transforms.decoupled import add_relative_decayed_weights
from marin_optim.transforms.outliers import clip_outlier_norms, scale_by_adalr_lion
from marin_optim.validation import check_positive, check_range

GROUP = "LLM Foundry (decay scaled by lr/initial_lr)"


class _DecoupledDecay(OptimizerConfig):
    """Template change shared by the configs of this module: decay after the learning rate."""

    def validate(self) -> None:
        super().validate()
        # A shrink factor: 1 or more would flip or zero the weights at the peak.
        check_range(self, "weight_decay", 0.0, 1.0, hi_open=True)
        check_range(self, "weight_decay_end", 0.0, 1.0, hi_open=True, allow_none=True)

    def update_rule(self, hp: Mapping[str, Any]) -> optax.GradientTransformation:
        lr = hp["learning_rate"]
        parts = [self.direction(), optax.scale_by_learning_rate(lr)]
        if self.uses_weight_decay:
            ratio = lr / self.learning_rate
            parts.append(
                add_relative_decayed_weights(hp["weight_decay"], ratio, self.build_weight_decay_mask())
            )
        return optax.chain(*parts)


@OptimizerConfig.register_subclass("decoupled_adamw")
@dataclass(frozen=True)
class DecoupledAdamWConfig(_DecoupledDecay):
    """Composer's DecoupledAdamW: Adam with decay p *= 1 - (lr_t / lr) wd.

    Update (Loshchilov & Hutter, 2019, https://arxiv.org/abs/1711.05101, as in MosaicML
    Composer's ``DecoupledAdamW``)::

        p = p (1 - (lr_t / lr) wd) - lr_t m_hat / (sqrt(v_hat) + epsilon)

    Composer's defaults (``learning_rate=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=1e-5``).
    """

    learning_rate: float = 1e-3
    """Peak learning rate (Composer's default); also the reference lr of the decay factor."""
    weight_decay: float = 1e-5
    """Shrink factor per step at the peak of the schedule (not multiplied by the LR)."""
    beta1: float = 0.9
    """Decay rate of the first moment."""
    beta2: float = 0.95
    """Decay rate of the second moment."""
    epsilon: float = 1e-8
    """Added to sqrt(v_hat)."""

    def direction(self) -> optax.GradientTransformation:
        return optax.scale_by_adam(self.beta1, self.beta2, self.epsilon)


@OptimizerConfig.register_subclass("decoupled_lionw")
@dataclass(frozen=True)
class DecoupledLionWConfig(_DecoupledDecay):
    """LLM Foundry's DecoupledLionW: Lion with decay p *= 1 - (lr_t / lr) wd.

    Update (Chen et al., 2023, https://arxiv.org/abs/2302.06675, as in LLM Foundry's
    ``DecoupledLionW``)::

        p = p (1 - (lr_t / lr) wd) - lr_t sign(lerp(m, g, 1 - beta1));   m = lerp(m, g, 1 - beta2)

    LLM Foundry's defaults (``learning_rate=1e-4, betas=(0.9, 0.99), weight_decay=0``).
    """

    learning_rate: float = 1e-4
    """Peak learning rate; also the reference lr of the decay factor."""
    weight_decay: float = 0.0
    """Shrink factor per step at the peak of the schedule (not multiplied by the LR)."""
    beta1: float = 0.9
    """Interpolation rate of the update direction."""
    beta2: float = 0.99
    """Decay rate of the momentum."""

    def direction(self) -> optax.GradientTransformation:
        return optax.scale_by_lion(self.beta1, self.beta2)


@OptimizerConfig.register_subclass("clip_lion")
@dataclass(frozen=True)
class ClipLionConfig(DecoupledLionWConfig):
    """LLM Foundry's DecoupledClipLion: LionW that clips each tensor's outlier gradients.

    Per tensor, before Lion: ``g = g * outlier_threshold * mva / ||g||`` when ``||g||`` exceeds
    ``outlier_threshold * mva``, with ``mva`` the mean of its gradient norms from
    ``2 * delay_interval`` to ``delay_interval`` steps ago (no clipping before ``delay_interval``
    steps). Otherwise ``decoupled_lionw``. The number of clipped tensor-steps is logged as
    ``outlier_clips``.
    """

    outlier_threshold: float = 5.0
    """A gradient norm above this many times its delayed average is clipped to it."""
    delay_interval: int = 500
    """The average covers the norms from 2 * delay_interval to delay_interval steps ago."""

    def validate(self) -> None:
        super().validate()
        check_positive(self, "outlier_threshold")
        check_range(self, "delay_interval", 1)

    def direction(self) -> optax.GradientTransformation:
        return optax.chain(
            clip_outlier_norms(self.outlier_threshold, self.delay_interval), super().direction()
        )


@OptimizerConfig.register_subclass("adalr_lion")
@dataclass(frozen=True)
class AdaLRLionConfig(DecoupledLionWConfig):
    """LLM Foundry's DecoupledAdaLRLion: LionW that lowers a tensor's LR while its momentum is an outlier.

    Per tensor: the new momentum's norm is an outlier when above ``outlier_threshold`` times its
    delayed average (see ``clip_lion``); with ``N`` outliers in the last ``timeout`` steps the
    tensor's learning rate (and hence its decay) is multiplied by
    ``max(min_scale, lr_penalty^N)``. Logged: ``adalr_min_lr_scale`` and ``adalr_penalized``
    (tensors currently slowed).
    """

    outlier_threshold: float = 10.0
    """A momentum norm above this many times its delayed average is an outlier."""
    timeout: int = 100
    """Steps an outlier keeps lowering the learning rate."""
    lr_penalty: float = 0.707
    """Factor per recent outlier."""
    min_scale: float = 1e-4
    """Lowest factor."""
    delay_interval: int = 500
    """The average covers the norms from 2 * delay_interval to delay_interval steps ago."""

    def validate(self) -> None:
        super().validate()
        check_positive(self, "outlier_threshold")
        check_range(self, "timeout", 0)
        check_range(self, "lr_penalty", 0.0, 1.0, lo_open=True)
        check_range(self, "min_scale", 0.0, 1.0, lo_open=True)
        check_range(self, "delay_interval", 1)

    def direction(self) -> optax.GradientTransformation:
        return self._adalr(0.0)

    def _adalr(self, weight_decay: Any) -> optax.GradientTransformation:
        return scale_by_adalr_lion(
            self.beta1,
            self.beta2,
            outlier_threshold=self.outlier_threshold,
            timeout=self.timeout,
            lr_penalty=self.lr_penalty,
            min_scale=self.min_scale,
            delay_interval=self.delay_interval,
            weight_decay=weight_decay,
            mask=self.build_weight_decay_mask(),
        )

    def update_rule(self, hp: Mapping[str, Any]) -> optax.GradientTransformation:
        # The decay is scaled by each tensor's LR factor too, so it lives inside the transform:
        # u = s (sign(...) + (wd / lr) p), then -lr_t.
        weight_decay = hp["weight_decay"] / self.learning_rate if self.uses_weight_decay else 0.0
        return optax.chain(self._adalr(weight_decay), optax.scale_by_learning_rate(hp["learning_rate"]))
