"""The one process setup every entry point calls, and what it gave this process.

Two process-wide settings make training on XLA:CPU faster (measured in
``docs/performance.md``); neither changes results beyond float32 rounding:

- XLA:CPU's multi-output fusion (:mod:`marin_optim.xla`), read once, when JAX starts its CPU
  backend; with it, optimizers with a one-pass rule (``OptimizerConfig.update_path: auto``) update
  each parameter in one memory pass;
- glibc malloc's transparent huge pages (:mod:`marin_optim.host`), read once, when the process
  starts, so a program re-executes itself to get them.

:func:`setup_process` applies both as far as the process allows: the CLI's training verbs,
speedrun scripts and the benchmarks call it as programs (``program=True``: they may re-execute);
``run_speedrun()`` called from Python calls it too (no re-execution; the fusion pass still goes
on when no JAX computation has run yet). ``MARIN_OPTIM_CPU_MULTI_OUTPUT_FUSION=0`` and
``MARIN_OPTIM_MALLOC_HUGEPAGES=0`` keep either off. :func:`process_setup` says what the process
has, for run headers and results.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessSetup:
    """What this process runs with."""

    cpu_multi_output_fusion: bool
    """XLA:CPU multi-output fusion is on (the flag is read by the CPU backend only; GPU XLA fuses
    multiple outputs by itself)."""
    malloc_hugepages: bool
    """glibc malloc asks for transparent huge pages for large blocks."""

    def describe(self) -> str:
        """``XLA:CPU multi-output fusion on; malloc huge pages on`` (the run header's words)."""
        fusion = "on" if self.cpu_multi_output_fusion else "off"
        pages = "on" if self.malloc_hugepages else "off"
        return f"XLA:CPU multi-output fusion {fusion}; malloc huge pages {pages}"


def setup_process(*, program: bool, cpu_fusion: bool | None = None, hugepages: bool = True) -> ProcessSetup:
    """Huge pages (``program``: by re-executing this process, which may not return) and the fusion
    pass (unless JAX's backend already started); returns what the process has now.

    ``cpu_fusion``: ``None`` switches the pass on unless ``MARIN_OPTIM_CPU_MULTI_OUTPUT_FUSION=0``,
    ``True`` switches it on regardless, ``False`` leaves the process as it is (a benchmark's
    ``--cpu-fusion off``); ``hugepages=False`` never re-executes.
    """
    from marin_optim.host import reexec_with_malloc_hugepages
    from marin_optim.xla import configure_training_process, enable_cpu_multi_output_fusion

    if program and hugepages:
        reexec_with_malloc_hugepages()
    if cpu_fusion is None:
        configure_training_process()
    elif cpu_fusion:
        enable_cpu_multi_output_fusion()
    return process_setup()


def process_setup() -> ProcessSetup:
    """What this process runs with (reads the environment; starts nothing)."""
    from marin_optim.host import malloc_hugepages
    from marin_optim.xla import cpu_multi_output_fusion_enabled

    return ProcessSetup(
        cpu_multi_output_fusion=cpu_multi_output_fusion_enabled(), malloc_hugepages=malloc_hugepages()
    )
