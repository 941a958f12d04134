"""How the registry names a handler, or anything else, in logs and messages."""

from __future__ import annotations

import functools

__all__ = ["describe", "plural", "value"]

_LONGEST_REPR = 80


def describe(handler: object) -> str:
    """Name a handler as ``module.qualname``, never raising, for logs and error messages.

    Something that is not callable, so cannot be a handler, is named by its value (its repr,
    shortened), not by its type's name.
    """
    try:
        if isinstance(handler, functools.partial):
            return f"functools.partial({describe(handler.func)})"
        if not callable(handler):
            return value(handler)
        qualname = getattr(handler, "__qualname__", None)
        module = getattr(handler, "__module__", None)
        if not isinstance(qualname, str):
            qualname = type(handler).__qualname__
            module = type(handler).__module__
        return f"{module}.{qualname}" if isinstance(module, str) else qualname
    except Exception:
        return f"<{type(handler).__qualname__} object>"


def value(thing: object) -> str:
    """``repr(thing)``, shortened to a readable length, never raising."""
    try:
        text = repr(thing)
    except Exception:
        return f"<{type(thing).__qualname__} object>"
    return text if len(text) <= _LONGEST_REPR else text[: _LONGEST_REPR - 3] + "..."


def plural(number: int, noun: str, nouns: str | None = None, *, count: bool = True) -> str:
    """``"1 problem"``, ``"2 problems"``: ``noun`` in the number ``number`` asks for,
    preceded by the number unless ``count`` is false."""
    word = noun if number == 1 else nouns or f"{noun}s"
    return f"{number} {word}" if count else word
