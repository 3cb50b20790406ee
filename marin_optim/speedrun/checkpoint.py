"""Checkpoints with orbax: parameters, optimizer state, data position and step, written atomically.

Each checkpoint is a step directory with two items:

- ``state``: every array of ``{"params": ..., "opt_state": ...}`` under its dotted tree path
  (``params.layers.stacked.attn.q_proj.weight.array``), saved sharded as it lives on the mesh;
- ``meta``: JSON with the step, the data position (sequences consumed), the data fingerprint, the
  accumulated training time and the run's resolved config (checked on resume).

orbax writes into a temporary directory and renames it when complete, so a run killed mid-save
leaves the previous checkpoint intact. Restoring rebuilds the trees from a freshly initialised
template (same structure, same shardings), so what comes back is bitwise what was saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


def _path_name(path: tuple[Any, ...]) -> str:
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.FlattenedIndexKey):
            parts.append(str(key.key))
        else:
            parts.append(str(key).strip(".[]'\""))
    return ".".join(parts)


def flatten_state(tree: Any) -> dict[str, Any]:
    """``{dotted path: array}`` for every array leaf of ``tree``."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    out = {}
    for path, leaf in flat:
        name = _path_name(path)
        if name in out:
            raise ValueError(f"two leaves share the checkpoint name {name!r}")
        out[name] = leaf
    return out


def unflatten_state(template: Any, flat: dict[str, Any]) -> Any:
    """The inverse of :func:`flatten_state`, using ``template`` for the structure."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    return jax.tree_util.tree_unflatten(treedef, [flat[_path_name(path)] for path, _ in leaves])


class Checkpointer:
    """Saves and restores ``(params, opt_state, meta)`` in ``directory`` (an orbax CheckpointManager)."""

    def __init__(self, directory: str | Path, keep: int = 2):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            # Synchronous: the train step donates its buffers, so the arrays must be on the host
            # before the next step runs; a small model's save takes well under a second.
            enable_async_checkpointing=False,
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            # Declared up front so that metadata can be read before anything is restored.
            item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def read_meta(self, step: int) -> dict[str, Any]:
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def save(self, step: int, params: Any, opt_state: Any, meta: dict[str, Any]) -> None:
        state = flatten_state({"params": params, "opt_state": opt_state})
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        self.manager.wait_until_finished()

    def saved_arrays(self, step: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """``{dotted path: (shape, dtype name)}`` of every array saved at ``step`` (reads metadata only)."""
        tree = self.manager.item_metadata(step)["state"]
        tree = getattr(tree, "tree", tree)
        return {name: (tuple(m.shape), str(m.dtype)) for name, m in tree.items()}

    def restore(
        self, step: int, params_template: Any, opt_template: Any | None
    ) -> tuple[Any, Any, dict[str, Any]]:
        """Arrays come back with the template's shapes, dtypes and shardings.

        With ``opt_template=None`` only the parameters come back (the optimizer state is read
        into a replicated buffer and dropped: orbax restores a saved tree whole) and the
        returned optimizer state is ``None``.
        """
        template = {"params": params_template, "opt_state": opt_template}
        abstract = {
            name: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
            for name, x in flatten_state(template).items()
        }
        if opt_template is None:
            first = next(iter(abstract.values()))
            spare = jax.sharding.NamedSharding(first.sharding.mesh, jax.sharding.PartitionSpec())
            for name, (shape, dtype) in self.saved_arrays(step).items():
                abstract.setdefault(name, jax.ShapeDtypeStruct(shape, dtype, sharding=spare))
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
        )
        state = restored["state"]
        tree = unflatten_state(template, {name: state[name] for name in flatten_state(template)})
        return tree["params"], tree["opt_state"], dict(restored["meta"])

    def close(self) -> None:
        self.manager.close()


def load_params(directory: str | Path, step: int | None = None) -> dict[str, Any]:
    """The saved arrays of a checkpoint as ``{dotted path: numpy array}`` (no template needed)."""
    manager = ocp.CheckpointManager(Path(directory).absolute(), item_names=("state", "meta"))
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        return {k: jax.device_get(v) for k, v in restored["state"].items()}
    finally:
        manager.close()
