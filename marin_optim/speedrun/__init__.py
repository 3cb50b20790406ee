"""The speedrun: a Llama-style byte-level model trained with any registered optimizer.

``run_speedrun(SpeedrunConfig(...))`` from Python, ``marin-optim speedrun`` from the shell, and
``run_script(config)`` for an ``experiments/speedrun/*.py`` script (the script's config, with the
command line's dotted overrides on top).
"""

from marin_optim.cli.training import run_script
from marin_optim.speedrun.compare import run_compare
from marin_optim.speedrun.config import Author, DistributedConfig, SpeedrunConfig, TrainConfig
from marin_optim.speedrun.data import DataConfig
from marin_optim.speedrun.mesh import MeshConfig
from marin_optim.speedrun.model import PRESETS, ModelConfig, Transformer
from marin_optim.speedrun.trainer import SpeedrunResult, run_speedrun

__all__ = [
    "PRESETS",
    "Author",
    "DataConfig",
    "DistributedConfig",
    "MeshConfig",
    "ModelConfig",
    "SpeedrunConfig",
    "SpeedrunResult",
    "TrainConfig",
    "Transformer",
    "run_compare",
    "run_script",
    "run_speedrun",
]
