"""Eager checks of ``on``'s arguments: whether a callable can be a handler, and its options.

The reasons a handler is refused are written once, here, and the static scan gives the same.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Sequence
from typing import Final

from app.core._describe import describe, plural
from app.core._errors import InvalidHandlerError, InvalidOptionError

__all__ = [
    "GENERATOR_FUNCTION",
    "NO_VAR_KEYWORD",
    "check_handler",
    "check_options",
    "check_slow_after",
    "check_timeout",
    "positional_only_problem",
]

NO_VAR_KEYWORD: Final = (
    "it does not take **kwargs. Add **kwargs (or **_) to its parameters: handlers must accept "
    "arbitrary keyword arguments, so that emitters can add payload fields without breaking "
    "anyone."
)
GENERATOR_FUNCTION: Final = (
    "it is a generator function. Make it a plain or async function without yield: a handler "
    "returns None or an awaitable, not a generator."
)


def positional_only_problem(names: Sequence[str]) -> str:
    """Why a handler with the required positional-only parameters ``names`` is refused."""
    fix = (
        "Give it a default, or make it a keyword parameter"
        if len(names) == 1
        else "Give them defaults, or make them keyword parameters"
    )
    return (
        f"it has the required positional-only {plural(len(names), 'parameter', count=False)} "
        f"{', '.join(names)}. {fix}: emit passes the payload as keyword arguments only."
    )


def check_options(timeout: object, slow_after: object) -> float | None:
    """Check ``on``'s options; return ``slow_after`` normalised (see ``check_slow_after``).

    Raises:
        InvalidOptionError: an option is out of range.
    """
    check_timeout(timeout)
    return None if slow_after is None else check_slow_after(slow_after)


def check_slow_after(seconds: object) -> float:
    """Return ``seconds`` as a threshold, 0 meaning never (for 0 and inf), or raise
    InvalidOptionError."""
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or math.isnan(seconds)
        or seconds < 0
    ):
        raise InvalidOptionError(
            f"slow_after must be a number of seconds >= 0 (0 or inf: never), not {seconds!r}"
        )
    return 0.0 if math.isinf(seconds) else float(seconds)


def check_timeout(timeout: object) -> None:
    """Raise InvalidOptionError unless ``timeout`` is None or a positive, finite number."""
    if timeout is None:
        return
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise InvalidOptionError(
            f"timeout must be None or a positive, finite number of seconds, not {timeout!r}."
        )


def check_handler(name: str, handler: object) -> str:
    """Return the handler's label, or raise InvalidHandlerError saying why it cannot be one."""
    label = describe(handler)
    problem = _handler_problem(handler)
    if problem is not None:
        raise InvalidHandlerError(
            f"cannot register {label} for {name!r}: {problem}", event_name=name, handler=handler
        )
    return label


def _handler_problem(handler: object) -> str | None:
    if inspect.isawaitable(handler):
        return (
            "it is an awaitable (a coroutine object?), not a callable. Register the function "
            "itself, without calling it."
        )
    if inspect.isclass(handler):
        return (
            "it is a class. Register a function, or an instance of a class with a __call__ method."
        )
    if not callable(handler):
        return "it is not callable. Register a function, or an object with a __call__ method."
    target = handler if _is_function_like(handler) else type(handler).__call__
    if inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target):
        return GENERATOR_FUNCTION
    try:
        parameters = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return None  # No signature to read (some builtins): accept it, as Python would call it.
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return NO_VAR_KEYWORD
    required_positional = [
        p.name
        for p in parameters
        if p.kind is inspect.Parameter.POSITIONAL_ONLY and p.default is inspect.Parameter.empty
    ]
    if required_positional:
        return positional_only_problem(required_positional)
    return None


def _is_function_like(handler: object) -> bool:
    return inspect.isroutine(handler) or isinstance(handler, functools.partial)
