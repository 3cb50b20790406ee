"""``SpeedrunConfig``: everything a speedrun needs, loadable from Python, YAML and the CLI.

One source of truth: the learning rate, weight decay and schedule live only in ``optimizer``
(an :class:`~marin_optim.OptimizerConfig` chosen by ``type:``); the train section has no copies
of them to silently ignore. Values are checked at construction; checks that need the machine
(device count, data files) run in :func:`marin_optim.speedrun.trainer.preflight`, still before
anything is compiled.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass, field
from typing import Any, Literal

import draccus

from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError, decode_config
from marin_optim.speedrun.data import DataConfig
from marin_optim.speedrun.mesh import MeshConfig
from marin_optim.speedrun.model import ModelConfig


@dataclass(frozen=True)
class Author:
    """Who ran the speedrun (Marin's fields)."""

    name: str = "anonymous"
    affiliation: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class TrainConfig:
    """Batch, length and cadence of the run, and the device mesh."""

    batch_size: int = 16
    """Sequences per optimizer step (global, over all devices and accumulation steps)."""
    seq_len: int = 128
    """Bytes per training sequence (at most model.max_seq_len)."""
    num_train_steps: int = 300
    """Optimizer steps."""
    grad_accum: int = 1
    """Microbatches per step; batch_size / grad_accum sequences go through the model at once."""
    seed: int = 0
    """Seed of the parameter initialisation (and of the data order unless data.seed is set)."""
    eval_interval: int = 100
    """Evaluate every this many steps (and always at the end); 0 = only at the end."""
    eval_sequences: int = 256
    """Validation sequences per evaluation: evenly spaced over the held-out split, always the same;
    rounded up to whole microbatches, and at most what the split holds."""
    checkpoint_interval: int = 100
    """Checkpoint every this many steps (and always at the end); 0 = only at the end."""
    checkpoints_to_keep: int = 2
    """Most recent checkpoints kept on disk."""
    compute_dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """Matmul dtype; parameters and optimizer state stay float32. auto = bfloat16 on GPU/TPU,
    float32 on CPU (where XLA emulates bfloat16 matmuls, measured ~3.6x slower)."""
    mesh: MeshConfig = field(default_factory=MeshConfig)
    """Device mesh: data x model."""

    def __post_init__(self) -> None:
        for name in (
            "batch_size",
            "seq_len",
            "num_train_steps",
            "grad_accum",
            "eval_sequences",
            "checkpoints_to_keep",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"train.{name}={value!r}: must be an int >= 1")
        for name in ("eval_interval", "checkpoint_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"train.{name}={value!r}: must be an int >= 0 (0 = only at the end)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"train.seed={self.seed!r}: must be an int >= 0")
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"train.batch_size={self.batch_size}: must be divisible by train.grad_accum={self.grad_accum}"
            )
        if self.compute_dtype not in ("auto", "bfloat16", "float32"):
            raise ConfigError(
                f"train.compute_dtype={self.compute_dtype!r}: must be one of 'auto', 'bfloat16', 'float32'"
            )

    @property
    def microbatch_size(self) -> int:
        return self.batch_size // self.grad_accum

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


@dataclass(frozen=True)
class DistributedConfig:
    """Multi-process runs (``jax.distributed.initialize``); leave unset for one process."""

    coordinator_address: str | None = None
    """host:port of process 0, e.g. 127.0.0.1:12345."""
    num_processes: int | None = None
    process_id: int | None = None

    @property
    def enabled(self) -> bool:
        return self.coordinator_address is not None

    def __post_init__(self) -> None:
        if self.enabled and (self.num_processes is None or self.process_id is None):
            raise ConfigError(
                "distributed.coordinator_address is set: "
                "also set distributed.num_processes and distributed.process_id"
            )
        if self.enabled and not (0 <= self.process_id < self.num_processes):
            raise ConfigError(
                f"distributed.process_id={self.process_id}: "
                f"must be in [0, num_processes={self.num_processes})"
            )


def default_optimizer() -> OptimizerConfig:
    """``adam`` with its registered defaults.

    Deliberately not tuned here: draccus rebuilds a nested config from its class defaults as soon
    as any ``--optimizer.*`` field is overridden, so a tuned default instance would silently lose
    its values (Marin's "ignored learning rate" pitfall). Scripts pass their tuned optimizer.
    """
    return OptimizerConfig.get_choice_class("adam")()


@dataclass(frozen=True)
class SpeedrunConfig:
    """A speedrun: who, what, the model, the data, the training cadence and the optimizer."""

    author: Author = field(default_factory=Author)
    description: str = "Llama-style byte-level model on the Python standard library"
    """One sentence on what this run tries."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=default_optimizer)
    """The optimizer (choose with type:); the only place learning rate and weight decay live."""
    output_dir: str | None = None
    """Run directory (results, metrics, checkpoints); None = runs/speedrun/<optimizer>-<model preset>."""
    resume: bool = False
    """Continue from the latest checkpoint in output_dir."""
    allow_config_change: bool = False
    """On resume, accept a model/data/train config that differs from the checkpoint's (the
    differences are printed). The optimizer follows optimizer_resume instead."""
    optimizer_resume: Literal["strict", "override", "checkpoint"] = "strict"
    """On resume, whose optimizer values win: strict = they must equal the checkpoint's (else the
    differing fields are listed), override = this config's, checkpoint = the checkpoint's
    (except the optimizer's fixed_fields). The step count always comes from the checkpoint."""
    reset_optimizer_state: bool = False
    """On resume, keep the parameters but start the optimizer state afresh (required to switch
    optimizer type); the LR schedule continues at the checkpoint's step."""
    overwrite: bool = False
    """Start over even if output_dir holds an unfinished run's checkpoints."""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def __post_init__(self) -> None:
        if self.train.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"train.seq_len={self.train.seq_len}: longer than the model's context "
                f"model.max_seq_len={self.model.max_seq_len}"
            )
        if self.resume and self.overwrite:
            raise ConfigError("resume=true and overwrite=true: choose one")
        if self.optimizer_resume not in ("strict", "override", "checkpoint"):
            raise ConfigError(
                f"optimizer_resume={self.optimizer_resume!r}: "
                "must be one of 'strict', 'override', 'checkpoint'"
            )

    @property
    def optimizer_name(self) -> str:
        return OptimizerConfig.get_choice_name(type(self.optimizer))

    @property
    def run_dir(self) -> str:
        if self.output_dir is not None:
            return self.output_dir
        return f"runs/speedrun/{self.optimizer_name}-{self.model.preset}"

    def replace(self, **changes: Any) -> SpeedrunConfig:
        return dataclasses.replace(self, **changes)

    # ---- serialization ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the optimizer with its ``type``), as YAML spells it."""
        return draccus.encode(self)

    def to_yaml(self) -> str:
        buf = io.StringIO()
        draccus.dump(self, buf)
        return buf.getvalue()

    @staticmethod
    def from_dict(data: dict[str, Any]) -> SpeedrunConfig:
        return decode_config(SpeedrunConfig, data)

    @staticmethod
    def from_yaml(text: str) -> SpeedrunConfig:
        import yaml

        return SpeedrunConfig.from_dict(yaml.safe_load(text) or {})


# Fields (and sections) that say how a run is executed, observed or described rather than what it
# computes: a resumed run may change them freely. The mesh is among them: checkpoints are restored
# into whatever sharding the new mesh gives.
RUN_CONTROL_FIELDS = (
    "resume",
    "allow_config_change",
    "optimizer_resume",
    "reset_optimizer_state",
    "overwrite",
    "output_dir",
    "distributed",
    "description",
    "author",
    "train.mesh",
    "train.eval_interval",
    "train.eval_sequences",
    "train.checkpoint_interval",
    "train.checkpoints_to_keep",
)
