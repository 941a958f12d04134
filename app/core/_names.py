"""The event naming convention, shared by the registry, the catalogue and the static scan."""

from __future__ import annotations

import re
from typing import Final

from app.core._describe import value
from app.core._errors import EventNameError, EventNameTypeError

__all__ = [
    "MAX_NAME_LENGTH",
    "NAME_CONVENTION",
    "check_name",
    "name_error",
    "name_problem",
    "rename_hint",
]

MAX_NAME_LENGTH: Final = 100
"""Longest accepted event name, in characters."""

_NAME_PATTERN: Final = re.compile(
    r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*\.[a-z][a-z0-9]*(?:_[a-z0-9]+)*", re.ASCII
)
NAME_CONVENTION: Final = (
    "an event name is '<aggregate>.<verb>': two lowercase ASCII snake_case words joined by "
    f"one dot, each starting with a letter, at most {MAX_NAME_LENGTH} characters "
    "(e.g. 'employee.created')"
)


_WORD_BREAKS: Final = re.compile(r"[^A-Za-z0-9.]+|(?<=[a-z0-9])(?=[A-Z])")
_UNDERSCORES: Final = re.compile(r"_+")
_STRAY_UNDERSCORES: Final = re.compile(r"_?\._?")


def name_problem(name: str) -> str | None:
    """Say what is wrong with the ``str`` ``name`` (``"invalid event name 'X'"``), or return
    None if it is well formed; ``rename_hint`` says how to fix it."""
    if len(name) > MAX_NAME_LENGTH:
        return f"invalid event name {_shorten(name)} (it is {len(name)} characters long)"
    if _NAME_PATTERN.fullmatch(name) is None:
        return f"invalid event name {_shorten(name)}"
    return None


def rename_hint(name: str) -> str:
    """How to fix a name that breaks the convention: the rule, and the name written by it
    when that is plain, in sentences."""
    hint = f"Rename it to follow the convention: {NAME_CONVENTION}."
    written = _WORD_BREAKS.sub("_", name).lower()
    written = _STRAY_UNDERSCORES.sub(".", _UNDERSCORES.sub("_", written)).strip("_")
    if (
        name.isascii()  # no guessing at look-alike letters
        and _NAME_PATTERN.fullmatch(written)
        and len(written) <= MAX_NAME_LENGTH
    ):
        hint += f" Did you mean {written!r}?"
    return hint


def check_name(name: object) -> None:
    """Raise unless ``name`` is a ``str`` following the naming convention.

    Raises:
        EventNameTypeError: ``name`` is not a ``str``.
        EventNameError: ``name`` breaks the convention; the message quotes it.
    """
    error = name_error(name)
    if error is not None:
        raise error


def name_error(name: object) -> EventNameTypeError | EventNameError | None:
    """Return the error ``check_name`` would raise for ``name``, or None."""
    if not isinstance(name, str):
        return EventNameTypeError(
            f"event name must be a str, not {type(name).__qualname__} ({value(name)}). Pass "
            f"the name as a str: {NAME_CONVENTION}.",
            event_name=name,
        )
    problem = name_problem(name)
    if problem is not None:
        return EventNameError(f"{problem}. {rename_hint(name)}", event_name=name)
    return None


def _shorten(name: str, limit: int = 60) -> str:
    return repr(name if len(name) <= limit else name[: limit - 3] + "...")
