"""The optax ``GradientTransformation``\\ s optax lacks, one concern a module, for building your own chains.

Each has a docstring with its update rule and paper. The registered optimizer configs
(:mod:`marin_optim.optimizers`) are built from these and from optax's own.
"""

from marin_optim.transforms._tree import global_norm, tree_select
from marin_optim.transforms.adafactor import scale_by_adafactor
from marin_optim.transforms.adagrad import scale_by_adagrad
from marin_optim.transforms.adam import scale_by_adam
from marin_optim.transforms.adam_mini import adam_mini_blocks, scale_by_adam_mini
from marin_optim.transforms.ademamix import scale_by_ademamix
from marin_optim.transforms.adopt import scale_by_adopt
from marin_optim.transforms.amsgrad import scale_by_amsgrad
from marin_optim.transforms.asgd import asgd_step, average_iterates
from marin_optim.transforms.cautious import cautious
from marin_optim.transforms.cautious_weight_decay import add_cautious_decayed_weights, add_decayed_weights
from marin_optim.transforms.clipping import (
    clip_by_block_rms,
    clip_by_global_norm,
    clip_by_historical_norm,
    unfused_global_norm,
)
from marin_optim.transforms.decoupled import adamc_weight_decay, add_relative_decayed_weights
from marin_optim.transforms.dion import scale_by_dion
from marin_optim.transforms.guards import NonFiniteError, find_guard_state, skip_step_guard
from marin_optim.transforms.hyperball import hyperball
from marin_optim.transforms.kron import scale_by_kron
from marin_optim.transforms.mars import scale_by_mars
from marin_optim.transforms.muon import scale_by_muon, scale_by_normuon
from marin_optim.transforms.nadam import scale_by_nadam
from marin_optim.transforms.namo import namo, namo_d
from marin_optim.transforms.newton_schulz import newton_schulz, orthogonalize_by_newton_schulz
from marin_optim.transforms.noop import discard_updates
from marin_optim.transforms.outliers import clip_outlier_norms, scale_by_adalr_lion
from marin_optim.transforms.prodigy import prodigy
from marin_optim.transforms.radam import scale_by_radam
from marin_optim.transforms.rmsprop import scale_by_rmsprop_momentum
from marin_optim.transforms.rprop import scale_by_rprop
from marin_optim.transforms.sam import sam_gradient
from marin_optim.transforms.single_pass import OnePassRule
from marin_optim.transforms.soap import scale_by_soap
from marin_optim.transforms.sophia import hutchinson_diagonal, hutchinson_probes, scale_by_sophia

__all__ = [
    "NonFiniteError",
    "OnePassRule",
    "adam_mini_blocks",
    "adamc_weight_decay",
    "add_cautious_decayed_weights",
    "add_decayed_weights",
    "add_relative_decayed_weights",
    "asgd_step",
    "average_iterates",
    "cautious",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "clip_by_historical_norm",
    "clip_outlier_norms",
    "discard_updates",
    "find_guard_state",
    "global_norm",
    "hutchinson_diagonal",
    "hutchinson_probes",
    "hyperball",
    "namo",
    "namo_d",
    "newton_schulz",
    "orthogonalize_by_newton_schulz",
    "prodigy",
    "sam_gradient",
    "scale_by_adafactor",
    "scale_by_adagrad",
    "scale_by_adalr_lion",
    "scale_by_adam",
    "scale_by_adam_mini",
    "scale_by_ademamix",
    "scale_by_adopt",
    "scale_by_amsgrad",
    "scale_by_dion",
    "scale_by_kron",
    "scale_by_mars",
    "scale_by_muon",
    "scale_by_nadam",
    "scale_by_normuon",
    "scale_by_radam",
    "scale_by_rmsprop_momentum",
    "scale_by_rprop",
    "scale_by_soap",
    "scale_by_sophia",
    "skip_step_guard",
    "tree_select",
    "unfused_global_norm",
]
