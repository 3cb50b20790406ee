"""Test setup shared by tests/ and the docstring examples in marin_optim/: keep XLA to the machine's
cores and make output deterministic."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # batched LAPACK calls crawl with many threads
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Test processes and the runs they start share one process setup: this one starts JAX before any
# test can switch XLA:CPU multi-output fusion on (below), so subprocesses keep it off too unless a
# test asks for it (tests/speedrun/test_cpu_fusion.py); otherwise a run in a subprocess and its
# resumption in this process would differ in the last bits (marin_optim/runtime.py).
os.environ.setdefault("MARIN_OPTIM_CPU_MULTI_OUTPUT_FUSION", "0")

# Start JAX's backend now, so that a test calling the CLI in-process (which switches XLA:CPU
# multi-output fusion on before the backend starts, marin_optim/xla.py) cannot change the
# compiler for the tests that follow it in this worker. Subprocess runs still get the CLI's
# setting; tests/speedrun/test_cpu_fusion.py tests both.
import jax

jax.devices()


# Doctest collection imports every module of the package: not the program entry points, and not
# the Levanter plugin, which needs the `levanter` extra (its tests are in tests/levanter).
collect_ignore = ["marin_optim/cli/__main__.py", "marin_optim/levanter"]
