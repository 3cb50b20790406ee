"""The registered optimizer configs, one family a module.

Every module in this package is imported here so that its ``register_subclass`` calls run:
adding a file is all it takes to add a family. Each module sets ``GROUP`` (the heading it is
listed under by ``marin-optim list``).
"""

from __future__ import annotations

import importlib
import pkgutil

_FAMILIES = [
    importlib.import_module(f"{__name__}.{info.name}")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name)
    if not info.name.startswith("_")
]


def group_of(cls: type) -> str:
    """The ``GROUP`` of the module that defines ``cls`` ("User-defined" outside this package)."""
    module = importlib.import_module(cls.__module__)
    if not cls.__module__.startswith(__name__ + "."):
        return "User-defined"
    return getattr(module, "GROUP", "Other")
