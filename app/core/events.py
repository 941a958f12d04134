"""The in-process, string-named event registry: ``@on`` registers, ``await emit`` delivers.

Semantics in one place:

* ``emit`` awaits every handler of the name **sequentially, in registration order**, over the
  list as it stood when ``emit`` started.
* An ``Exception`` from a handler is logged once (``"event handler failed"``, with the event's
  keys, the handler and the exception) and the next handler runs; ``emit`` never re-raises it.
  Cancellation and every other ``BaseException`` propagate at once.
* Names, handlers and options are checked eagerly: at import time for ``@on``, before any
  handler runs for ``emit``, which also checks the name and payload against the catalogue.
* What is running is carried by a context variable (``app.core._context.current``) that the
  delivery loop sets: ``current_event()``, log keys and the recursion guard follow the work
  into tasks, threads and greenlets exactly as Python's context does.
* Optional behaviour (type checks, the test plugin, tracing, deferral) composes around the one
  delivery loop below (``app.core._pipeline``); nothing here knows which is installed.

The whole registry is one module-level global, ``_handlers``, read by its name at call time, so
a test can swap it::

    monkeypatch.setattr(app.core.events, "_handlers", collections.defaultdict(list))
"""

from __future__ import annotations

import collections
import inspect
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import anyio
import structlog

from app.core import _context, _pipeline, catalogue
from app.core._checks import check_handler as _check_handler
from app.core._checks import check_options as _check_options
from app.core._context import Event, EventContext
from app.core._describe import describe as _describe
from app.core._errors import (
    CatalogueError,
    EventNameError,
    EventNameTypeError,
    EventRecursionError,
    EventsError,
    HandlerNotRegisteredError,
    HandlerTimeoutError,
    InvalidHandlerError,
    InvalidOptionError,
    PayloadError,
    UnknownEventError,
)
from app.core._names import MAX_NAME_LENGTH, check_name
from app.core._verify import verify_registrations
from app.core.catalogue import EventSpec, declare

__all__ = [
    "MAX_DEPTH",
    "MAX_NAME_LENGTH",
    "CatalogueError",
    "EventContext",
    "EventNameError",
    "EventNameTypeError",
    "EventRecursionError",
    "EventSpec",
    "EventsError",
    "HandlerNotRegisteredError",
    "HandlerTimeoutError",
    "InvalidHandlerError",
    "InvalidOptionError",
    "PayloadError",
    "UnknownEventError",
    "current_event",
    "declare",
    "emit",
    "handlers",
    "off",
    "on",
    "verify",
]

log = structlog.get_logger(__name__)

HandlerT = TypeVar("HandlerT", bound=Callable[..., Any])

MAX_DEPTH: Final = 16
"""Deepest accepted causal chain: an emit made by work done for an event at this depth raises
EventRecursionError."""


class Registration:
    """One handler registered for one event, as the delivery loop calls it.

    ``call`` is the handler itself unless an option wraps it (a time limit, its own slow
    threshold); ``awaits`` says whether the loop awaits what ``call`` returns (an ``async``
    handler) or calls it directly (a plain ``def``, whose result is awaited only if it is
    awaitable).
    """

    __slots__ = ("__weakref__", "awaits", "call", "handler", "label", "slow_after", "timeout")

    def __init__(
        self,
        name: str,
        handler: Callable[..., Any],
        label: str,
        timeout: float | None,
        slow_after: float | None,
    ) -> None:
        self.handler = handler
        self.label = label
        self.timeout = timeout
        self.slow_after = slow_after
        self.awaits = _is_async(handler)
        call = handler if timeout is None else _time_limited(name, handler, label, timeout)
        if slow_after:
            call = (_timed_async if self.awaits else _timed_sync)(call, label, slow_after)
        self.call: Callable[..., Any] = call

    def options(self) -> dict[str, float | None]:
        """The options it was registered with, as ``on`` takes them."""
        return {"timeout": self.timeout, "slow_after": self.slow_after}


_handlers: collections.defaultdict[str, list[Registration]] = collections.defaultdict(list)
"""Every registration, by event name, in registration order.

The registry's one piece of state. ``emit`` reads it through this global name on every call,
so replacing it (``monkeypatch.setattr``) swaps the whole registry. Registration replaces a
name's list instead of mutating it, so the list ``emit`` holds is its snapshot.
"""

_registry_lock = threading.Lock()
_current: Final = _context.current
_deferral: Final = _pipeline.deferral


def on(
    name: str, *, timeout: float | None = None, slow_after: float | None = None
) -> Callable[[HandlerT], HandlerT]:
    """Register the decorated callable as a handler of the event ``name``.

    The decorator returns the callable unchanged. Registering the same callable again for the
    same name (with the same options) does nothing. Thread-safe.

    Args:
        name: The event name, ``<aggregate>.<verb>``.
        timeout: Seconds an ``async`` handler may run before it is cancelled and logged as
            failed. Refused for a plain ``def``: it runs on the event loop's thread, where
            nothing can interrupt it.
        slow_after: Seconds after which a run of this handler is logged once as slow
            (``"event handler slow"``); overrides ``configure_tracing(slow_after=...)``, and
            ``0`` turns it off for this handler.

    Raises:
        EventNameTypeError: ``name`` is not a ``str``.
        EventNameError: ``name`` breaks the naming convention.
        InvalidOptionError: ``timeout`` is not a positive, finite number of seconds, or
            ``slow_after`` is not a number of seconds >= 0.
        InvalidHandlerError: (from the decorator) the callable cannot be a handler, has a
            ``timeout`` but is not ``async``, or is already registered for ``name`` with
            other options.
    """
    check_name(name)
    slow_after = _check_options(timeout, slow_after)

    def register(handler: HandlerT) -> HandlerT:
        label = _check_handler(name, handler)
        if timeout is not None and not _is_async(handler):
            raise InvalidHandlerError(
                f"cannot register {label} for {name!r} with timeout={timeout!r}: it is a plain "
                "def, which runs on the event loop's thread where no timeout can interrupt it. "
                "Make it async def, or drop the timeout.",
                event_name=name,
                handler=handler,
            )
        registration = Registration(name, handler, label, timeout, slow_after)
        with _registry_lock:
            current = _handlers.get(name, [])
            for existing in current:
                if _same_callable(existing.handler, handler):
                    if existing.options() != registration.options():
                        raise InvalidHandlerError(
                            f"handler {label} is already registered for {name!r} with "
                            f"{_format_options(existing.options())}; off() it first to "
                            f"change it to {_format_options(registration.options())}",
                            event_name=name,
                            handler=handler,
                        )
                    return handler
            _handlers[name] = [*current, registration]
        return handler

    return register


def off(name: str, handler: Callable[..., Any]) -> None:
    """Remove the registration of ``handler`` for ``name``; emits already running are unaffected.

    Raises:
        EventNameTypeError: ``name`` is not a ``str``.
        EventNameError: ``name`` breaks the naming convention.
        HandlerNotRegisteredError: ``handler`` is not registered for ``name``.
    """
    check_name(name)
    with _registry_lock:
        current = _handlers.get(name, [])
        remaining = [r for r in current if not _same_callable(r.handler, handler)]
        if len(remaining) == len(current):
            raise HandlerNotRegisteredError(
                f"handler {_describe(handler)} is not registered for {name!r}",
                event_name=name,
                handler=handler,
            )
        if remaining:
            _handlers[name] = remaining
        else:
            del _handlers[name]


def handlers(name: str) -> tuple[Callable[..., Any], ...]:
    """Return the handlers registered for ``name``, in registration order.

    Raises:
        EventNameTypeError: ``name`` is not a ``str``.
        EventNameError: ``name`` breaks the naming convention.
    """
    check_name(name)
    return tuple(r.handler for r in _handlers.get(name, ()))


async def emit(name: str, /, **kwargs: Any) -> None:
    """Deliver an event to each of its handlers in turn, in registration order.

    Each handler is awaited before the next starts, over the registrations as they stood when
    ``emit`` started, and receives the payload as keyword arguments. A handler that raises an
    ``Exception`` (a timeout included) is logged once at error level as ``"event handler
    failed"`` with the event's keys, the handler and the exception; the payload is not logged
    and the next handler runs. Any other ``BaseException`` (cancellation, ``KeyboardInterrupt``)
    propagates at once and later handlers do not run. A name without handlers is a no-op.
    Inside a ``deferred_events()`` scope (``app.core.deferred``) the checks happen here and
    the delivery is queued until the scope ends cleanly.

    Every check happens before any handler runs.

    Raises:
        EventNameTypeError: ``name`` is not a ``str``.
        EventNameError: ``name`` breaks the naming convention.
        UnknownEventError: ``name`` is not in the catalogue (see ``declare``).
        PayloadError: the keyword arguments miss a required field, add an undeclared one, or
            (with type checks on) hold a value of the wrong type.
        EventRecursionError: this emit, made by work done for an event, would be more than
            ``MAX_DEPTH`` events deep in its causal chain.
        ScopeClosedError: the deferral scope in force was discarded (its work rolled back).
    """
    event = admit(name, kwargs)
    if event is None:
        return
    deferral = _deferral.get()
    if deferral is None or not deferral.defer(name, kwargs, event):
        await _pipeline.deliver(name, kwargs, event, _handlers.get(name, ()))


def admit(name: str, kwargs: dict[str, Any]) -> Event | None:
    """Check an emit and make its event, or return None when there is nothing to deliver
    (no handlers and no step before delivery, or a step muted it).

    Raises:
        As ``emit``: every check of the name, the payload and the chain's depth.
    """
    try:
        declaration = catalogue._declared[name]
    except (KeyError, TypeError):  # TypeError: unhashable, so not a str
        raise catalogue.unknown_event_error(name) from None
    if len(kwargs) != declaration.size or not declaration.required.issuperset(kwargs):
        catalogue.check_payload(declaration, kwargs)
    parent = _current.get()
    depth = 1 if parent is None else parent.depth + 1
    if depth > MAX_DEPTH:
        raise EventRecursionError(
            f"emit({name!r}) would be {depth} events deep in its causal chain, past the "
            f"limit of {MAX_DEPTH}; a handler is probably re-emitting, directly or through "
            "other events, the event that triggered it.",
            event_name=name,
            depth=depth,
        )
    before = _pipeline.before
    if before is None and name not in _handlers:
        return None
    event = Event(name, parent, depth)
    if before is not None and not before(name, kwargs, event):
        return None
    return event


async def _deliver(
    name: str, kwargs: dict[str, Any], event: Event, entries: Sequence[Registration]
) -> None:
    """The delivery loop: run each handler in order as work done for ``event``, isolating
    each one's ``Exception`` (logged once); every other ``BaseException`` propagates."""
    token = _current.set(event)
    try:
        for registration in entries:
            event.handler = registration
            try:  # run_handler's body, inlined: a coroutine per handler would double its cost
                if registration.awaits:
                    await registration.call(**kwargs)
                else:
                    result = registration.call(**kwargs)
                    if result is not None and inspect.isawaitable(result):
                        await result
            except Exception as exc:
                _log_failure(event, registration.label, exc)
    finally:
        _current.reset(token)


_pipeline.set_delivery(_deliver)


async def run_handler(registration: _pipeline.Handler, kwargs: dict[str, Any]) -> None:
    """Run one registration once, as the delivery loop does: await an ``async`` handler, call
    a plain one directly (awaiting its result only if that is awaitable). Raises what it
    raises."""
    if registration.awaits:
        await registration.call(**kwargs)
    else:
        result = registration.call(**kwargs)
        if result is not None and inspect.isawaitable(result):
            await result


async def deliver_later(name: str, kwargs: dict[str, Any], event: Event) -> None:
    """Deliver an event ``emit`` already checked and queued (a deferral scope, a background
    emitter) to the handlers registered now, through the same path as ``emit``."""
    await _pipeline.deliver(name, kwargs, event, _handlers.get(name, ()))


def current_event() -> EventContext | None:
    """The event whose work is running here: inside a handler, and in anything it calls or
    starts (tasks, threads, greenlets), an ``EventContext`` naming the event, its ids, its
    depth in the chain and the handler; outside, None. Never raises.

    A task that outlives the handler that started it sees the handler its emit is running now.
    """
    event = _context.current.get()
    return None if event is None else event.context()


def verify() -> None:
    """Check every registered handler against the catalogue; call it once all are imported.

    Reports every problem at once: handlers of undeclared events (with the closest declared
    names), handler parameters that are not fields of their event (the payload arrives as
    keyword arguments, so such a parameter would never be filled), and parameters without a
    default for fields that are only optional. It also reports handlers that are in the source
    (of each application package that registered handlers) but never registered, saying why
    (most often: nothing imports their module at start-up).

    Raises:
        CatalogueError: one or more problems; ``problems`` lists them, one line each.
    """
    verify_registrations({name: handlers(name) for name in list(_handlers)})


def _log_failure(event: Event, label: str, exc: Exception) -> None:
    """Log a handler's failure once, with the event's keys, and tell the failure listener;
    if logging itself fails, fall back to stderr."""
    listener = _pipeline.failure_listener
    if listener is not None:
        listener(event.name, label, exc)
    try:
        log.exception("event handler failed", **event.log_keys(label), exc_info=exc)
    except Exception as logging_exc:
        try:
            sys.stderr.write(
                f"app.core.events: event handler failed (event_name={event.name}, "
                f"handler={label}) and logging it failed too\n"
            )
            traceback.print_exception(exc, file=sys.stderr)
            traceback.print_exception(logging_exc, file=sys.stderr)
        except Exception:  # noqa: S110 - stderr itself is gone; nothing is left to report to.
            pass


def warn_if_slow(label: str, started: float, threshold: float) -> None:
    """Log one warning, with the running event's keys, if the run of ``label`` that began at
    ``started`` (``time.perf_counter()``) took longer than ``threshold`` seconds."""
    duration = time.perf_counter() - started
    if duration <= threshold:
        return
    event = _context.current.get()
    keys = {"handler": label} if event is None else event.log_keys(label)
    try:
        log.warning("event handler slow", **keys, duration=round(duration, 6), slow_after=threshold)
    except Exception:
        sys.stderr.write(f"app.core.events: event handler slow ({label}); logging failed\n")


def _time_limited(
    name: str, handler: Callable[..., Any], label: str, timeout: float
) -> Callable[..., Any]:
    async def call_with_timeout(**kwargs: Any) -> None:
        with anyio.move_on_after(timeout) as scope:
            await handler(**kwargs)
        if scope.cancelled_caught:
            raise HandlerTimeoutError(
                f"handler {label} timed out after {timeout} s",
                event_name=name,
                handler=handler,
                timeout=timeout,
            )

    return call_with_timeout


def _timed_async(call: Callable[..., Any], label: str, threshold: float) -> Callable[..., Any]:
    async def timed(**kwargs: Any) -> None:
        started = time.perf_counter()
        try:
            await call(**kwargs)
        except Exception:
            warn_if_slow(label, started, threshold)
            raise
        warn_if_slow(label, started, threshold)

    return timed


def _timed_sync(call: Callable[..., Any], label: str, threshold: float) -> Callable[..., Any]:
    def timed(**kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            result = call(**kwargs)
        except Exception:
            warn_if_slow(label, started, threshold)
            raise
        if result is not None and inspect.isawaitable(result):
            return _finish_timing(result, label, started, threshold)
        warn_if_slow(label, started, threshold)
        return result

    return timed


async def _finish_timing(result: Any, label: str, started: float, threshold: float) -> None:
    try:
        await result
    except Exception:
        warn_if_slow(label, started, threshold)
        raise
    warn_if_slow(label, started, threshold)


def _is_async(handler: object) -> bool:
    """Whether calling ``handler`` makes a coroutine: an ``async def`` (or a partial of one),
    or an object whose ``__call__`` is one."""
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(type(handler), "__call__", None)  # noqa: B004 - the method, not callable()
    return not inspect.isroutine(handler) and inspect.iscoroutinefunction(call)


def _format_options(options: dict[str, float | None]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in options.items())


def _same_callable(a: object, b: object) -> bool:
    """Identity, except that bound methods of one object and one function are the same."""
    if a is b:
        return True
    if inspect.ismethod(a) and inspect.ismethod(b):
        return a.__self__ is b.__self__ and a.__func__ is b.__func__
    return False
