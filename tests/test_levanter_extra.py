"""Without the ``levanter`` extra: one line saying which extra to install (any environment)."""

from __future__ import annotations

import os
import subprocess
import sys


def _without_levanter(tmp_path) -> dict[str, str]:
    """An environment where ``import levanter`` fails as it does when the package is missing."""
    (tmp_path / "levanter").mkdir()
    (tmp_path / "levanter" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'levanter'\", name='levanter')\n"
    )
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


MESSAGE = (
    "marin_optim.levanter needs Levanter: pip install 'marin-optim[levanter]' (missing module 'levanter')"
)


def test_importing_the_plugin_says_which_extra_in_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", "import marin_optim.levanter"],
        env=_without_levanter(tmp_path),
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1] == f"ImportError: {MESSAGE}"


def test_the_cli_verbs_print_one_line_and_exit_2(tmp_path):
    env = _without_levanter(tmp_path)
    for args in (["levanter", "train_lm"], ["list", "--levanter"]):
        out = subprocess.run(
            [sys.executable, "-m", "marin_optim.cli", *args], env=env, capture_output=True, text=True
        )
        assert out.returncode == 2
        assert out.stderr.strip() == f"marin-optim: error: {MESSAGE}"


def test_the_core_package_never_imports_levanter():
    code = "import sys, marin_optim.cli, marin_optim.speedrun.trainer; print('levanter' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
