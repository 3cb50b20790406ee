"""The Levanter plugin's tests run only where Levanter is installed (``pip install -e ".[levanter]"``)."""

from __future__ import annotations

import pytest

pytest.importorskip("levanter", reason="needs the levanter extra: pip install -e '.[levanter]'")
