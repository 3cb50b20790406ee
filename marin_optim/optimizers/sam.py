"""``sam``: sharpness-aware minimisation around any optimizer config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import optax

from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError
from marin_optim.optimizers._wrapper import NestedOptimizerConfig, WrapperConfig, derive_config
from marin_optim.optimizers.adam import AdamConfig
from marin_optim.transforms.sam import sam_gradient
from marin_optim.validation import check_positive

GROUP = "Wrappers"


@OptimizerConfig.register_subclass("sam")
@dataclass(frozen=True)
class SAMConfig(WrapperConfig):
    """SAM: steps the base optimizer with the gradient taken at an adversarially perturbed point.

    ``type: sam, rho: 0.05, base: {type: adamw, ...}``. Each step (Foret et al., 2021,
    "Sharpness-Aware Minimization for Efficiently Improving Generalization",
    https://arxiv.org/abs/2010.01412; ``adaptive``: ASAM, Kwon et al., 2021,
    https://arxiv.org/abs/2102.11600)::

        e  = rho * g / ||g||                   (adaptive: rho * w^2 g / ||w g||)
        g' = grad(obj_fn)(w + e)               (a second forward/backward pass)
        w  = base_step(w, g')

    The base's clip applies to ``g`` (its logged ``grad_norm``) and again to ``g'``; its
    schedules, decay and guards apply as usual. The trainer must pass the objective:
    ``tx.update(grads, state, params, obj_fn=lambda p: loss(p, batch))``; without it the first
    update fails with a message saying so. Costs one extra gradient per step.
    """

    WRAPPER_NAME = "sam"

    base: NestedOptimizerConfig = dataclasses.field(default_factory=AdamConfig)  # type: ignore[assignment]
    """The optimizer that takes the step (a config; ``{type: adamw, learning_rate: 3e-3}`` in YAML)."""
    rho: float = 0.05
    """Radius of the perturbation (in units of the gradient norm)."""
    adaptive: bool = False
    """ASAM: scale the perturbation elementwise by |w| (scale-invariant sharpness)."""

    def validate(self) -> None:
        super().validate()
        check_positive(self, "rho")
        base = self.wrapped_base()
        if base is not None and base.group_overrides:
            raise ConfigError(
                "sam.base.group_overrides: SAM must perturb all parameters at once, before the "
                "groups split them; parameter groups under sam are not supported yet"
            )

    def derived(self) -> OptimizerConfig:
        rho, adaptive = self.rho, self.adaptive

        def update_rule(parent: Any, self_: OptimizerConfig, hp: Any) -> optax.GradientTransformation:
            return optax.chain(sam_gradient(rho, adaptive=adaptive, max_norm=self_.clip_norm), parent(hp))

        return derive_config(self.wrapped_base(), "SAM", {"update_rule": update_rule})
