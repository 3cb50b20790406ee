"""Fixtures of the speedrun tests (helpers live in speedrun_helpers.py)."""

from __future__ import annotations

import pytest
from speedrun_helpers import tiny_config


@pytest.fixture
def tiny(tmp_path):
    """``tiny(*overrides, name="run")`` -> a tiny SpeedrunConfig writing under tmp_path/name."""

    def make(*extra: str, name: str = "run"):
        return tiny_config(tmp_path / name, *extra)

    return make
