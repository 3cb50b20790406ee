"""``OptimizerConfig`` and what every optimizer shares: fields and validation (:mod:`.base`), the build
template (:mod:`.template`), parameter groups (:mod:`.groups`) and resume rules (:mod:`.resume`)."""

from marin_optim.config.base import OptimizerConfig
from marin_optim.config.groups import DEFAULT_GROUP, ParameterGroup
from marin_optim.config.resume import ResumeMode, config_differences, resolve_resume
from marin_optim.config.template import built_by, inject_hyperparams

__all__ = [
    "DEFAULT_GROUP",
    "OptimizerConfig",
    "ParameterGroup",
    "ResumeMode",
    "built_by",
    "config_differences",
    "inject_hyperparams",
    "resolve_resume",
]
