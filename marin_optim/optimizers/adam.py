"""Adam with decoupled weight decay (Levanter's ``adam``), also registered as ``adamw``."""

from __future__ import annotations

from dataclasses import dataclass

import optax

from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError
from marin_optim.transforms.adam import scale_by_adam
from marin_optim.transforms.clipping import clip_by_block_rms, clip_by_historical_norm
from marin_optim.transforms.decoupled import adamc_weight_decay
from marin_optim.transforms.single_pass import OnePassRule, adamw_rule
from marin_optim.validation import check_choice, check_int, check_positive, check_types, where_of

MOMENT_DTYPES = (None, "float32", "bfloat16")

GROUP = "Adam family"


@dataclass(frozen=True)
class ClipUpdateNormConfig:
    """Clip the update's norm to ``sigma_factor`` standard deviations above its recent mean
    (:func:`marin_optim.transforms.clipping.clip_by_historical_norm`); Levanter's fields."""

    rolling_interval_length: int = 128
    """Number of previous updates whose norms set the limit; none is clipped until half are known."""
    sigma_factor: float = 3.0
    """The limit is mean + sigma_factor * std of those norms."""

    def __post_init__(self) -> None:
        check_types(self)
        check_int(self, "rolling_interval_length", 2)
        check_positive(self, "sigma_factor")

    def _where(self, name: str) -> str:
        return f"clip_update_norm.{name}"

    def build(self) -> optax.GradientTransformation:
        return clip_by_historical_norm(self.rolling_interval_length, self.sigma_factor)


@OptimizerConfig.register_subclass("adam")
@dataclass(frozen=True)
class AdamConfig(OptimizerConfig):
    """Adam with decoupled (AdamW) weight decay; Levanter's defaults.

    Update (Kingma & Ba, 2015, https://arxiv.org/abs/1412.6980; decay as in Loshchilov & Hutter,
    2019, https://arxiv.org/abs/1711.05101)::

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        u = m_hat / (sqrt(v_hat) + eps)            (nesterov: m_hat -> b1 m_hat + (1 - b1) g_hat)
        p = p - lr (u + wd p)

    with ``m_hat = m / (1 - b1^t)``, ``v_hat = v / (1 - b2^t)``. Matches ``torch.optim.AdamW``
    (and ``torch.optim.Adam`` at ``weight_decay=0``; its ``nesterov`` matches ``NAdam`` without
    momentum decay only approximately, so it is checked against the written formula).

    Levanter's options, with its fields and defaults: ``update_rms_clipping`` or
    ``clip_update_norm`` clip ``u + wd p`` (the step before the learning rate), per block or by
    the recent norms; ``adamc_weight_decay`` multiplies the decay by ``lr_t / learning_rate``
    (AdamC). Levanter's ``skip_bad_steps`` is the common field of that name.
    """

    beta1: float = 0.9
    """Decay rate of the first moment."""
    beta2: float = 0.95
    """Decay rate of the second moment."""
    epsilon: float = 1e-8
    """Added to sqrt(v_hat) in the denominator."""
    nesterov: bool = False
    """Use Nesterov momentum in the first moment (NAdam-style)."""
    mu_dtype: str | None = None
    """Storage dtype of the first moment: float32, bfloat16, or None (the parameter's dtype)."""
    nu_dtype: str | None = None
    """Storage dtype of the second moment (None: the parameter's); bfloat16 stalls if beta2 > ~0.99."""
    update_rms_clipping: float | None = None
    """Clip the step u + wd p (before the learning rate) to this RMS per leaf, and per layer of
    scan-stacked modules (Adafactor / StableAdamW-style); None: off. Levanter suggests 1.0."""
    clip_update_norm: ClipUpdateNormConfig | None = None
    """Clip the step's global norm to mean + sigma_factor * std of the recent ones
    ({rolling_interval_length: 128, sigma_factor: 3.0}); None: off. Not with update_rms_clipping;
    with group_overrides, each group clips its own step against its own history."""
    adamc_weight_decay: bool = False
    """AdamC (Defazio, 2025): weight decay times lr_t / learning_rate, so the decay-to-LR ratio
    stays constant as the LR decays (on top of any weight_decay_schedule)."""

    def validate(self) -> None:
        super().validate()
        check_choice(self, "mu_dtype", MOMENT_DTYPES)
        check_choice(self, "nu_dtype", MOMENT_DTYPES)
        check_positive(self, "update_rms_clipping", allow_none=True)
        if self.update_rms_clipping is not None and self.clip_update_norm is not None:
            raise ConfigError(
                f"{where_of(self, 'update_rms_clipping')}={self.update_rms_clipping!r} and "
                f"clip_update_norm={self.clip_update_norm!r}: set at most one of the two update clips"
            )

    def weight_decay_scheduler(self, num_train_steps: int) -> optax.Schedule | float:
        """The weight-decay schedule, times ``lr_t / learning_rate`` with ``adamc_weight_decay``."""
        schedule = super().weight_decay_scheduler(num_train_steps)
        if not self.adamc_weight_decay:
            return schedule
        return adamc_weight_decay(schedule, self.lr_scheduler(num_train_steps), self.learning_rate)

    def update_clipping(self) -> list[optax.GradientTransformation]:
        """``update_rms_clipping`` or ``clip_update_norm``, on the step ``u + wd p`` before ``-lr``."""
        if self.update_rms_clipping is not None:
            return [clip_by_block_rms(self.update_rms_clipping)]
        if self.clip_update_norm is not None:
            return [self.clip_update_norm.build()]
        return []

    def direction(self) -> optax.GradientTransformation:
        return scale_by_adam(
            self.beta1,
            self.beta2,
            self.epsilon,
            nesterov=self.nesterov,
            mu_dtype=self.mu_dtype,
            nu_dtype=self.nu_dtype,
        )

    def single_pass_rule(self) -> OnePassRule:
        return adamw_rule(self.beta1, self.beta2, self.epsilon)

    def single_pass_unsupported(self) -> str | None:
        if self.update_rms_clipping is not None or self.clip_update_norm is not None:
            return "update_rms_clipping / clip_update_norm (a clip over whole blocks)"
        if self.nesterov:
            return "nesterov"
        if self.mu_dtype not in (None, "float32") or self.nu_dtype not in (None, "float32"):
            return "moments stored in bfloat16"
        return super().single_pass_unsupported()


@OptimizerConfig.register_subclass("adamw")
@dataclass(frozen=True)
class AdamWConfig(AdamConfig):
    """AdamW: the same optimizer as ``adam`` (whose weight decay is already decoupled), by its usual name."""
