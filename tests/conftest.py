"""Shared test setup: keep XLA to the machine's cores and make test output deterministic."""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # batched LAPACK calls crawl with many threads
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Start JAX's backend now, so that a test calling the CLI in-process (which switches XLA:CPU
# multi-output fusion on before the backend starts, marin_optim/xla.py) cannot change the
# compiler for the tests that follow it in this worker. Subprocess runs still get the CLI's
# setting; tests/speedrun/test_cpu_fusion.py tests both.
import jax

jax.devices()


def _levanter_installed() -> bool:
    # `levanter.optim`, not `levanter`: without the extra, `import levanter` finds tests/levanter
    # itself (a namespace package on pytest's path).
    try:
        return importlib.util.find_spec("levanter.optim") is not None
    except ImportError:
        return False


# The Levanter plugin's tests need the `levanter` extra (pip install -e ".[levanter,test]").
collect_ignore = [] if _levanter_installed() else ["levanter"]
