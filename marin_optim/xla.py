"""XLA:CPU multi-output fusion for training processes (a process-wide compiler switch).

XLA:CPU fuses elementwise work into single-output loops unless its multi-output fusion pass
is on; the pass is off by default and can only be switched on through ``XLA_FLAGS``
(``--xla_backend_extra_options=xla_cpu_use_multi_output_fusion``), read once, when JAX starts
its CPU backend. With it, loops that read the same arrays become one loop writing several
outputs. Two consequences matter here:

- Elementwise optimizers can be one memory pass per parameter, like torch's fused kernels
  (:mod:`marin_optim.transforms.single_pass`, which ``adam``/``adamw``, ``adamax``, ``lion``,
  ``adagrad``, ``rmsprop``, ``rmsprop_plain`` and ``sgd`` use whenever the pass is on); the
  speedrun's whole train step runs faster too.
- The pass stops XLA from copying a cheap elementwise value into each loop that reads it: a
  value read by two loops is written to a temporary buffer instead. In an optimizer without a
  one-pass rule the clipped gradient ``g * scale`` (read by both moments) becomes such a
  temporary, so its isolated optimizer step with clipping is slower than without the pass.

Measured side by side in ``benchmarks/xla_cpu_fusion.py`` (``docs/performance.md``). Results agree
to float32 rounding, not bitwise (loops are vectorized differently).

``marin-optim speedrun`` and ``compare`` switch it on for their own process unless
``MARIN_OPTIM_CPU_MULTI_OUTPUT_FUSION=0``; library users call
:func:`enable_cpu_multi_output_fusion` before their first JAX computation. Accelerator
backends ignore the option (GPU XLA has its own multi-output fusion, always on).
"""

from __future__ import annotations

import os
import re

from marin_optim.host import switched_off

MULTI_OUTPUT_FUSION = "xla_cpu_use_multi_output_fusion"
"""The XLA:CPU backend option (a key of ``--xla_backend_extra_options``)."""
EXTRA_OPTIONS_FLAG = "--xla_backend_extra_options"
ENV_SWITCH = "MARIN_OPTIM_CPU_MULTI_OUTPUT_FUSION"
"""Set to 0/false/no/off to keep the CLI from switching the pass on."""


_EXTRA_OPTIONS = re.compile(rf"(?:^|\s){re.escape(EXTRA_OPTIONS_FLAG)}=(\S*)")
"""An ``--xla_backend_extra_options=...`` token of ``XLA_FLAGS`` (its value holds no space)."""


def _extra_options(flags: str) -> list[str]:
    """The keys (``key`` or ``key=value``) of the last ``--xla_backend_extra_options`` in ``flags``."""
    found = _EXTRA_OPTIONS.findall(flags)
    return [o for o in found[-1].split(",") if o] if found else []


def with_multi_output_fusion(flags: str) -> str:
    """``flags`` (an ``XLA_FLAGS`` value) with the multi-output fusion key added.

    An existing ``--xla_backend_extra_options`` keeps its other keys (XLA reads only the last
    one given, so they are merged into a single flag); flags already holding the key are
    returned unchanged.
    """
    options = _extra_options(flags)
    if any(o.split("=", 1)[0] == MULTI_OUTPUT_FUSION for o in options):
        return flags
    # the other flags stay as written: XLA splits XLA_FLAGS itself and stops, silently, at a token
    # that does not start with "-" (shlex's quoting of a ".*" would make one)
    kept = " ".join(_EXTRA_OPTIONS.sub(" ", flags).split())
    return f"{kept} {EXTRA_OPTIONS_FLAG}={','.join([*options, MULTI_OUTPUT_FUSION])}".strip()


def cpu_multi_output_fusion_enabled(flags: str | None = None) -> bool:
    """Whether ``flags`` (default: this process's ``XLA_FLAGS``) switch the pass on.

    XLA reads ``XLA_FLAGS`` once, when the backend starts: this reports what the process's
    backend was (or will be) started with as long as nobody changed the variable since.
    """
    flags = os.environ.get("XLA_FLAGS", "") if flags is None else flags
    for option in _extra_options(flags):
        key, _, value = option.partition("=")
        if key == MULTI_OUTPUT_FUSION:
            return value.lower() not in ("0", "false")
    return False


def _backends_started() -> bool:
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def enable_cpu_multi_output_fusion() -> bool:
    """Switches XLA:CPU's multi-output fusion on for this process; returns whether it is on.

    Must run before the first JAX computation (or ``jax.devices()``): once the backend has
    started, ``XLA_FLAGS`` is left alone and the return value says whether the running
    backend has the pass. Raises nothing: the pass changes speed, and results only by rounding.
    """
    if cpu_multi_output_fusion_enabled():
        return True
    if _backends_started():
        return False
    os.environ["XLA_FLAGS"] = with_multi_output_fusion(os.environ.get("XLA_FLAGS", ""))
    return True


def configure_training_process() -> bool:
    """What the training verbs call first: the pass on, unless :data:`ENV_SWITCH` says no."""
    if switched_off(ENV_SWITCH):
        return cpu_multi_output_fusion_enabled()
    return enable_cpu_multi_output_fusion()
