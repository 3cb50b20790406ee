"""``python -m benchmarks.opt_bench``: the benchmark's command line (see :mod:`.cli`)."""

from .cli import main

if __name__ == "__main__":
    main()
