"""Runs a script on simulated CPU devices, in a subprocess (XLA's device count is fixed when jax
starts, so it cannot change inside the test process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


def run_on_devices(script: str, *args: str, devices: int = 8, timeout: int = 600) -> Any:
    """``python -c script args...`` with ``devices`` simulated CPU devices; returns the JSON the
    script prints after ``RESULT``. A failing script fails the test with its stderr's end."""
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "OPENBLAS_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.split("RESULT", 1)[1])
