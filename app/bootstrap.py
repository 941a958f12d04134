"""Start-up: import the business packages, which registers their declarations and handlers."""

from __future__ import annotations

import importlib
import pkgutil

__all__ = ["load_business_packages"]


def load_business_packages(package: str = "app.business") -> list[str]:
    """Import every package in ``package`` (``app.business``), in name order, and return their
    names.

    The order is fixed so that handlers register in the same order on every start (the order
    EVENTS.md lists them in). Call ``app.core.events.verify()`` once everything is imported.

    Raises:
        Exception: whatever importing a package raises (``InvalidHandlerError`` for a handler
            that cannot be registered, ``EventNameError`` for a malformed event name, ...).
    """
    parent = importlib.import_module(package)
    names = sorted(
        f"{package}.{info.name}" for info in pkgutil.iter_modules(parent.__path__) if info.ispkg
    )
    for name in names:
        importlib.import_module(name)
    return names
