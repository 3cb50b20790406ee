"""Huge pages for XLA:CPU's large buffers (glibc malloc), set for training processes.

XLA:CPU allocates each step's fresh buffers (gradients, activations, temporaries, outputs that
do not alias a donated input) with ``malloc``. glibc serves blocks above 32 MB with a fresh
``mmap`` and unmaps them on ``free``, so every step faults their pages in again: a 200 MB buffer
is ~49,000 page faults, each zeroing 4 KB in the kernel, which costs more than the arithmetic
that fills it. With the glibc tunable ``glibc.malloc.hugetlb=1`` (glibc >= 2.35) ``malloc``
marks those mappings for transparent huge pages (``madvise(MADV_HUGEPAGE)``): 2 MB pages, ~100
faults for the same buffer. Results are bitwise the same; only the kernel's work changes.

Tunables are read once, when a process starts, so ``marin-optim speedrun``/``compare`` (and
speedrun scripts run as programs) re-execute themselves with the tunable added to
``GLIBC_TUNABLES`` before anything else happens (:func:`reexec_with_malloc_hugepages`), where it
helps: Linux, glibc >= 2.35, transparent huge pages in ``madvise`` mode (``always`` already
covers these mappings; ``never`` cannot). ``MARIN_OPTIM_MALLOC_HUGEPAGES=0`` keeps the process
as started. Measured in ``benchmarks/xla_cpu_fusion.py --compare hugepages`` (``docs/performance.md``).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb"
"""The glibc tunable; value 1: ``madvise`` transparent huge pages on malloc's mappings."""
ENV_SWITCH = "MARIN_OPTIM_MALLOC_HUGEPAGES"
"""Set to 0/false/no/off to keep the training verbs from re-executing with the tunable."""
REEXEC_MARKER = "MARIN_OPTIM_REEXECUTED"
"""Set in the re-executed process, so that it never re-executes again."""
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"

_OFF = ("0", "false", "no", "off")


def switched_off(name: str, env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment variable ``name`` is set to 0, false, no or off (any case)."""
    env = os.environ if env is None else env
    return env.get(name, "").strip().lower() in _OFF


def _tunables(value: str) -> dict[str, str]:
    """``GLIBC_TUNABLES`` (``name=value:name=value``) as a mapping."""
    out = {}
    for item in value.split(":"):
        name, sep, val = item.partition("=")
        if sep and name:
            out[name.strip()] = val.strip()
    return out


def with_tunable(value: str, on: bool = True) -> str:
    """``GLIBC_TUNABLES`` with ``glibc.malloc.hugetlb=1`` set (or, ``on=False``, removed), every
    other tunable kept."""
    items = [i for i in value.split(":") if i and i.partition("=")[0].strip() != TUNABLE]
    return ":".join([*items, f"{TUNABLE}=1"] if on else items)


def glibc_version() -> tuple[int, int] | None:
    """The running C library's glibc version, or ``None`` where it is not glibc."""
    try:
        found = re.fullmatch(r"glibc (\d+)\.(\d+).*", os.confstr("CS_GNU_LIBC_VERSION") or "")
    except (AttributeError, ValueError, OSError):
        return None
    return (int(found.group(1)), int(found.group(2))) if found else None


def thp_mode(path: str = THP_ENABLED) -> str | None:
    """The kernel's transparent-huge-page mode (``always``, ``madvise`` or ``never``), if readable."""
    try:
        with open(path) as f:
            found = re.search(r"\[(\w+)\]", f.read())
    except OSError:
        return None
    return found.group(1) if found else None


def malloc_hugepages(env: Mapping[str, str] | None = None, mode: str | None = None) -> bool:
    """Whether this process's large malloc blocks get transparent huge pages.

    True with the tunable set (in the environment the process started with) and the kernel in
    ``madvise`` or ``always`` mode, or with the kernel in ``always`` mode alone.
    """
    env = os.environ if env is None else env
    mode = thp_mode() if mode is None else mode
    if mode == "always":
        return True
    # 2 asks for hugetlbfs pages (MAP_HUGETLB), which need pages reserved, not transparent ones
    return mode == "madvise" and _tunables(env.get("GLIBC_TUNABLES", "")).get(TUNABLE) == "1"


def reexec_reason(env: Mapping[str, str] | None = None, mode: str | None = None) -> str | None:
    """Why :func:`reexec_with_malloc_hugepages` would not re-execute, or ``None`` when it would."""
    env = os.environ if env is None else env
    if switched_off(ENV_SWITCH, env):
        return f"{ENV_SWITCH}={env[ENV_SWITCH]}"
    if env.get(REEXEC_MARKER):
        return "already re-executed"
    if not sys.platform.startswith("linux"):
        return f"not Linux ({sys.platform})"
    version = glibc_version()
    if version is None or version < (2, 35):
        return f"needs glibc >= 2.35 (found {'none' if version is None else '.'.join(map(str, version))})"
    mode = thp_mode() if mode is None else mode
    if mode != "madvise":
        return f"transparent huge pages are {mode or 'unavailable'}"
    if malloc_hugepages(env, mode):
        return "already on"
    chosen = _tunables(env.get("GLIBC_TUNABLES", "")).get(TUNABLE)
    if chosen is not None:  # the user's own choice stays
        return f"GLIBC_TUNABLES sets {TUNABLE}={chosen}"
    return None


def reexec_with_malloc_hugepages() -> None:
    """Replaces this process by itself started with ``glibc.malloc.hugetlb=1``, where that helps.

    Call first thing in a program's entry point (nothing may have been done that the new
    process would repeat visibly). Returns without doing anything when :func:`reexec_reason`
    gives a reason, or if the exec fails.
    """
    if reexec_reason() is not None:
        return
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = with_tunable(env.get("GLIBC_TUNABLES", ""))
    env[REEXEC_MARKER] = "1"
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, argv, env)
    except OSError:  # pragma: no cover - exec of the running interpreter does not fail in practice
        return
