"""The tests' own collection rules (the shared setup is in the repository's conftest.py)."""

from __future__ import annotations

import importlib.util


def _levanter_installed() -> bool:
    # `levanter.optim`, not `levanter`: without the extra, `import levanter` finds tests/levanter
    # itself (a namespace package on pytest's path).
    try:
        return importlib.util.find_spec("levanter.optim") is not None
    except ImportError:
        return False


# The Levanter plugin's tests need the `levanter` extra (pip install -e ".[levanter,test]").
collect_ignore = [] if _levanter_installed() else ["levanter"]
