"""The device mesh (``data`` x ``model``) and the haliax axis mappings that shard the model over it.

- Data parallelism: the ``batch`` axis of activations is split over ``data``.
- FSDP (``fsdp=True``): parameters, gradients and optimizer state are split over ``data`` along
  their ``embed`` axis; XLA gathers each weight where it is used and reduce-scatters its gradient.
- Tensor parallelism: ``mlp``, ``kv_heads`` and ``vocab`` are split over ``model`` in parameters
  and activations alike.

Every mapped axis must divide evenly; :func:`check_divisibility` says which one does not before
anything is compiled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import haliax as hax
import jax
import numpy as np
from haliax.partitioning import ResourceMapping, pspec_for_axis
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from marin_optim.errors import ConfigError
from marin_optim.transforms.distributed import state_spec

DATA = "data"
MODEL = "model"
TENSOR_PARALLEL_AXES = ("mlp", "kv_heads", "vocab")


@dataclass(frozen=True)
class MeshConfig:
    """Shape of the device mesh; ``data * model`` devices are used."""

    data: int = -1
    """Devices along the data axis; -1 = all devices not used by the model axis."""
    model: int = 1
    """Devices along the model (tensor-parallel) axis."""
    fsdp: bool = True
    """Shard parameters and optimizer state over the data axis (along their embed axis)."""

    def __post_init__(self) -> None:
        if not isinstance(self.model, int) or isinstance(self.model, bool) or self.model < 1:
            raise ConfigError(f"train.mesh.model={self.model!r}: must be an int >= 1")
        if (
            not isinstance(self.data, int)
            or isinstance(self.data, bool)
            or (self.data < 1 and self.data != -1)
        ):
            raise ConfigError(f"train.mesh.data={self.data!r}: must be an int >= 1, or -1 for all devices")

    def resolve(self, device_count: int) -> tuple[int, int]:
        """``(data, model)`` sizes for ``device_count`` devices, or a ConfigError."""
        if self.model > device_count:
            raise ConfigError(
                f"train.mesh.model={self.model}: larger than the {device_count} available device(s)"
            )
        data = device_count // self.model if self.data == -1 else self.data
        if data * self.model > device_count:
            raise ConfigError(
                f"train.mesh: data={data} x model={self.model} = {data * self.model} devices, "
                f"but only {device_count} are available"
            )
        if self.data == -1 and device_count % self.model:
            raise ConfigError(
                f"train.mesh.model={self.model}: does not divide the {device_count} devices; "
                "set train.mesh.data"
            )
        return data, self.model

    def parameter_mapping(self) -> ResourceMapping:
        """Where each named axis of parameters (and optimizer state) lives."""
        mapping: dict[str, Any] = {axis: MODEL for axis in TENSOR_PARALLEL_AXES}
        if self.fsdp:
            mapping["embed"] = DATA
        return mapping

    def compute_mapping(self) -> ResourceMapping:
        """Where each named axis of activations lives."""
        mapping: dict[str, Any] = {axis: MODEL for axis in TENSOR_PARALLEL_AXES}
        mapping["batch"] = DATA
        return mapping


def make_mesh(cfg: MeshConfig) -> Mesh:
    """A ``(data, model)`` mesh over the first ``data * model`` global devices.

    Axes are ``AxisType.Auto`` (``jax.make_mesh`` now defaults to Explicit): shardings are
    constraints that XLA's partitioner propagates, which is what haliax's axis mappings emit.
    """
    data, model = cfg.resolve(jax.device_count())
    return jax.make_mesh(
        (data, model),
        (DATA, MODEL),
        axis_types=(AxisType.Auto, AxisType.Auto),
        devices=jax.devices()[: data * model],
    )


def check_divisibility(
    sizes: dict[str, int], mapping: ResourceMapping, mesh_shape: dict[str, int], what: str
) -> None:
    """ConfigError naming the first axis whose size is not a multiple of its mesh axis."""
    for axis, size in sizes.items():
        target = mapping.get(axis)
        if target is None:
            continue
        targets = (target,) if isinstance(target, str) else tuple(target)
        n = int(np.prod([mesh_shape[t] for t in targets]))
        if size % n:
            raise ConfigError(
                f"{what}: {axis} size {size} is not divisible by the "
                f"{'x'.join(targets)} mesh axis ({n} devices)"
            )


def sharding_tree(tree: Any, mapping: ResourceMapping, mesh: Mesh) -> Any:
    """A ``NamedSharding`` for every array in ``tree``: NamedArrays by their axis names through
    ``mapping``; plain arrays (an optimizer's per-block matrices, step counts) by
    :func:`~marin_optim.transforms.distributed.state_spec`: large ones split along an axis the
    device count divides, small ones replicated."""

    def one(x: Any) -> Any:
        if isinstance(x, hax.NamedArray):
            if not hasattr(x.array, "shape"):  # optax's masked or per-axis (SM3) states
                return NamedSharding(mesh, PartitionSpec())
            spec = pspec_for_axis(x.axis_names, mapping)
            if _divides(x.array.shape, spec, mesh):
                return NamedSharding(mesh, spec)
            # optax's reduced states (factored moments, clipping histories) keep a parameter's
            # names around an array of another shape: placed by that shape instead
            x = x.array
        if hasattr(x, "shape"):
            return NamedSharding(mesh, state_spec(x.shape, mesh.size, tuple(mesh.axis_names)))
        return None

    return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, hax.NamedArray))


def _divides(shape: tuple[int, ...], spec: PartitionSpec, mesh: Mesh) -> bool:
    """Whether ``spec`` names one entry per axis of ``shape`` and its mesh axes divide each."""
    if len(spec) != len(shape):
        return False
    for size, entry in zip(shape, spec, strict=True):
        names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        if size % int(np.prod([mesh.shape[n] for n in names])):
            return False
    return True


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Token batches ``[grad_accum, microbatch, seq_len + 1]``: microbatch split over ``data``."""
    return NamedSharding(mesh, PartitionSpec(None, DATA, None))
