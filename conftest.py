"""Test setup shared by tests/ and the docstring examples in marin_optim/: keep XLA to the machine's
cores and make output deterministic."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # batched LAPACK calls crawl with many threads
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Test processes and the runs they start share one process setup: this one starts JAX before any
# test can switch XLA:CPU multi-output fusion on (below), so subprocesses keep it off too unless a
# test asks for it (tests/speedrun/test_cpu_fusion.py); otherwise a run in a subprocess and its
# resumption in this process would differ in the last bits (marin_optim/runtime.py).
os.environ.setdefault("MARIN_OPTIM_CPU_MULTI_OUTPUT_FUSION", "0")

# One persistent JAX compilation cache for the test session: its xdist workers and the runs they
# start in subprocesses inherit it, so a program compiled once (the speedrun's train step, say) is
# loaded, not compiled again, by the tests that follow. The key is the whole compiled program with
# its compiler options and XLA_FLAGS (so the multi-output fusion switch and the device count), and
# a loaded executable is the one compiled. A fresh directory each session: no state between runs.
_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_OWN_CACHE = _CACHE_ENV not in os.environ
if _OWN_CACHE:
    os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="marin-optim-tests-jax-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# Start JAX's backend now, so that a test calling the CLI in-process (which switches XLA:CPU
# multi-output fusion on before the backend starts, marin_optim/xla.py) cannot change the
# compiler for the tests that follow it in this worker. Subprocess runs still get the CLI's
# setting; tests/speedrun/test_cpu_fusion.py tests both.
import jax  # noqa: E402

jax.devices()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--extended",
        action="store_true",
        help="also run the extended tier: the tests marked `extended` and deeper fuzzing",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The default tier (what CI runs) leaves out the tests marked `extended`: each repeats on
    # another optimizer, layout or entry point what a default-tier test checks, or checks a
    # host-specific switch. `pytest --extended` runs them too.
    if config.getoption("--extended"):
        return
    extended = [item for item in items if item.get_closest_marker("extended")]
    if extended:
        config.hook.pytest_deselected(items=extended)
        items[:] = [item for item in items if not item.get_closest_marker("extended")]


@pytest.fixture
def extended(request: pytest.FixtureRequest) -> bool:
    """Whether this pytest run runs the extended tier (``pytest --extended``)."""
    return bool(request.config.getoption("--extended"))


def pytest_unconfigure(config: pytest.Config) -> None:
    # the session that made the cache (not an xdist worker, which inherits it) removes it
    if _OWN_CACHE and not hasattr(config, "workerinput"):
        shutil.rmtree(os.environ[_CACHE_ENV], ignore_errors=True)


# Doctest collection imports every module of the package: not the program entry points, and not
# the Levanter plugin, which needs the `levanter` extra (its tests are in tests/levanter).
collect_ignore = ["marin_optim/cli/__main__.py", "marin_optim/levanter"]
