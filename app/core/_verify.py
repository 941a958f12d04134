"""Start-up check of what registered against the event catalogue and the source
(``events.verify``).

It takes the registrations as an argument, so it does not import the registry.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from app.core import catalogue
from app.core._describe import describe, plural
from app.core._durable import unfriendly_types
from app.core._errors import CatalogueError
from app.core._source import BUSINESS_FOLDER, scan

__all__ = ["verify_registrations"]


def verify_registrations(
    registered: Mapping[str, Sequence[Callable[..., Any]]],
    *,
    durable: Mapping[str, Sequence[Callable[..., Any]]] | None = None,
    roots: Iterable[Path] | None = None,
) -> None:
    """Check every registered handler (by event name, in registration order) against the
    catalogue, and the registrations against the source, reporting every problem at once.

    The source is read statically (see ``app.core._source``) under each of ``roots``: by
    default, the directory of each top-level package whose modules registered a handler. A
    handler found there that registers when its module is imported must have registered if
    its module, or its business package, has been imported; one that has not is reported
    with the reason (most often: nothing imports its module at start-up). The durable
    handlers (``durable``, by event name) of an event with a field type that is not JSON
    (``app.core._durable.JSON_FIELD_TYPES``) are reported too: their jobs carry the payload
    as JSON.

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
                    f"{where} handles {name!r}, which is not declared"
                    f"{f' ({hint})' if hint else ''}. Fix the name, or declare the event with "
                    "declare() in the events module of the package that emits it."
                )
            else:
                problems.extend(
                    f"{where} {problem}."
                    for problem in catalogue.parameter_problems(
                        name,
                        _keyword_parameters(handler),
                        declaration.payload,
                        declaration.optional,
                    )
                )
    for name, handlers in (durable or {}).items():
        declaration = catalogue.declared().get(name)
        if declaration is None or not handlers:
            continue
        fields = unfriendly_types({**declaration.payload, **declaration.optional})
        if fields:
            problems.extend(
                f"{describe(handler)}{_location(handler)} is a durable handler of {name!r}, "
                f"whose {plural(len(fields), 'field', count=False)} {', '.join(fields)} "
                f"{'is' if len(fields) == 1 else 'are'} not of a JSON type. Durable jobs carry "
                "the payload as JSON: declare int, float, str, bool, None, list, dict or Any "
                "(or unions of them), or make the handler in-process."
                for handler in handlers
            )
    for root in _package_roots(registered) if roots is None else roots:
        problems.extend(_never_registered(registered, root))
    if problems:
        listed = "\n".join(f"- {problem}" for problem in problems)
        raise CatalogueError(
            f"{plural(len(problems), 'problem')} between the handlers and the event catalogue:"
            f"\n{listed}",
            problems=problems,
        )


def _never_registered(
    registered: Mapping[str, Sequence[Callable[..., Any]]], root: Path
) -> Iterator[str]:
    """Each handler in the source under ``root`` that should have registered by now and has
    not: its module, or its business package, is imported."""
    labels = {
        (name, describe(handler)) for name, handlers in registered.items() for handler in handlers
    }
    found = scan(root)
    startup = set(found.startup)
    for handler in found.handlers:
        if handler.name is None or not handler.at_import or (handler.name, handler.label) in labels:
            continue
        package = found.business_package_of(handler.module)
        if handler.module not in sys.modules and package not in sys.modules:
            continue  # nothing of it was imported: not expected yet
        if handler.module in startup:
            reason = (
                "its module is imported at start-up, yet the registration did not run or was "
                "undone with off(). Register it unconditionally when its module is imported."
            )
        else:
            reason = found.never_imported(handler.module)
        yield (
            f"{handler.label} ({root.parent / handler.site.path}:{handler.site.line}) handles "
            f"{handler.name!r} but never registered: {reason}"
        )


def _package_roots(registered: Mapping[str, Sequence[Callable[..., Any]]]) -> list[Path]:
    """The directory of each application package (a top-level package with a business
    folder, as ``app``) whose modules registered a handler, in first-seen order."""
    roots: dict[Path, None] = {}
    for handlers in registered.values():
        for handler in handlers:
            module = getattr(_function(handler), "__module__", None)
            package = sys.modules.get(module.partition(".")[0]) if isinstance(module, str) else None
            path = getattr(package, "__file__", None)
            if isinstance(path, str) and Path(path).name == "__init__.py":
                root = Path(path).resolve().parent
                if (root / BUSINESS_FOLDER / "__init__.py").is_file():
                    roots[root] = None
    return list(roots)


def _function(handler: object) -> object:
    """The function behind a handler: taken out of partials and methods, and unwrapped."""
    while True:
        if isinstance(handler, functools.partial):
            handler = handler.func
        elif inspect.ismethod(handler):
            handler = handler.__func__
        else:
            return inspect.unwrap(handler) if callable(handler) else handler


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
