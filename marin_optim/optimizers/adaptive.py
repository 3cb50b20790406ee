"""Adam's relatives: NAdamW, RAdam, AMSGrad, AdaBelief, AdEMAMix, ADOPT, MARS, C-AdamW.

Each is the shared template (clip -> direction -> decoupled decay -> ``-lr``) around one update
direction, with Levanter-style field names (``beta1``, ``beta2``, ``epsilon``). Defaults follow
our ``adam`` (``beta2=0.95``, ``weight_decay=0.1``) where the algorithm is an Adam variant used
for language models, and the paper's elsewhere; each docstring says which reference it matches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import optax

from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError
from marin_optim.optimizers._wrapper import NestedOptimizerConfig
from marin_optim.transforms.adam import scale_by_adam
from marin_optim.transforms.ademamix import (
    ademamix_alpha_schedule,
    ademamix_beta3_schedule,
    scale_by_ademamix,
)
from marin_optim.transforms.adopt import scale_by_adopt
from marin_optim.transforms.amsgrad import scale_by_amsgrad
from marin_optim.transforms.cautious import cautious
from marin_optim.transforms.decoupled import adamc_weight_decay
from marin_optim.transforms.mars import scale_by_mars
from marin_optim.transforms.nadam import scale_by_nadam
from marin_optim.transforms.radam import scale_by_radam
from marin_optim.validation import Duration, check_duration, check_range

GROUP = "Adam family"


def duration_steps(cfg: OptimizerConfig, value: Duration, num_train_steps: int) -> int:
    """A duration field in steps, converted as the schedules convert theirs: a float is a fraction
    of the run (rounded down), an int a count of steps, or of tokens with ``schedule_units:
    tokens`` (rounded up to whole steps)."""
    return cfg.schedule_context(num_train_steps).duration_steps(value, num_train_steps)


@OptimizerConfig.register_subclass("nadamw")
@dataclass(frozen=True)
class NAdamWConfig(OptimizerConfig):
    """NAdamW: Adam with Nesterov momentum (Dozat's schedule) and decoupled weight decay.

    Update (Dozat, 2016, https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ), with
    ``mu_t = beta1 (1 - 0.5 * 0.96^(t * momentum_decay))`` and ``d = sqrt(v_hat) + epsilon``::

        p = p - lr ((1 - mu_t) / (1 - prod mu_i) g / d + mu_{t+1} / (1 - prod mu_i mu_{t+1}) m / d + wd p)

    Matches ``torch.optim.NAdam(decoupled_weight_decay=True)``. ``momentum_decay: null`` holds
    ``mu_t = beta1`` (the simplified rule of ``optax.nadamw``).
    """

    beta1: float = 0.9
    """Decay rate of the first moment (and the limit of the momentum schedule)."""
    beta2: float = 0.95
    """Decay rate of the second moment."""
    epsilon: float = 1e-8
    """Added to sqrt(v_hat) in the denominator."""
    momentum_decay: float | None = 0.004
    """psi of the momentum schedule (torch's default); null for a constant beta1."""

    def validate(self) -> None:
        super().validate()
        check_range(self, "momentum_decay", 0.0, allow_none=True)

    def direction(self) -> optax.GradientTransformation:
        return scale_by_nadam(self.beta1, self.beta2, self.epsilon, self.momentum_decay)


@OptimizerConfig.register_subclass("radam")
@dataclass(frozen=True)
class RAdamConfig(OptimizerConfig):
    """RAdam: Adam with the variance of its adaptive step rectified in early training.

    Update (Liu et al., 2020, "On the Variance of the Adaptive Learning Rate and Beyond",
    https://arxiv.org/abs/1908.03265, Algorithm 2), with ``rho_inf = 2 / (1 - beta2) - 1`` and
    ``rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)``::

            r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
        u = r_t m_hat sqrt(1 - beta2^t) / (sqrt(v) + epsilon)   if rho_t > threshold,  else  u = m_hat
        p = p - lr (u + wd p)

    Matches ``torch.optim.RAdam(decoupled_weight_decay=True)`` and the authors' code, with
    epsilon on ``sqrt(v)`` before the bias correction (``optax.scale_by_radam`` puts it on
    ``sqrt(v_hat)``, which differs visibly in the first steps; ``optax_radam`` has that form).
    """

    beta1: float = 0.9
    """Decay rate of the first moment."""
    beta2: float = 0.95
    """Decay rate of the second moment (sets rho_inf, hence how long the warmup lasts)."""
    epsilon: float = 1e-8
    """Added to sqrt(v) in the denominator (before the bias correction)."""
    threshold: float = 5.0
    """Rectify only once rho_t passes this (SGD with momentum before); at least 4, where the
    rectifier is real."""

    def validate(self) -> None:
        super().validate()
        check_range(self, "threshold", 4.0)

    def direction(self) -> optax.GradientTransformation:
        return scale_by_radam(self.beta1, self.beta2, self.epsilon, self.threshold)


@OptimizerConfig.register_subclass("amsgrad")
@dataclass(frozen=True)
class AMSGradConfig(OptimizerConfig):
    """AMSGrad: Adam whose second-moment denominator never decreases.

    Update (Reddi et al., 2018, https://openreview.net/forum?id=ryQu7f-RZ)::

        v_max = max(v_max, v);   p = p - lr (m_hat / (sqrt(v_max / (1 - beta2^t)) + epsilon) + wd p)

    Matches ``torch.optim.AdamW(amsgrad=True)`` (the maximum of the raw ``v``; optax's
    ``scale_by_amsgrad`` takes it over the bias-corrected ``v_hat`` instead).
    """

    beta1: float = 0.9
    """Decay rate of the first moment."""
    beta2: float = 0.95
    """Decay rate of the second moment."""
    epsilon: float = 1e-8
    """Added to the denominator."""

    def direction(self) -> optax.GradientTransformation:
        return scale_by_amsgrad(self.beta1, self.beta2, self.epsilon)


@OptimizerConfig.register_subclass("adabelief")
@dataclass(frozen=True)
class AdaBeliefConfig(OptimizerConfig):
    """AdaBelief: Adam whose denominator tracks the variance of g around its running mean.

    Update (Zhuang et al., 2020, "AdaBelief Optimizer: Adapting Stepsizes by the Belief in
    Observed Gradients", https://arxiv.org/abs/2010.07468, Algorithm 2)::

        m = beta1 m + (1 - beta1) g;   s = beta2 s + (1 - beta2) (g - m)^2 + epsilon_root
        p = p - lr (m_hat / (sqrt(s_hat) + epsilon) + wd p)

    The direction is ``optax.scale_by_belief``; defaults are the paper's.
    """

    beta1: float = 0.9
    """Decay rate of the first moment."""
    beta2: float = 0.999
    """Decay rate of the belief (centred second moment)."""
    epsilon: float = 1e-16
    """Added to sqrt(s_hat) in the denominator."""
    epsilon_root: float = 1e-16
    """Added to s at every step (the paper's epsilon inside the moment)."""

    def validate(self) -> None:
        super().validate()
        check_range(self, "epsilon_root", 0.0)

    def direction(self) -> optax.GradientTransformation:
        return optax.scale_by_belief(self.beta1, self.beta2, self.epsilon, self.epsilon_root)


@OptimizerConfig.register_subclass("ademamix")
@dataclass(frozen=True)
class AdEMAMixConfig(OptimizerConfig):
    """AdEMAMix: Adam plus a slow momentum (beta3) mixed in with weight alpha.

    Update (Pagliardini et al., 2024, https://arxiv.org/abs/2409.03300, Algorithm 1)::

        m1 = beta1 m1 + (1 - beta1) g;  m2 = beta3 m2 + (1 - beta3) g;  v = beta2 v + (1 - beta2) g^2
        p = p - lr ((m1_hat + alpha m2) / (sqrt(v_hat) + epsilon) + wd p)

    With ``alpha_beta3_warmup`` (steps or a fraction of the run; the paper uses the whole run)
    alpha rises linearly from 0 and beta3 from beta1 along the paper's schedule; both are
    injected hyperparameters (``ademamix_alpha``, ``ademamix_beta3`` in ``hyperparams(state)``).
    """

    beta1: float = 0.9
    """Decay rate of the fast first moment."""
    beta2: float = 0.999
    """Decay rate of the second moment."""
    beta3: float = 0.9999
    """Decay rate of the slow first moment."""
    alpha: float = 5.0
    """Weight of the slow momentum."""
    epsilon: float = 1e-8
    """Added to sqrt(v_hat) in the denominator."""
    alpha_beta3_warmup: Duration | None = None
    """Warmup of alpha and beta3 (int steps or fraction of the run); null: constant from the start."""

    def validate(self) -> None:
        super().validate()
        check_range(self, "beta3", 0.0, 1.0, hi_open=True)
        check_range(self, "alpha", 0.0)
        check_duration(self, "alpha_beta3_warmup", allow_none=True)
        if self.alpha_beta3_warmup is not None:  # its beta3 warmup interpolates log(beta)s
            for name in ("beta1", "beta3"):
                if getattr(self, name) == 0:
                    raise ConfigError(
                        f"{self._where(name)}=0.0: must be > 0 with alpha_beta3_warmup (its beta3 warmup "
                        "runs between log(beta1) and log(beta3))"
                    )

    def hyperparameter_schedules(self, num_train_steps: int) -> dict[str, Any]:
        out = super().hyperparameter_schedules(num_train_steps)
        warmup = None
        if self.alpha_beta3_warmup is not None:
            warmup = duration_steps(self, self.alpha_beta3_warmup, num_train_steps)
        out["ademamix_alpha"] = ademamix_alpha_schedule(self.alpha, warmup)
        out["ademamix_beta3"] = ademamix_beta3_schedule(self.beta1, self.beta3, warmup)
        return out

    def update_rule(self, hp: Mapping[str, Any]) -> optax.GradientTransformation:
        """The shared template (direction, decayed weights, ``-learning_rate``), with this step's
        injected alpha and beta3 handed to :meth:`direction`."""
        parts = [self.direction(hp)]
        if self.uses_weight_decay:
            parts.append(optax.add_decayed_weights(hp["weight_decay"], self.build_weight_decay_mask()))
        parts.append(optax.scale_by_learning_rate(hp["learning_rate"]))
        return optax.chain(*parts)

    def direction(self, hp: Mapping[str, Any] | None = None) -> optax.GradientTransformation:
        """The AdEMAMix direction with alpha and beta3 from ``hp`` (the injected ``ademamix_alpha``
        and ``ademamix_beta3`` of this step), or the fields when ``hp`` is None or lacks them."""
        hp = hp or {}
        beta3, alpha = hp.get("ademamix_beta3", self.beta3), hp.get("ademamix_alpha", self.alpha)
        return scale_by_ademamix(self.beta1, self.beta2, beta3, alpha, self.epsilon)


@OptimizerConfig.register_subclass("adopt")
@dataclass(frozen=True)
class ADOPTConfig(OptimizerConfig):
    """ADOPT: momentum of gradients normalised by the previous second moment (converges for any beta2).

    Update (Taniguchi et al., 2024, https://arxiv.org/abs/2411.02853), with ``k`` the number of
    earlier steps; the first step (``k = 0``) only records the second moment::

        n = g / (sqrt(v / (1 - beta2^k)) + epsilon)       (v of the earlier steps)
        m = beta1 m + (1 - beta1) n;   v = beta2 v + (1 - beta2) g^2
        p = p - lr (m / (1 - beta1^(k+1)) + wd p)

    This is Levanter's ``adopt`` (its fields, defaults and numbers). ``form: paper`` is the
    paper's algorithm (as ``optax.contrib.adopt``): ``v`` starts at ``g_0^2``, ``n = g /
    max(sqrt(v), epsilon)``, ``m`` is not bias-corrected, and ``n`` is clipped to ``k^(1/4)``
    unless ``clip: false``; details in :func:`marin_optim.transforms.scale_by_adopt`.
    """

    beta1: float = 0.9
    """Decay rate of the momentum."""
    beta2: float = 0.95
    """Decay rate of the second moment (Levanter's default; the paper uses 0.9999)."""
    epsilon: float = 1e-6
    """Added to (levanter form) or floor of (paper form) sqrt(v) in the normalisation."""
    form: Literal["levanter", "paper"] = "levanter"
    """levanter: Levanter's rule (zero-initialised, bias-corrected averages, eps added); paper:
    the paper's (v_0 = g_0^2, no bias correction, sqrt(v) floored at eps)."""
    clip: bool | None = None
    """Clip n to [-k^(1/4), k^(1/4)] (the paper's stabiliser); null = the form's own: on for
    paper, off for levanter."""
    nesterov: bool = False
    """Nesterov form of the momentum: beta1 m + (1 - beta1) n in place of m."""
    schedule_list: list[str] | None = None
    """Levanter declares this field on adopt but never reads it: accepted as null only."""

    def validate(self) -> None:
        super().validate()
        if self.schedule_list is not None:
            raise ConfigError(
                f"{self._where('schedule_list')}={self.schedule_list!r}: Levanter's adopt declares this "
                "field but never reads it (it changes nothing there); remove it and set the schedule "
                "with lr_schedule"
            )

    @property
    def clips(self) -> bool:
        """Whether n is clipped: ``clip``, or the form's own choice when it is null."""
        return self.form == "paper" if self.clip is None else self.clip

    def direction(self) -> optax.GradientTransformation:
        return scale_by_adopt(
            self.beta1, self.beta2, self.epsilon, form=self.form, clip=self.clips, nesterov=self.nesterov
        )


@OptimizerConfig.register_subclass("mars")
@dataclass(frozen=True)
class MARSConfig(OptimizerConfig):
    """MARS: AdamW on a variance-reduced gradient (uses the previous step's gradient).

    Update (Yuan et al., 2024, https://arxiv.org/abs/2411.10438, MARS-AdamW, approximate form)::

        c = g_t + gamma beta1 / (1 - beta1) (g_t - g_{t-1});   c = c min(1, max_grad_norm / ||c||)
        p = p - lr (adam(c) + wd p)

    Levanter's ``mars`` (its fields, defaults and numbers): ``max_grad_norm`` clips the global
    norm of the corrected gradient ``c`` (where the paper clips), not of ``g``, so this
    optimizer has no clip of the raw gradient (0 or null: no clip at all). With
    ``group_overrides``, each group clips its own ``c``.
    """

    beta1: float = 0.95
    """Decay rate of the first moment (also scales the correction)."""
    beta2: float = 0.99
    """Decay rate of the second moment."""
    gamma: float = 0.025
    """Strength of the variance-reduction correction."""
    epsilon: float = 1e-8
    """Added to sqrt(v_hat) in the denominator."""
    max_grad_norm: float | None = 1.0
    """Global-norm clip of the corrected gradient c (Levanter's, the paper's); 0 or null: none."""

    def validate(self) -> None:
        super().validate()
        check_range(self, "gamma", 0.0)

    @property
    def clip_norm(self) -> float | None:
        """None: ``max_grad_norm`` clips the corrected gradient inside the direction, not ``g``."""
        return None

    def direction(self) -> optax.GradientTransformation:
        return scale_by_mars(self.beta1, self.beta2, self.gamma, self.epsilon, self.max_grad_norm or None)


_CAUTIOUS_GAMMA = 0.025
"""The only gamma Levanter's cautious is given (it never reads it): its default."""


@OptimizerConfig.register_subclass("cautious")
@dataclass(frozen=True)
class CautiousConfig(OptimizerConfig):
    """C-AdamW: Adam whose update keeps only the coordinates that agree in sign with the gradient.

    Update (Liang et al., 2024, "Cautious Optimizers", https://arxiv.org/abs/2411.16085), per
    parameter tensor, with ``u`` Adam's bias-corrected direction::

        phi = 1[u * g > 0];   u = u * phi / (mean(phi) + epsilon)
        p = p - lr (u + wd p)                   (adamc_weight_decay: wd -> wd lr_t / learning_rate)

    Levanter's ``cautious`` (its fields, defaults and numbers; its rescaling ``1 / (mean(phi) +
    eps)`` where the paper's code uses ``n / (sum(phi) + 1)``). To make any other optimizer
    cautious, with the paper's rescaling: ``type: cautious_wrapper, base: {type: lion, ...}``.
    """

    beta1: float = 0.95
    """Decay rate of the first moment."""
    beta2: float = 0.95
    """Decay rate of the second moment."""
    gamma: float = 0.025
    """Levanter declares gamma on cautious but never reads it: accepted at its default only."""
    epsilon: float = 1e-8
    """Added to sqrt(v_hat) in the denominator, and to mean(phi) in the rescaling."""
    adamc_weight_decay: bool = False
    """AdamC (Defazio, 2025): weight decay times lr_t / learning_rate, so the decay-to-LR ratio
    stays constant as the LR decays (on top of any weight_decay_schedule)."""
    base: NestedOptimizerConfig | None = None
    """Not C-AdamW's: the wrapper that makes a base optimizer cautious is cautious_wrapper."""

    def validate(self) -> None:
        super().validate()
        if not self.epsilon > 0:  # the rescaling divides by mean(phi) + epsilon, which can be 0 + 0
            raise ConfigError(f"{self._where('epsilon')}={self.epsilon!r}: must be > 0")
        if self.gamma != _CAUTIOUS_GAMMA:
            raise ConfigError(
                f"{self._where('gamma')}={self.gamma!r}: Levanter's cautious declares gamma but never "
                f"reads it (it changes nothing there); remove it (only {_CAUTIOUS_GAMMA} is accepted)"
            )
        if self.base is not None:
            base = self.base.kind()
            raise ConfigError(
                f"{self._where('base')}={{type: {base}, ...}}: `cautious` is Levanter's C-AdamW and takes "
                f"no base; to make {base} cautious write type: cautious_wrapper with the same base"
            )

    def weight_decay_scheduler(self, num_train_steps: int) -> optax.Schedule | float:
        """The weight-decay schedule, times ``lr_t / learning_rate`` with ``adamc_weight_decay``."""
        schedule = super().weight_decay_scheduler(num_train_steps)
        if not self.adamc_weight_decay:
            return schedule
        return adamc_weight_decay(schedule, self.lr_scheduler(num_train_steps), self.learning_rate)

    def direction(self) -> optax.GradientTransformation:
        return cautious(scale_by_adam(self.beta1, self.beta2, self.epsilon), rescale="mean", eps=self.epsilon)
