"""``python -m marin_optim.cli``: the ``marin-optim`` program."""

from marin_optim.cli import main

raise SystemExit(main())
