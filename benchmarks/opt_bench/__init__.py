"""Times one optimizer step of every registered optimizer against the memory-bandwidth limit.

For each optimizer in ``OptimizerConfig.registered()`` the step is one donated, jitted
``tx.update`` followed by ``optax.apply_updates`` (parameters and optimizer state donated, so
everything can happen in place, as in a real train step) on a Llama-shaped parameter tree.
Each row is compared, in the same run, with

- an in-place memory pass (``x <- a x + b`` over three parameter-sized float32 trees, donated):
  the bandwidth an elementwise optimizer can hope for;
- optax's own alias of the same algorithm with the same settings (``optax.adamw``, ...), or for
  other optimizers the bare ``chain(direction, decay, scale_by_learning_rate)``: the cost of our
  wrapping (inject_hyperparams, clip, skip guard);
- ``torch.optim`` (fused, else foreach) for Adam/AdamW/Adagrad/SGD/RMSprop, with and without
  global-norm clipping and an LR schedule.

Timing: ``--rounds`` rounds; in each, the rows of one optimizer (with the memory pass) are set
up together, warmed up, and stepped in turn ``--reps`` times, in a fresh random order every
rep. A row's time is its best step over all rounds, its spread the median of its per-round
bests over that best. Interleaving makes ratios within one run meaningful on a shared, noisy
machine even when absolute times are not.

Columns: ``B/par`` is the traffic the algorithm needs per parameter (read p, g and the state,
write p and the state, plus one read of g for the clip's norm), from which ``GB/s`` and
``%mem`` (of the memory pass) follow; ``vs_optax``/``vs_torch`` are the reference's time over
ours (above 1: we are faster); ``stB/p`` is optimizer-state bytes per parameter; ``peak MB``,
``tempMB`` and ``copies`` come from XLA's compiled step (arguments + outputs - aliased + temp;
temporary buffers; copies of parameter-sized buffers). On XLA:CPU a temporary buffer is
allocated and page-faulted on every step, so ``tempMB`` above zero is expensive.

Modules, one concern each:

- ``trees``: model shapes, the tree layouts (``--layout``), random trees, their sizes;
- ``rows``: :class:`~.rows.Row`/:class:`~.rows.Runner`, the donated JAX steps, what XLA reports
  about their memory, the memory pass;
- ``configs``: which configurations are timed, optax's alias of each;
- ``torch_ref``: the ``torch.optim`` references;
- ``plan``: the rows of a run and what each is compared with;
- ``run``: the interleaved timing loop;
- ``report``: summary, headline, table and JSON result;
- ``cli``: the command line (usage there); ``benchmarks/optimizer_step.py`` and
  ``python -m benchmarks.opt_bench`` run it.
"""

from __future__ import annotations

import os

# JAX must not grab 75% of a GPU up front: torch shares the device in the same process.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from .cli import main
from .configs import BARE, common_config, config_with
from .rows import compiled_memory
from .trees import fresh_copy, is_shape, llama_shape, parse_count

__all__ = [
    "BARE",
    "common_config",
    "compiled_memory",
    "config_with",
    "fresh_copy",
    "is_shape",
    "llama_shape",
    "main",
    "parse_count",
]
