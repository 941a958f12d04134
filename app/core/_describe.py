"""How the registry names a handler in logs and messages."""

from __future__ import annotations

import functools

__all__ = ["describe"]


def describe(handler: object) -> str:
    """Name a handler as ``module.qualname``, never raising, for logs and error messages."""
    try:
        if isinstance(handler, functools.partial):
            return f"functools.partial({describe(handler.func)})"
        qualname = getattr(handler, "__qualname__", None)
        module = getattr(handler, "__module__", None)
        if not isinstance(qualname, str):
            qualname = type(handler).__qualname__
            module = type(handler).__module__
        return f"{module}.{qualname}" if isinstance(module, str) else qualname
    except Exception:
        return f"<{type(handler).__qualname__} object>"
