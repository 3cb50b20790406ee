"""Fixes to Levanter's ``Trainer`` for optimizers built by marin_optim, installed on import.

Levanter's trainer only calls ``optimizer.update(grads, state, params=..., obj_fn=..., loss=...)``
and logs the outermost state's injected values. For a transformation that a marin_optim config
built (:func:`marin_optim.config.built_by`), ``Trainer.__init__`` is wrapped to

1. hand Levanter a loss function that always returns ``(loss, metrics)``. Levanter's ``obj_fun``
   (the ``obj_fn`` optimizers receive) unpacks ``loss, metrics`` from the *raw* loss function,
   which in ``train_lm`` returns the loss alone, so any optimizer that calls ``obj_fn`` (SAM)
   crashed there. Levanter treats both return forms the same everywhere else, so nothing else
   changes;
2. add a hook, run after every step on the host like Levanter's own logging, that logs what
   ``opt_state.hyperparams`` lacks (:func:`marin_optim.state.beyond_injected`: ``grad_norm``, the
   guard's ``skip/*`` counters) as ``optim/<name>``, prints the optimizer's parameter table once,
   and stops the run with :class:`~marin_optim.transforms.guards.NonFiniteError` after
   ``max_nonfinite_steps`` non-finite steps in a row, as marin_optim's own trainer does.

Before Levanter's trainer looks for checkpoints to resume from, it also sets aside torn ones
(:func:`set_aside_torn_checkpoints`): Levanter writes a checkpoint's ``metadata.json`` last and not
atomically, so a run killed during that write leaves a file its checkpointer cannot parse, and
every resume then fails in ``Checkpointer.__init__`` (``JSONDecodeError``).

Any other optimizer's trainer is untouched. The fixes are idempotent and reversible
(:func:`remove_trainer_fixes`).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from collections.abc import Callable
from typing import Any

from marin_optim.config import OptimizerConfig, built_by
from marin_optim.errors import ConfigError
from marin_optim.state import beyond_injected
from marin_optim.transforms.guards import check_nonfinite_run, find_guard_state

logger = logging.getLogger(__name__)

_ORIGINAL_INIT = "__marin_optim_original__"
TRAINER_ARGUMENTS = ("config", "optimizer", "loss_fn")
"""The arguments of Levanter's ``Trainer.__init__`` the fixes read (checked when installed)."""


def returns_loss_and_metrics(loss_fn: Callable[..., Any]) -> Callable[..., Any]:
    """``loss_fn`` returning ``(loss, metrics)`` whether it returns that or the loss alone."""

    @functools.wraps(loss_fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = loss_fn(*args, **kwargs)
        if isinstance(result, tuple) and len(result) == 2:
            return result
        return result, {}

    return wrapped


class OptimizerMonitor:
    """A Levanter hook: logs the optimizer's statistics and enforces ``max_nonfinite_steps``."""

    def __init__(self, config: OptimizerConfig):
        self.config = config
        self._described = False

    def __call__(self, info: Any) -> None:
        import jax
        import levanter.tracker

        opt_state = info.opt_state
        if not self._described:
            self._described = True
            self._describe(info.state)
        guard = find_guard_state(opt_state)
        run = (guard.consecutive_nonfinite, guard.nonfinite_steps) if guard is not None else None
        values, run = jax.device_get((beyond_injected(opt_state), run))  # one transfer per step
        if values:
            levanter.tracker.log({f"optim/{k}": v.item() for k, v in values.items()}, step=info.step)
        if run is not None:
            check_nonfinite_run(int(run[0]), int(run[1]), self.config.max_nonfinite_steps)

    def _describe(self, state: Any) -> None:
        try:
            table = self.config.param_table(state.trainable_model)
        except Exception as e:  # a description must never stop a run
            logger.info("marin_optim: no parameter table for this model (%s)", e)
            return
        logger.info("marin_optim optimizer %s:\n%s", type(self.config).__name__, table)


def set_aside_torn_checkpoints(paths: list[str], asked: str | None = None) -> list[str]:
    """Renames the unreadable ``metadata.json`` of each checkpoint under ``paths`` (folders that
    hold a run's checkpoints, local or any fsspec URL) to ``metadata.json.torn``, and returns the
    checkpoints set aside.

    Levanter writes ``metadata.json`` after the arrays, so a checkpoint whose metadata does not
    parse was cut off while being written; without its ``metadata.json`` Levanter no longer counts
    it as a checkpoint and resumes from the last complete one. Nothing is deleted. ``asked``, a
    checkpoint the run was told to load (``trainer.load_checkpoint_path``), is not set aside when
    torn but refused (``ConfigError``): without it the run would start afresh."""
    import fsspec

    torn = []
    for path in paths:
        fs, root = fsspec.core.url_to_fs(path)
        root = root.rstrip("/")
        for meta in sorted({*fs.glob(f"{root}/metadata.json"), *fs.glob(f"{root}/*/metadata.json")}):
            try:
                json.loads(fs.cat_file(meta))
                continue
            except FileNotFoundError:  # set aside by another process of the run
                continue
            except ValueError:  # JSONDecodeError and UnicodeDecodeError: torn
                pass
            if asked is not None and meta == f"{fsspec.core.url_to_fs(asked)[1].rstrip('/')}/metadata.json":
                raise ConfigError(
                    f"trainer.load_checkpoint_path={asked!r}: its metadata.json was cut off while being "
                    "written (a killed run); point it at a complete checkpoint or at the folder holding them"
                )
            try:
                fs.mv(meta, f"{meta}.torn")
            except FileNotFoundError:
                continue
            torn.append(meta.rsplit("/", 2)[-2])
            logger.warning(
                "marin_optim: checkpoint %s was cut off while its metadata.json was written; set aside "
                "(metadata.json.torn) so the run resumes from the last complete checkpoint",
                meta.rsplit("/", 1)[0],
            )
    return torn


def install_trainer_fixes() -> None:
    """Wraps ``levanter.trainer.Trainer.__init__`` as the module docstring says; idempotent."""
    from levanter.trainer import Trainer

    init = Trainer.__init__
    if hasattr(init, _ORIGINAL_INIT):
        return
    signature = inspect.signature(init)
    missing = [name for name in TRAINER_ARGUMENTS if name not in signature.parameters]
    if missing:  # a Levanter whose Trainer changed: the fixes (the guard first) would silently not apply
        raise ImportError(
            f"marin_optim.levanter: this Levanter's Trainer.__init__{signature} lacks {', '.join(missing)}, "
            "which marin_optim's fixes read; use the Levanter version marin_optim's [levanter] extra pins"
        )

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        config = built_by(bound.arguments.get("optimizer"))
        trainer_config = bound.arguments.get("config")
        if config is not None:
            bound.arguments["loss_fn"] = returns_loss_and_metrics(bound.arguments["loss_fn"])
            if getattr(trainer_config, "id", None) is not None:
                asked = trainer_config.load_checkpoint_path
                ckpt = trainer_config.checkpointer  # the run's own: its Checkpointer reads them all
                own = [ckpt.expanded_path(trainer_config.id), ckpt.expanded_temporary_path(trainer_config.id)]
                set_aside_torn_checkpoints([p for p in (*own, asked) if p is not None], asked=asked)
        init(*bound.args, **bound.kwargs)
        if config is None:
            return
        if config.skip_nonfinite and getattr(trainer_config, "crash_on_nan", False):
            logger.warning(
                "trainer.crash_on_nan is true: Levanter stops at the first NaN loss before marin_optim's "
                "guard can skip it; set trainer.crash_on_nan: false (and crash_on_inf) to let "
                "max_nonfinite_steps=%d decide",
                config.max_nonfinite_steps,
            )
        self.add_hook(OptimizerMonitor(config), every=1)

    setattr(__init__, _ORIGINAL_INIT, init)
    Trainer.__init__ = __init__


def remove_trainer_fixes() -> None:
    """Restores Levanter's own ``Trainer.__init__``."""
    from levanter.trainer import Trainer

    original = getattr(Trainer.__init__, _ORIGINAL_INIT, None)
    if original is not None:
        Trainer.__init__ = original
