"""Speedrun test helpers: a tiny config, and running Python in a subprocess with N CPU devices.

Imported by the tests as ``speedrun_helpers`` (pytest puts this directory on sys.path).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# A model and run small enough that compiling dominates (a few seconds on 2 cores).
TINY_ARGS = [
    "--model.preset", "nano",
    "--model.hidden_dim", "32",
    "--model.intermediate_dim", "64",
    "--model.num_layers", "2",
    "--model.max_seq_len", "64",
    "--train.seq_len", "32",
    "--train.batch_size", "8",
    "--train.num_train_steps", "12",
    "--train.eval_interval", "6",
    "--train.eval_sequences", "16",
    "--train.checkpoint_interval", "4",
    "--data.max_bytes", "400000",
    "--optimizer.learning_rate", "0.003",
]  # fmt: skip


def config_from_args(args: list[str]):
    """A SpeedrunConfig from ``--a.b value`` pairs, via ``draccus.decode`` (milliseconds; building
    draccus's full argparse tree for every registered optimizer takes seconds). The CLI path itself
    is tested in test_speedrun_config.py and test_speedrun_cli.py."""
    import yaml

    from marin_optim.speedrun import SpeedrunConfig

    tree: dict = {}
    for key, value in zip(args[::2], args[1::2], strict=True):
        *parents, leaf = key.removeprefix("--").split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return SpeedrunConfig.from_dict(tree)


def tiny_config(output_dir: Path, *extra: str):
    return config_from_args([*TINY_ARGS, "--output_dir", str(output_dir), *extra])


def run_python(
    code: str, devices: int = 1, timeout: float = 240, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter with ``devices`` simulated CPU devices."""
    full_env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=REPO,
    )


def last_json_line(stdout: str):
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{") or line.startswith("["):
            return json.loads(line)
    raise AssertionError(f"no JSON line in output:\n{stdout[-2000:]}")
