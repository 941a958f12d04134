"""Start-up: import the business packages, which registers their declarations and handlers."""

from __future__ import annotations

import importlib
import pkgutil

import app.business

__all__ = ["load_business_packages"]


def load_business_packages() -> list[str]:
    """Import every package under ``app.business``, in name order, and return their names.

    The order is fixed so that handlers register in the same order on every start (the order
    EVENTS.md lists them in). Call ``app.core.events.verify()`` once everything is imported.
    """
    names = sorted(
        f"{app.business.__name__}.{info.name}"
        for info in pkgutil.iter_modules(app.business.__path__)
        if info.ispkg
    )
    for name in names:
        importlib.import_module(name)
    return names
