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
* A **durable** handler (``@on(name, durable=True, id=...)``) is not run by that loop: ``emit``
  hands one job per durable handler to the installed transport, in the caller's transaction,
  and a worker runs it later (``app.core.durable``).

The whole registry is one module-level global, ``_handlers``, read by its name at call time, so
a test can swap it::

    monkeypatch.setattr(app.core.events, "_handlers", collections.defaultdict(list))

(``on`` stores each name's registrations as ``Entries``, whatever mapping holds them.)
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
from app.core._durable import (
    DEFAULT_DURABLE_TIMEOUT,
    DEFAULT_MAX_ATTEMPTS,
    DurableJob,
    check_durable_options,
    json_problem,
)
from app.core._errors import (
    CatalogueError,
    DurableDeliveryError,
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
    "DurableDeliveryError",
    "Entries",
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
    awaitable). A durable registration (``durable``) has a stable ``id`` and ``max_attempts``;
    workers run it, the delivery loop never does.
    """

    __slots__ = (
        "__weakref__",
        "awaits",
        "call",
        "durable",
        "handler",
        "id",
        "label",
        "max_attempts",
        "slow_after",
        "timeout",
    )

    def __init__(
        self,
        name: str,
        handler: Callable[..., Any],
        label: str,
        timeout: float | None,
        slow_after: float | None,
        *,
        durable_id: str | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        self.handler = handler
        self.label = label
        self.timeout = timeout
        self.slow_after = slow_after
        self.durable = durable_id is not None
        self.id = durable_id
        self.max_attempts = max_attempts
        self.awaits = _is_async(handler)
        call = handler if timeout is None else _time_limited(name, handler, label, timeout)
        if slow_after:
            call = (_timed_async if self.awaits else _timed_sync)(call, label, slow_after)
        self.call: Callable[..., Any] = call

    def options(self) -> dict[str, object]:
        """The options it was registered with, as ``on`` takes them."""
        options: dict[str, object] = {"timeout": self.timeout, "slow_after": self.slow_after}
        if self.durable:
            options.update(durable=True, id=self.id, max_attempts=self.max_attempts)
        return options


class Entries(_pipeline.Handlers[Registration]):
    """One event's registrations as ``emit`` reads them: the list itself holds the in-process
    ones, in order (what the delivery loop runs, with ``async_calls``); ``durable`` the
    durable ones, ``every`` all of them in registration order. Computed once per change, so
    an emit pays nothing for them."""

    __slots__ = ("durable", "every")

    def __init__(self, every: Sequence[Registration] = ()) -> None:
        super().__init__(r for r in every if not r.durable)
        self.every = tuple(every)
        self.durable = tuple(r for r in every if r.durable)


_handlers: collections.defaultdict[str, Entries] = collections.defaultdict(Entries)
"""Every registration, by event name, as ``Entries`` (in-process ones in order, durable ones
beside them).

The registry's one piece of state. ``emit`` reads it through this global name on every call,
so replacing it (``monkeypatch.setattr``) swaps the whole registry. Registration replaces a
name's list instead of mutating it, so the list ``emit`` holds is its snapshot.
"""

_NO_ENTRIES: Final = Entries()
_registry_lock = threading.Lock()
_current: Final = _context.current
_deferral: Final = _pipeline.deferral


def on(
    name: str,
    *,
    timeout: float | None = None,
    slow_after: float | None = None,
    durable: bool = False,
    id: str | None = None,
    max_attempts: int | None = None,
) -> Callable[[HandlerT], HandlerT]:
    """Register the decorated callable as a handler of the event ``name``.

    The decorator returns the callable unchanged. Registering the same callable again for the
    same name (with the same options) does nothing. Thread-safe.

    With ``durable=True`` the handler is not run by ``emit``: each emit enqueues a job for it
    through the installed durable transport, in the emitter's transaction, and a worker runs
    it (``app.core.durable.run_job``), retrying it up to ``max_attempts`` runs.

    Args:
        name: The event name, ``<aggregate>.<verb>``.
        timeout: Seconds an ``async`` handler may run before it is cancelled and logged as
            failed. Refused for a plain ``def``: it runs on the event loop's thread, where
            nothing can interrupt it.
        slow_after: Seconds after which a run of this handler is logged once as slow
            (``"event handler slow"``); overrides ``configure_tracing(slow_after=...)``, and
            ``0`` turns it off for this handler.
        durable: Run it in a worker, from a job enqueued in the emitter's transaction.
        id: A durable handler's stable identity, dotted lowercase (``"notify.welcome_mail"``),
            unique in the process: queued jobs name the handler by it, so renaming the
            function strands nothing. Required with ``durable=True``.
        max_attempts: Runs of a durable handler's job before it is a dead letter (default 5).

    Raises:
        EventNameTypeError: ``name`` is not a ``str``.
        EventNameError: ``name`` breaks the naming convention.
        InvalidOptionError: ``timeout`` is not a positive, finite number of seconds, or
            ``slow_after`` is not a number of seconds >= 0.
            A durable handler's ``id`` breaks the rule above, or ``max_attempts`` is not an
            int >= 1; ``id`` or ``max_attempts`` without ``durable=True``.
        InvalidHandlerError: (from the decorator) the callable cannot be a handler, has a
            ``timeout`` but is not ``async``, or is already registered for ``name`` with
            other options; a durable one is not ``async`` or has an ``id`` another durable
            handler has.
    """
    check_name(name)
    slow_after = _check_options(timeout, slow_after)
    if durable:
        timeout = DEFAULT_DURABLE_TIMEOUT if timeout is None else timeout
        max_attempts = DEFAULT_MAX_ATTEMPTS if max_attempts is None else max_attempts
        check_durable_options(id, max_attempts, timeout)
    elif id is not None or max_attempts is not None:
        raise InvalidOptionError(
            f"id= and max_attempts= are options of durable handlers; pass durable=True to "
            f"make the handler of {name!r} durable, or drop them."
        )

    def register(handler: HandlerT) -> HandlerT:
        label = _check_handler(name, handler)
        if durable and not _is_async(handler):
            raise InvalidHandlerError(
                f"cannot register {label} for {name!r} as durable: it is not async def. "
                "Durable handlers run in a worker's event loop, with a timeout; make it "
                "async def.",
                event_name=name,
                handler=handler,
            )
        if timeout is not None and not _is_async(handler):
            raise InvalidHandlerError(
                f"cannot register {label} for {name!r} with timeout={timeout!r}: it is a plain "
                "def, which runs on the event loop's thread where no timeout can interrupt it. "
                "Make it async def, or drop the timeout.",
                event_name=name,
                handler=handler,
            )
        registration = Registration(
            name,
            handler,
            label,
            timeout,
            slow_after,
            durable_id=id if durable else None,
            max_attempts=max_attempts or DEFAULT_MAX_ATTEMPTS,
        )
        with _registry_lock:
            current = _every(_handlers.get(name, ()))
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
            if registration.durable:
                _check_unique_id(name, registration)
            _handlers[name] = Entries([*current, registration])
        return handler

    return register


def _check_unique_id(name: str, registration: Registration) -> None:
    """Raise InvalidHandlerError if another durable handler has ``registration``'s id; the
    caller holds the registry lock."""
    for other_name, entries in _handlers.items():
        for other in _every(entries):
            if other.durable and other.id == registration.id:
                raise InvalidHandlerError(
                    f"cannot register {registration.label} for {name!r} as durable with "
                    f"id={registration.id!r}: {other.label} (for {other_name!r}) has it. A "
                    "durable handler's id names its queued jobs, so it must be unique.",
                    event_name=name,
                    handler=registration.handler,
                )


def _every(entries: Sequence[Registration]) -> tuple[Registration, ...]:
    """All registrations of a name's entries, durable ones included, in order."""
    every: tuple[Registration, ...] | None = getattr(entries, "every", None)
    return tuple(entries) if every is None else every


def off(name: str, handler: Callable[..., Any]) -> None:
    """Remove the registration of ``handler`` for ``name``; emits already running are unaffected.

    Raises:
        EventNameTypeError: ``name`` is not a ``str``.
        EventNameError: ``name`` breaks the naming convention.
        HandlerNotRegisteredError: ``handler`` is not registered for ``name``.
    """
    check_name(name)
    with _registry_lock:
        current = _every(_handlers.get(name, ()))
        remaining = [r for r in current if not _same_callable(r.handler, handler)]
        if len(remaining) == len(current):
            raise HandlerNotRegisteredError(
                f"handler {_describe(handler)} is not registered for {name!r}",
                event_name=name,
                handler=handler,
            )
        if remaining:
            _handlers[name] = Entries(remaining)
        else:
            del _handlers[name]


def handlers(name: str) -> tuple[Callable[..., Any], ...]:
    """Return the handlers registered for ``name``, in registration order, durable ones
    included.

    Raises:
        EventNameTypeError: ``name`` is not a ``str``.
        EventNameError: ``name`` breaks the naming convention.
    """
    check_name(name)
    return tuple(r.handler for r in _every(_handlers.get(name, ())))


def registrations(name: str) -> tuple[Registration, ...]:
    """The registrations of ``name``, durable ones included, in registration order."""
    return _every(_handlers.get(name, ()))


def durable_registration(handler_id: str) -> Registration | None:
    """The durable registration whose ``id`` is ``handler_id``, or None."""
    for entries in list(_handlers.values()):
        for registration in _every(entries):
            if registration.id == handler_id:
                return registration
    return None


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

    If the event has durable handlers, one job per durable handler is enqueued at once, in
    one round trip, through the installed transport (in the open unit of work, so a rollback
    drops them); the in-process handlers keep the semantics above.

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
        PayloadError: the event has durable handlers and a value is not JSON (the message
            names the field).
        DurableDeliveryError: the event has durable handlers and no transport is installed,
            or (from the transport) no unit of work is open.
    """
    event = admit(name, kwargs)
    if event is None:
        return
    entries = _handlers.get(name, _NO_ENTRIES)
    if entries.durable:
        await _enqueue(name, kwargs, event, entries.durable)
        if not entries and not _pipeline.every_emit:
            return
    deferral = _deferral.get()
    if deferral is None or not deferral.defer(name, kwargs, event):
        await _pipeline.deliver(name, kwargs, event, entries)


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


async def _enqueue(
    name: str, kwargs: dict[str, Any], event: Event, durable: Sequence[Registration]
) -> None:
    """Check that the payload is JSON and a transport is installed, then enqueue one job per
    durable registration, all in one call."""
    for field, value in kwargs.items():
        problem = json_problem(value, f"field {field!r}")
        if problem is not None:
            raise PayloadError(
                f"cannot emit {name!r}: {problem}. Its durable handlers "
                f"({', '.join(str(r.id) for r in durable)}) get the payload as JSON: pass "
                "str, int, float, bool, None, or lists and dicts of them.",
                event_name=name,
                missing=[],
                unexpected=[],
                wrong_types=[field],
            )
    transport = _pipeline.transport
    if transport is None:
        raise DurableDeliveryError(
            f"cannot emit {name!r}: it has durable handlers "
            f"({', '.join(str(r.id) for r in durable)}) and no durable transport is installed. "
            "Install one (app.core.durable.install_transport; the service and the worker "
            "install procrastinate's, app.durable), or make the handlers in-process.",
            event_name=name,
        )
    payload = dict(kwargs)
    ids = event.ids()
    occurred_at = event.occurred_at
    await transport.enqueue(
        [
            DurableJob(
                event_name=name,
                payload=payload,
                handler_id=str(registration.id),
                event_id=ids["event_id"],
                correlation_id=ids["correlation_id"],
                causation_id=ids.get("causation_id"),
                depth=event.depth,
                occurred_at=occurred_at,
                max_attempts=registration.max_attempts,
                timeout=registration.timeout or DEFAULT_DURABLE_TIMEOUT,
            )
            for registration in durable
        ]
    )


async def _deliver(
    name: str, kwargs: dict[str, Any], event: Event, entries: Sequence[_pipeline.Handler]
) -> None:
    """The delivery loop: run each handler in order as work done for ``event``, isolating
    each one's ``Exception`` (logged once); every other ``BaseException`` propagates.

    The loop tells ``event`` its iterator once (``Event.running``) and stores nothing per
    handler; when every handler is awaited (``Handlers.async_calls``) it decides nothing per
    handler either."""
    token = _current.set(event)
    try:
        try:
            calls = entries.async_calls  # type: ignore[attr-defined]
        except AttributeError:  # not _pipeline.Handlers: decide per handler, over a tuple
            calls, entries = None, tuple(entries)  # (whose iterator knows its position)
        if calls is not None:
            running = iter(calls)
            event.running = (entries, running)
            for call in running:
                try:
                    await call(**kwargs)
                except Exception as exc:
                    _log_failure(event, event.handler_label, exc)
            return
        handlers = iter(entries)
        event.running = (entries, handlers)
        for registration in handlers:
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
    await _pipeline.deliver(name, kwargs, event, _handlers.get(name, _NO_ENTRIES))


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
    names = list(_handlers)
    verify_registrations(
        {name: handlers(name) for name in names},
        durable={name: [r.handler for r in registrations(name) if r.durable] for name in names},
    )


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


def _format_options(options: dict[str, object]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in options.items())


def _same_callable(a: object, b: object) -> bool:
    """Identity, except that bound methods of one object and one function are the same."""
    if a is b:
        return True
    if inspect.ismethod(a) and inspect.ismethod(b):
        return a.__self__ is b.__self__ and a.__func__ is b.__func__
    return False
