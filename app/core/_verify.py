"""Start-up check of what registered against the event catalogue (``events.verify``).

It takes the registrations as an argument, so it does not import the registry.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from app.core import catalogue
from app.core._describe import describe
from app.core._errors import CatalogueError

__all__ = ["verify_registrations"]


def verify_registrations(registered: Mapping[str, Sequence[Callable[..., Any]]]) -> None:
    """Check every registered handler (by event name, in registration order) against the
    catalogue, reporting every problem at once.

    Raises:
        CatalogueError: one or more problems; ``problems`` lists them, one line each.
    """
    problems: list[str] = []
    for name, handlers in registered.items():
        declaration = catalogue.declared().get(name)
        for handler in handlers:
            where = f"{describe(handler)}{_location(handler)}"
            if declaration is None:
                hint = catalogue.did_you_mean(name)
                problems.append(
                    f"{where} handles {name!r}, which is not declared{f' ({hint})' if hint else ''}"
                )
            else:
                problems.extend(
                    f"{where} {problem}"
                    for problem in catalogue.parameter_problems(
                        name,
                        _keyword_parameters(handler),
                        declaration.payload,
                        declaration.optional,
                    )
                )
    if problems:
        listed = "\n".join(f"- {problem}" for problem in problems)
        raise CatalogueError(
            f"{len(problems)} problem(s) between the handlers and the event catalogue:\n{listed}",
            problems=problems,
        )


def _keyword_parameters(handler: Callable[..., Any]) -> dict[str, bool]:
    """The parameters a keyword argument can fill, each with whether it has a default."""
    try:
        parameters = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {
        p.name: p.default is not p.empty
        for p in parameters
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _location(handler: Callable[..., Any]) -> str:
    """`` (path:line)`` of a function's definition, or nothing when it has no code."""
    code = getattr(inspect.unwrap(getattr(handler, "__func__", handler)), "__code__", None)
    return f" ({code.co_filename}:{code.co_firstlineno})" if code is not None else ""
