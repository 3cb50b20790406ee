"""marin_optim: Levanter-style optimizer configs for JAX/Optax, with a speedrun trainer.

The public API is re-exported here; nothing outside this package should import private paths.
"""

from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError
from marin_optim.optimizers._wrapper import NestedOptimizerConfig
from marin_optim.optimizers.adam import AdamConfig, AdamWConfig
from marin_optim.optimizers.adam_mini import MiniConfig
from marin_optim.optimizers.adamax import AdamaxConfig
from marin_optim.optimizers.adaptive import CautiousConfig
from marin_optim.optimizers.cautious import CautiousWrapperConfig
from marin_optim.optimizers.dion import DionConfig
from marin_optim.optimizers.grug_muon import GrugMuonConfig
from marin_optim.optimizers.hyperball import AdamHConfig, MuonHConfig
from marin_optim.optimizers.lion import LionConfig
from marin_optim.optimizers.muon import MuonConfig, NorMuonConfig
from marin_optim.optimizers.namo import NamoConfig, NamoDConfig
from marin_optim.optimizers.noop import NoOpConfig
from marin_optim.optimizers.optax_registry import UNSUPPORTED as OPTAX_UNSUPPORTED
from marin_optim.optimizers.optax_registry import optax_config
from marin_optim.optimizers.sam import SAMConfig
from marin_optim.optimizers.schedule_free import eval_params
from marin_optim.optimizers.scion import ScionConfig
from marin_optim.optimizers.sgd import SGDConfig
from marin_optim.optimizers.soap import SoapConfig
from marin_optim.optimizers.sophia import SophiaConfig
from marin_optim.params import leaf_paths, weight_decay_mask
from marin_optim.schedules import (
    CycleSchedule,
    ScheduleConfig,
    ScheduleContext,
    build_lr_schedule,
    encode_schedule,
    key_steps,
    parse_schedule,
    weight_decay_schedule,
)
from marin_optim.state import hyperparams
from marin_optim.transforms.clipping import clip_by_global_norm
from marin_optim.validation import check_choice, check_duration, check_int, check_positive, check_range

__all__ = [
    "OPTAX_UNSUPPORTED",
    "AdamConfig",
    "AdamHConfig",
    "AdamWConfig",
    "AdamaxConfig",
    "CautiousConfig",
    "CautiousWrapperConfig",
    "ConfigError",
    "CycleSchedule",
    "DionConfig",
    "GrugMuonConfig",
    "LionConfig",
    "MiniConfig",
    "MuonConfig",
    "MuonHConfig",
    "NamoConfig",
    "NamoDConfig",
    "NestedOptimizerConfig",
    "NoOpConfig",
    "NorMuonConfig",
    "OptimizerConfig",
    "SAMConfig",
    "SGDConfig",
    "ScheduleConfig",
    "ScheduleContext",
    "ScionConfig",
    "SoapConfig",
    "SophiaConfig",
    "build_lr_schedule",
    "check_choice",
    "check_duration",
    "check_int",
    "check_positive",
    "check_range",
    "clip_by_global_norm",
    "encode_schedule",
    "eval_params",
    "hyperparams",
    "key_steps",
    "leaf_paths",
    "optax_config",
    "parse_schedule",
    "weight_decay_mask",
    "weight_decay_schedule",
]
