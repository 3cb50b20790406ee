"""Times one optimizer step of every registered optimizer against the memory-bandwidth limit.

The command-line entry point of the ``opt_bench`` package next to this file: what is timed and
what the columns mean are in ``opt_bench/__init__.py``, the flags and usage in ``opt_bench/cli.py``.

Usage::

    python benchmarks/optimizer_step.py --quick              # a few-second smoke run
    python benchmarks/optimizer_step.py --help
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from opt_bench import main

if __name__ == "__main__":
    main()
