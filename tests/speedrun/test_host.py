"""Huge pages for malloc (marin_optim/host.py): the tunable edit, when to re-execute, and a real run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from speedrun_helpers import TINY_ARGS

from marin_optim import host

ON = f"{host.TUNABLE}=1"


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("", ON),
        ("glibc.malloc.arena_max=2", f"glibc.malloc.arena_max=2:{ON}"),
        (f"{host.TUNABLE}=0:glibc.malloc.tcache_count=0", f"glibc.malloc.tcache_count=0:{ON}"),
        (ON, ON),
    ],
)
def test_tunable_is_set_once_keeping_the_others(before, after):
    assert host.with_tunable(before) == after
    assert host.with_tunable(before, on=False) == after.removesuffix(ON).rstrip(":")


def test_switched_off_reads_the_usual_words():
    assert [host.switched_off("X", {"X": v}) for v in ("0", " Off ", "no", "FALSE")] == [True] * 4
    assert [host.switched_off("X", {"X": v}) for v in ("1", "on", "")] == [False] * 3
    assert host.switched_off("X", {}) is False


@pytest.mark.parametrize(
    ("tunables", "mode", "expected"),
    [
        (ON, "madvise", True),
        ("", "madvise", False),
        (f"{host.TUNABLE}=0", "madvise", False),
        (f"{host.TUNABLE}=2", "madvise", False),  # hugetlbfs pages, not transparent ones
        ("", "always", True),
        (ON, "never", False),
        (ON, None, False),
    ],
)
def test_whether_large_blocks_get_huge_pages(tunables, mode, expected):
    assert host.malloc_hugepages({"GLIBC_TUNABLES": tunables}, mode=mode or "unreadable") is expected


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert host.thp_mode(str(path)) == "madvise"
    assert host.thp_mode(str(tmp_path / "missing")) is None


def test_reasons_not_to_reexecute():
    assert host.reexec_reason({host.ENV_SWITCH: "0"}, mode="madvise") == f"{host.ENV_SWITCH}=0"
    assert host.reexec_reason({host.REEXEC_MARKER: "1"}, mode="madvise") == "already re-executed"
    version = host.glibc_version()
    if not sys.platform.startswith("linux") or version is None or version < (2, 35):
        assert host.reexec_reason({}, mode="madvise") is not None
        return
    assert host.reexec_reason({}, mode="madvise") is None
    assert host.reexec_reason({"GLIBC_TUNABLES": ON}, mode="madvise") == "already on"
    off = {"GLIBC_TUNABLES": f"{host.TUNABLE}=0"}  # the user's explicit choice is kept
    assert host.reexec_reason(off, mode="madvise") == f"GLIBC_TUNABLES sets {host.TUNABLE}=0"
    assert host.reexec_reason({}, mode="always") == "transparent huge pages are always"
    assert host.reexec_reason({}, mode="never") == "transparent huge pages are never"


def _speedrun(tmp_path, name: str, **env: str) -> tuple[str, bool]:
    """``python -m marin_optim.cli speedrun`` (the program path, which may re-execute) in a clean env."""
    clean = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host.REEXEC_MARKER)}
    run_dir = tmp_path / name
    proc = subprocess.run(
        [sys.executable, "-m", "marin_optim.cli", "speedrun", *TINY_ARGS, "--output_dir", str(run_dir),
         "--train.checkpoint_interval", "0"],
        env={**clean, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3", **env},
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = next(line for line in proc.stdout.splitlines() if "mesh:" in line)
    recorded = json.loads((run_dir / "results.json").read_text())["runs"][0]["run_info"]["malloc_hugepages"]
    return header, recorded


@pytest.mark.extended
def test_the_speedrun_program_restarts_with_huge_pages_where_that_helps(tmp_path):
    clean = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host.REEXEC_MARKER)}
    expected = host.reexec_reason(clean) is None or host.malloc_hugepages(clean)
    header, recorded = _speedrun(tmp_path, "default")
    # The re-executed process ran the same command line: same run directory, same verb.
    assert header.endswith(f"malloc huge pages {'on' if expected else 'off'}"), header
    assert recorded is expected
    header, recorded = _speedrun(tmp_path, "kept", **{host.ENV_SWITCH: "0"})
    assert recorded is host.malloc_hugepages(clean)
    assert header.endswith(f"malloc huge pages {'on' if recorded else 'off'}"), header
