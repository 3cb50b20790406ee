"""Levanter's ``grug_muon``: Muon for models whose parameters are raw ``(fan_in, fan_out)`` arrays."""

from __future__ import annotations

from dataclasses import dataclass

from marin_optim.config import OptimizerConfig
from marin_optim.labels import GrugLabeler, ParamLabeler
from marin_optim.optimizers.muon import MuonConfig

GROUP = "Matrix-aware (orthogonalised updates)"


@OptimizerConfig.register_subclass("grug_muon")
@dataclass(frozen=True)
class GrugMuonConfig(MuonConfig):
    """Muon for raw arrays in the ``(fan_in, fan_out)`` layout (Levanter's Grug models).

    The update rule, fields and defaults are ``muon``'s (Jordan et al., 2024,
    https://kellerjordan.github.io/posts/muon/): ``M = momentum M + G``, ``U = momentum M + G``
    (nesterov) or ``M``, ``p = p - lr (sqrt(max(1, fan_out / fan_in)) NS(U) + wd p)`` (or Kimi's
    ``0.2 sqrt(max(fan_in, fan_out))``). Only the routing differs
    (:class:`~marin_optim.labels.GrugLabeler`, Levanter's rule): every 2-D array, and 3-D stacks
    named ``w_up_gate`` / ``w_gate_up`` / ``w_down``, take Muon, except paths containing
    ``embed``, ``lm_head`` or ``output`` (any case), which take AdamW with everything else.
    It routes by name and shape only: on haliax modules use ``muon``. Unlike Levanter's, it
    runs without a device mesh (Levanter's re-shards each update to its parameter's sharding,
    which needs one); on a mesh the numbers are the same.
    """

    def labeler(self) -> ParamLabeler:
        return GrugLabeler(dict(self.param_labels or {}))
