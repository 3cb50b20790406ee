"""The Levanter plugin's tests: they need the ``levanter`` extra (tests/conftest.py skips this folder
without it; asked for by name, they say what to install)."""

from __future__ import annotations

import importlib.util

import pytest

try:
    _installed = importlib.util.find_spec("levanter.optim") is not None
except ImportError:
    _installed = False
if not _installed:
    pytest.exit("tests/levanter needs the levanter extra: pip install -e '.[levanter,test]'", returncode=5)
