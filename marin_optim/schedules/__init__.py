"""Learning-rate and weight-decay schedules: every shape, one registry.

Modules: :mod:`.context` (the run a schedule is built for), :mod:`.base` (the registry and the
jit-safe pieces), :mod:`.cycles` (Levanter's cycle shapes), :mod:`.whole_run` (OLMo-core's),
:mod:`.parse` (YAML/CLI values, building, key steps, the weight-decay schedule).

A schedule is a registered frozen dataclass (``ScheduleConfig``), chosen in YAML or on the
command line by name (``lr_schedule: cosine``) or as a mapping
(``lr_schedule: {type: wsd, decay_style: exponential}``). ``build(ctx)`` turns it into an
``optax.Schedule``: a jit-safe function of the (traced) step. Everything a schedule needs
besides its own fields (peak LR, run length, warmup, min LR, cycles, units) is in a
``ScheduleContext``, which ``OptimizerConfig.lr_scheduler`` builds from its common fields.

Two families:

- **Cycle shapes** (Levanter's assembly): ``constant, linear, cosine, inv_sqrt, inv, power,
  polynomial, wsd``. The run is split into cycles (``cycles`` / ``cycle_length``); each cycle is
  a linear warmup (from ``warmup_init_lr`` in the first cycle, from the previous cycle's final
  LR in later ones, over ``warmup`` resp. ``rewarmup``), a flat stable phase at the peak, and a
  decay of the shape over ``decay`` steps (default: the rest of the cycle). The pieces are
  joined like ``optax.join_schedules``: each sees the step relative to its own start.
- **Whole-run schedules** (OLMo-core's): ``half_cosine, cosine_linear_decay, exponential,
  power_lr, wsds, sequential``. Each defines the LR over the whole run by its own formula.

Conventions shared by every schedule here:

- Steps are 0-based (optax evaluates the schedule at count 0 for the first update). Phases are
  half-open ``[start, end)``: a warmup of ``w`` steps gives ``warmup_init_lr`` at step 0 and the
  peak at step ``w`` (so ``warmup: 1`` is one step); a decay of ``D`` steps starting at ``s``
  reaches its end value at ``s + D``. The floor of a decay that fills the run is therefore
  reached at step ``num_train_steps``, one past the last update (Levanter's and optax's
  convention). Past the end the last phase continues: a decay holds its end value, while the
  open-ended laws (``inv_sqrt``, ``power``, ``power_lr`` without a tail) keep decaying.
- Durations: an ``int`` is a count of steps (of tokens with ``units="tokens"``, converted to
  ``ceil(tokens / tokens_per_step)`` steps); a ``float`` in ``[0, 1]`` is a fraction, rounded
  down to whole steps (of the cycle for ``warmup``/``rewarmup``/``decay`` in cycle shapes, of the
  run otherwise). A float above 1 is an error, never a step count.
- Clamping: a warmup longer than its cycle is shortened to the cycle (the ramp reaches the
  peak exactly at the cycle's end); a decay longer than what the warmup leaves is shortened to
  that remainder (the stable phase vanishes and the decay starts at the peak where the warmup
  ends). A zero-length phase is left out, so clamping never makes the LR jump.
- The floor ("min LR") is ``min_lr`` when set, else ``peak_lr * min_lr_ratio``.
- Every bad input raises ``ConfigError`` naming the field, the value and what is allowed, at
  construction or in ``build``; nothing is raised from inside a traced computation.
"""

from marin_optim.schedules.base import ScheduleConfig
from marin_optim.schedules.context import ScheduleContext
from marin_optim.schedules.cycles import (
    ConstantSchedule,
    CosineSchedule,
    CycleSchedule,
    InvSchedule,
    InvSqrtSchedule,
    LinearSchedule,
    PolynomialSchedule,
    PowerSchedule,
    WSDSchedule,
)
from marin_optim.schedules.parse import (
    build_lr_schedule,
    encode_schedule,
    key_steps,
    parse_schedule,
    weight_decay_schedule,
)
from marin_optim.schedules.whole_run import (
    CosineLinearDecaySchedule,
    ExponentialSchedule,
    HalfCosineSchedule,
    OverrideDecay,
    PowerLRSchedule,
    SequentialSchedule,
    WSDSSchedule,
)
from marin_optim.validation import Duration

__all__ = [
    "ConstantSchedule",
    "CosineLinearDecaySchedule",
    "CosineSchedule",
    "CycleSchedule",
    "Duration",
    "ExponentialSchedule",
    "HalfCosineSchedule",
    "InvSchedule",
    "InvSqrtSchedule",
    "LinearSchedule",
    "OverrideDecay",
    "PolynomialSchedule",
    "PowerLRSchedule",
    "PowerSchedule",
    "ScheduleConfig",
    "ScheduleContext",
    "SequentialSchedule",
    "WSDSSchedule",
    "WSDSchedule",
    "build_lr_schedule",
    "encode_schedule",
    "key_steps",
    "parse_schedule",
    "weight_decay_schedule",
]
