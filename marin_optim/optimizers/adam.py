"""Adam with decoupled weight decay (Levanter's ``adam``), also registered as ``adamw``."""

from __future__ import annotations

from dataclasses import dataclass

import optax

from marin_optim.config import OptimizerConfig
from marin_optim.transforms.adam import scale_by_adam
from marin_optim.transforms.single_pass import OnePassRule, adamw_rule
from marin_optim.validation import check_choice

MOMENT_DTYPES = (None, "float32", "bfloat16")

GROUP = "Adam family"


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

    def validate(self) -> None:
        super().validate()
        check_choice(self, "mu_dtype", MOMENT_DTYPES)
        check_choice(self, "nu_dtype", MOMENT_DTYPES)

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
        if self.nesterov:
            return "nesterov"
        if self.mu_dtype not in (None, "float32") or self.nu_dtype not in (None, "float32"):
            return "moments stored in bfloat16"
        return super().single_pass_unsupported()


@OptimizerConfig.register_subclass("adamw")
@dataclass(frozen=True)
class AdamWConfig(AdamConfig):
    """AdamW: the same optimizer as ``adam`` (whose weight decay is already decoupled), by its usual name."""
