"""marin_optim: Levanter-style optimizer configs for JAX/Optax, with a speedrun trainer.

The public API is re-exported here; nothing outside this package should import private paths.
"""

from marin_optim.config import (
    OptimizerConfig,
    check_choice,
    check_duration,
    check_positive,
    check_range,
)
from marin_optim.errors import ConfigError
from marin_optim.optimizers.adam import AdamConfig, AdamWConfig
from marin_optim.optimizers.adamax import AdamaxConfig
from marin_optim.optimizers.lion import LionConfig
from marin_optim.optimizers.sgd import SGDConfig
from marin_optim.params import leaf_paths, weight_decay_mask
from marin_optim.schedules import ScheduleConfig
from marin_optim.state import hyperparams
from marin_optim.transforms.clipping import clip_by_global_norm

__all__ = [
    "AdamConfig",
    "AdamWConfig",
    "AdamaxConfig",
    "ConfigError",
    "LionConfig",
    "OptimizerConfig",
    "SGDConfig",
    "ScheduleConfig",
    "check_choice",
    "check_duration",
    "check_positive",
    "check_range",
    "clip_by_global_norm",
    "hyperparams",
    "leaf_paths",
    "weight_decay_mask",
]
