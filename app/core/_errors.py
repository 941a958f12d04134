"""The exceptions of the event registry: one root, each leaf also its matching builtin."""

from __future__ import annotations

from typing import Any

__all__ = [
    "CatalogueError",
    "DurableDeliveryError",
    "EventNameError",
    "EventNameTypeError",
    "EventRecursionError",
    "EventsError",
    "HandlerNotRegisteredError",
    "HandlerTimeoutError",
    "InvalidHandlerError",
    "InvalidOptionError",
    "PayloadError",
    "ScopeClosedError",
    "UnknownEventError",
]


class EventsError(Exception):
    """Root of every error the event registry raises.

    Attributes:
        event_name: The event name involved, as given (it may be malformed), or None.
        handler: The handler involved, or None.
    """

    def __init__(self, message: str, *, event_name: object = None, handler: Any = None) -> None:
        super().__init__(message)
        self.event_name = event_name
        self.handler = handler


class EventNameTypeError(EventsError, TypeError):
    """An event name that is not a ``str``."""


class EventNameError(EventsError, ValueError):
    """An event name that breaks the ``<aggregate>.<verb>`` convention."""


class InvalidHandlerError(EventsError, TypeError):
    """A callable that cannot be registered as a handler; the message says why."""


class InvalidOptionError(EventsError, ValueError):
    """An option of ``on`` (such as ``timeout``) with a value it cannot take."""


class HandlerNotRegisteredError(EventsError, LookupError):
    """``off`` of a handler that is not registered for that name."""


class EventRecursionError(EventsError, RecursionError):
    """An emit more than ``MAX_DEPTH`` events deep in its causal chain.

    Attributes:
        depth: The nesting depth the refused emit would have had.
    """

    def __init__(self, message: str, *, event_name: str, depth: int) -> None:
        super().__init__(message, event_name=event_name)
        self.depth = depth


class HandlerTimeoutError(EventsError, TimeoutError):
    """A handler ran past its ``timeout`` and was cancelled; logged by ``emit``, never raised.

    Attributes:
        timeout: The limit, in seconds.
    """

    def __init__(self, message: str, *, event_name: str, handler: Any, timeout: float) -> None:
        super().__init__(message, event_name=event_name, handler=handler)
        self.timeout = timeout


class UnknownEventError(EventsError, LookupError):
    """``emit`` of a well-formed name that no package declared.

    Attributes:
        suggestions: Declared names close to the one given, best first.
    """

    def __init__(self, message: str, *, event_name: str, suggestions: list[str]) -> None:
        super().__init__(message, event_name=event_name)
        self.suggestions = suggestions


class PayloadError(EventsError, TypeError):
    """``emit`` whose keyword arguments break the event's declared payload.

    Attributes:
        missing: Required fields not given.
        unexpected: Fields given that the declaration does not have.
        wrong_types: Fields whose value is not of the declared type (when type checks are on).
    """

    def __init__(
        self,
        message: str,
        *,
        event_name: str,
        missing: list[str],
        unexpected: list[str],
        wrong_types: list[str],
    ) -> None:
        super().__init__(message, event_name=event_name)
        self.missing = missing
        self.unexpected = unexpected
        self.wrong_types = wrong_types


class CatalogueError(EventsError, ValueError):
    """A declaration that cannot stand, or registrations that do not match the catalogue.

    Attributes:
        problems: One line per problem found.
    """

    def __init__(self, message: str, *, problems: list[str], event_name: object = None) -> None:
        super().__init__(message, event_name=event_name)
        self.problems = problems


class ScopeClosedError(EventsError, RuntimeError):
    """An emit into a deferral scope that was discarded (its work rolled back), from a task
    that outlived the scope: delivering it would announce work that did not happen."""


class DurableDeliveryError(EventsError, RuntimeError):
    """An emit whose durable handlers cannot get their jobs: no durable transport is
    installed, no unit of work is open to enqueue into, or it was emitted in a way that cannot
    enqueue (``emit_soon``). Raised before any handler runs."""
