"""Eager checks of ``on``'s arguments: whether a callable can be a handler, and its options."""

from __future__ import annotations

import functools
import inspect
import math

from app.core._describe import describe
from app.core._errors import InvalidHandlerError, InvalidOptionError

__all__ = ["check_handler", "check_options", "check_slow_after", "check_timeout"]


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
            f"timeout must be None or a positive, finite number of seconds, not {timeout!r}"
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
            "it is an awaitable (a coroutine object?), not a callable; "
            "register the function itself, without calling it"
        )
    if inspect.isclass(handler):
        return "it is a class; register a function or an instance with a __call__ method"
    if not callable(handler):
        return f"it is not callable (type {type(handler).__qualname__})"
    target = handler if _is_function_like(handler) else type(handler).__call__
    if inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target):
        return "it is a generator function; a handler returns None or an awaitable, not a generator"
    try:
        parameters = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return None  # No signature to read (some builtins): accept it, as Python would call it.
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return (
            "it does not take **kwargs; handlers must accept arbitrary keyword arguments so "
            "emitters can add payload fields without breaking anyone"
        )
    required_positional = [
        p.name
        for p in parameters
        if p.kind is inspect.Parameter.POSITIONAL_ONLY and p.default is inspect.Parameter.empty
    ]
    if required_positional:
        return (
            f"it has required positional-only parameter(s) {', '.join(required_positional)}; "
            "emit passes the payload as keyword arguments only"
        )
    return None


def _is_function_like(handler: object) -> bool:
    return inspect.isroutine(handler) or isinstance(handler, functools.partial)
