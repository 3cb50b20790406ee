"""``sophia`` (and Levanter's name ``sophia-h``): Sophia-H, a clipped diagonal second-order method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import optax

from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError
from marin_optim.transforms.sophia import PROBES, scale_by_sophia
from marin_optim.validation import check_choice, check_int, check_positive, where_of

GROUP = "Second-order"


@OptimizerConfig.register_subclass("sophia")
@dataclass(frozen=True)
class SophiaConfig(OptimizerConfig):
    """Sophia-H: momentum over an EMA of a Hutchinson Hessian diagonal, clipped per coordinate.

    Liu et al., 2023, "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
    Pre-training", https://arxiv.org/abs/2305.14342. At step ``t``, after the global clip::

        m = beta1 m + (1 - beta1) g
        p = p - lr (clip(m / (1 - beta1^t) / max(gamma h, epsilon), clip_threshold) + wd p)
        every update_interval steps (after the update is formed, at the step's parameters):
            h = beta2 h + (1 - beta2) u * (H u)      (u ~ N(0, I), H u from obj_fn)

    Fields, defaults and the order of the estimate are those of Levanter's ``sophia-h`` (as in
    Marin's optimizer study; ``h`` starts at zero, so the first ``update_interval`` steps are
    clipped sign-momentum steps). The trainer must pass the objective:
    ``tx.update(grads, state, params, obj_fn=lambda p: loss(p, batch))`` (the speedrun and
    Levanter's trainer through our plugin do); without it the first update fails saying so. An
    estimate costs one Hessian-vector product (about two gradients) every ``update_interval``
    steps; the other steps cost nothing extra. The probes' PRNG key is in the optimizer state
    (seeded by ``rng_seed``), so a resumed run continues the same stream. Logs
    ``unclipped_fraction`` (the authors aim for 0.1-0.5; raise ``gamma`` if it is lower) and
    ``hessian_updates``.
    """

    beta1: float = 0.96
    """Decay rate of the gradient momentum (bias-corrected)."""
    beta2: float = 0.99
    """Decay rate of the Hessian-diagonal EMA, per estimate (one every update_interval steps)."""
    epsilon: float = 1e-12
    """Floor of the denominator max(gamma h, epsilon) (where h <= 0 the step is a clipped sign)."""
    gamma: float = 0.01
    """Scale of the Hessian diagonal in the denominator (Sophia-H's rho)."""
    clip_threshold: float | None = 1.0
    """Per-coordinate clip of the preconditioned momentum; null = no clip."""
    update_interval: int = 10
    """Steps between Hessian-diagonal estimates (the estimate runs at steps k, 2k, ...)."""
    rng_seed: int = 0
    """Seed of the probes' PRNG key (kept and advanced in the optimizer state)."""
    hessian_probe: Literal["gaussian", "rademacher"] = "gaussian"
    """Hutchinson probe distribution: gaussian (the paper's, Levanter's) or rademacher (optax's)."""

    def validate(self) -> None:
        super().validate()
        check_positive(self, "epsilon")
        check_positive(self, "gamma")
        check_positive(self, "clip_threshold", allow_none=True)
        check_int(self, "update_interval", 1)
        check_int(self, "rng_seed", 0)
        check_choice(self, "hessian_probe", PROBES)
        if self.group_overrides:
            raise ConfigError(
                f"{where_of(self, 'group_overrides')}: the Hessian estimate differentiates obj_fn over "
                "all parameters at once, before groups split them; parameter groups under sophia are "
                "not supported yet (use weight_decay_modules for the decay mask)"
            )

    def direction(self) -> optax.GradientTransformation:
        return scale_by_sophia(
            b1=self.beta1,
            b2=self.beta2,
            eps=self.epsilon,
            gamma=self.gamma,
            clip_threshold=self.clip_threshold,
            update_interval=self.update_interval,
            seed=self.rng_seed,
            probe=self.hessian_probe,
        )


@OptimizerConfig.register_subclass("sophia-h")
@dataclass(frozen=True)
class SophiaHConfig(SophiaConfig):
    """Levanter's and Marin's name of ``sophia`` (the same fields and update)."""
