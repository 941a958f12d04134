"""The in-process, string-named event registry: ``@on`` registers, ``await emit`` delivers.

Semantics in one place:

* ``emit`` awaits every handler of the name **sequentially, in registration order**, over the
  list as it stood when ``emit`` started.
* An ``Exception`` from a handler is logged once (``"event handler failed"``, with
  ``event_name``, ``handler`` and the exception attached) and the next handler runs; ``emit``
  never re-raises it. Cancellation and every other ``BaseException`` propagate at once.
* Names, handlers and options are checked eagerly: at import time for ``@on``, before any
  handler runs for ``emit``, which also checks the name and payload against the catalogue.
* Deferral scopes, payload type checks, traced delivery and the test plugin's hook act only
  on emit's slow path, which is forced while any of them is on; otherwise emit pays nothing
  for them.
* Inside a handler, ``current_event()`` tells which event, chain and handler are running
  (see ``app.core.tracing``); by default that identity is made only when first asked for.

The whole registry is one module-level global, ``_handlers``, read by its name at call time, so
a test can swap it::

    monkeypatch.setattr(app.core.events, "_handlers", collections.defaultdict(list))
"""

from __future__ import annotations

import collections
import contextlib
import inspect
import sys
import threading
import time
import traceback
from collections.abc import Callable
from contextvars import ContextVar
from sys import _getframe
from types import FrameType
from typing import Any, Final, TypeVar

import anyio
import structlog

from app.core import _hooks, catalogue, tracing
from app.core._checks import check_handler as _check_handler
from app.core._checks import check_timeout as _check_timeout
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
from app.core.tracing import EventContext

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
"""Deepest accepted nesting of emits within one task; one more raises EventRecursionError."""


class _Adapter:
    """Makes a sync handler, or one with a time limit or its own slow threshold, awaitable
    like a plain ``async def``.

    ``_handlers`` holds ``async def`` handlers themselves, so dispatch awaits them with no
    indirection; every other handler is held inside one of these.
    """

    __slots__ = ("event_name", "handler", "label", "slow_after", "timeout")

    def __init__(
        self,
        event_name: str,
        handler: Callable[..., Any],
        label: str,
        timeout: float | None,
        slow_after: float | None,
    ) -> None:
        self.event_name = event_name
        self.handler = handler
        self.label = label
        self.timeout = timeout
        self.slow_after = slow_after

    async def __call__(self, **kwargs: Any) -> None:
        if not self.slow_after:
            await self._run(kwargs)
            return
        started = time.perf_counter()
        try:
            await self._run(kwargs)
        except Exception:
            _warn_if_slow(self.event_name, self.label, started, self.slow_after)
            raise
        _warn_if_slow(self.event_name, self.label, started, self.slow_after)

    async def _run(self, kwargs: dict[str, Any]) -> None:
        if self.timeout is None:
            await _call_and_await(self.handler, kwargs)
            return
        with anyio.move_on_after(self.timeout) as scope:
            await _call_and_await(self.handler, kwargs)
        if scope.cancelled_caught:
            raise HandlerTimeoutError(
                f"handler {self.label} timed out after {self.timeout} s",
                event_name=self.event_name,
                handler=self.handler,
                timeout=self.timeout,
            )


async def _call_and_await(handler: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """Call ``handler`` and, if it returned an awaitable, await that."""
    result = handler(**kwargs)
    if inspect.isawaitable(result):
        await result


_handlers: collections.defaultdict[str, list[Callable[..., Any]]] = collections.defaultdict(list)
"""Every registration, by event name, in registration order.

The registry's one piece of state. ``emit`` reads it through this global name on every call,
so replacing it (``monkeypatch.setattr``) swaps the whole registry. Registration replaces a
name's list instead of mutating it, so the list ``emit`` holds is its snapshot. An entry is the
handler itself when it is an ``async def`` without a timeout, else an ``_Adapter`` around it.
"""

_registry_lock = threading.Lock()


class _Nesting:
    """How deep emits are nested on one task's call stack.

    ``emit`` updates this record in place: setting a ContextVar on every emit instead would cost
    about half of a one-handler dispatch. Contexts are copied into child tasks, so a task may
    inherit a record that another task is using; an emit that finds its record in use while no
    emit is running on its own call stack knows this and takes a fresh record of its own.
    """

    __slots__ = ("depth", "traces")

    def __init__(self) -> None:
        self.depth = 0
        self.traces: list[tracing.Trace | None] = []
        """By depth, the identity of the emit running there, once something asked for it."""


# Sharing the default is safe: a task that finds it in use by another takes its own record.
_nesting: ContextVar[_Nesting] = ContextVar("app.core.events.nesting", default=_Nesting())  # noqa: B039
"""This task's nesting record; until a task needs a record of its own, tasks share the default."""


def on(
    name: str, *, timeout: float | None = None, slow_after: float | None = None
) -> Callable[[HandlerT], HandlerT]:
    """Register the decorated callable as a handler of the event ``name``.

    The decorator returns the callable unchanged. Registering the same callable again for the
    same name (with the same options) does nothing. Thread-safe.

    Args:
        name: The event name, ``<aggregate>.<verb>``.
        timeout: Seconds this handler may run before it is cancelled and logged as failed.
        slow_after: Seconds after which a run of this handler is logged once as slow
            (``"event handler slow"``); overrides ``configure_tracing(slow_after=...)``, and
            ``0`` turns it off for this handler.

    Raises:
        EventNameTypeError: ``name`` is not a ``str``.
        EventNameError: ``name`` breaks the naming convention.
        InvalidOptionError: ``timeout`` is not a positive, finite number of seconds, or
            ``slow_after`` is not a number of seconds >= 0.
        InvalidHandlerError: (from the decorator) the callable cannot be a handler, or is
            already registered for ``name`` with other options.
    """
    check_name(name)
    _check_timeout(timeout)
    if slow_after is not None:
        slow_after = tracing.check_slow_after(slow_after)
    options = {"timeout": timeout, "slow_after": slow_after}

    def register(handler: HandlerT) -> HandlerT:
        label = _check_handler(name, handler)
        entry: Callable[..., Any] = handler
        if (
            timeout is not None
            or slow_after is not None
            or not inspect.iscoroutinefunction(handler)
        ):
            entry = _Adapter(name, handler, label, timeout, slow_after)
        with _registry_lock:
            current = _handlers.get(name, [])
            for existing in current:
                if _same_callable(_unwrap(existing), handler):
                    if _options_of(existing) != options:
                        raise InvalidHandlerError(
                            f"handler {label} is already registered for {name!r} with "
                            f"{_format_options(_options_of(existing))}; off() it first to "
                            f"change it to {_format_options(options)}",
                            event_name=name,
                            handler=handler,
                        )
                    return handler
            _handlers[name] = [*current, entry]
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
        remaining = [e for e in current if not _same_callable(_unwrap(e), handler)]
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
    return tuple(_unwrap(e) for e in _handlers.get(name, ()))


async def emit(name: str, /, **kwargs: Any) -> None:
    """Deliver an event to each of its handlers in turn, in registration order.

    Each handler is awaited before the next starts, over the registrations as they stood when
    ``emit`` started, and receives the payload as keyword arguments. A handler that raises an
    ``Exception`` (a timeout included) is logged once at error level as ``"event handler
    failed"`` with ``event_name``, ``handler`` and the exception; the payload is not logged and
    the next handler runs. Any other ``BaseException`` (cancellation, ``KeyboardInterrupt``)
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
        EventRecursionError: this emit would nest deeper than ``MAX_DEPTH`` in this task.
    """
    try:
        declaration = catalogue._declared[name]
    except (KeyError, TypeError):  # TypeError: unhashable, so not a str
        raise catalogue.unknown_event_error(name) from None
    if len(kwargs) != declaration.fast_size or not declaration.required.issuperset(kwargs):
        catalogue.check_payload(declaration, kwargs)
        if not _deliver_now(name, kwargs, _getframe(0)):
            return  # queued by a deferral scope, or muted by the test plugin
        if _hooks.traced is not None:
            await _deliver_traced(name, kwargs, _hooks.traced, _getframe(1))
            return
    entries = _handlers.get(name)
    if not entries:
        if _nesting.get().depth:
            _check_depth(name, _nesting_of_this_task(_getframe(1)).depth)
        return
    nesting = _nesting.get()
    depth = nesting.depth
    if depth:
        nesting = _nesting_of_this_task(_getframe(1))
        depth = nesting.depth
        _check_depth(name, depth)
    nesting.depth = depth + 1
    try:
        for handler in entries:
            try:
                await handler(**kwargs)
            except Exception as exc:
                _log_failure(name, handler, exc)
    finally:
        nesting.depth = depth


def _deliver_now(name: str, kwargs: dict[str, Any], frame: FrameType) -> bool:
    """On emit's slow path, after the checks: tell the test hook, queue into an open deferral
    scope; return whether to deliver now."""
    deliver = True
    hook = _hooks.installed
    replayed = _hooks.replaying.get()
    if replayed is not None:
        _hooks.replaying.set(None)  # the replayer resets it; emits of our handlers are new
        if hook is not None:
            hook.replayed(replayed, frame)
    elif hook is not None:
        deliver = hook.emitted(name, kwargs, frame)
    queue = _hooks.deferral.get()
    if queue is None:
        return deliver
    if deliver:
        queue.append((name, kwargs))
    return False


async def _deliver_traced(
    name: str, kwargs: dict[str, Any], settings: tracing.TracingSettings, caller: FrameType | None
) -> None:
    """Emit's delivery while tracing is on (same order, isolation and nesting rules): the
    event's identity is made at once and is the ``cause`` of tasks its handlers start; each
    handler runs with its keys bound (``bind_context``), in its span (OpenTelemetry) and
    timed against its slow threshold."""
    entries = _handlers.get(name) or ()
    nesting = _nesting_of_this_task(caller)
    depth = nesting.depth
    _check_depth(name, depth)
    # Traced emits set ``cause`` while their handlers run, so it names this emit's cause
    # without a walk up the stack.
    trace = tracing.Trace(name, kwargs, tracing.cause.get())
    spans = settings.spans
    nesting.depth = depth + 1
    token = tracing.cause.set(trace)
    try:
        with contextlib.nullcontext() if spans is None else spans.emit(trace):
            for handler in entries:
                label = _label(handler)
                threshold = _slow_after(handler, settings)
                bindings = tracing.bind_event_keys(trace, label) if settings.bind_context else None
                handler_span = (
                    contextlib.nullcontext() if spans is None else spans.handler(trace, label)
                )
                try:
                    with handler_span as span:
                        started = time.perf_counter()
                        try:
                            await handler(**kwargs)
                        except Exception as exc:
                            _log_failure(name, handler, exc)
                            if spans is not None and span is not None:
                                spans.failed(span, exc)
                        if threshold:
                            _warn_if_slow(name, label, started, threshold)
                finally:
                    if bindings is not None:
                        tracing.restore_bindings(bindings)
    finally:
        tracing.cause.reset(token)
        nesting.depth = depth


def current_event() -> EventContext | None:
    """The event being handled: inside a handler (and anything it calls on the same task),
    an ``EventContext`` naming the event, its ids, its depth in the chain and the handler;
    outside any handler, None. Never raises.

    In the lazy default the event's identity is made by the first call for that emit, which
    is then its ``occurred_at``; with tracing on it was made as the emit started.
    """
    located = _locate(_getframe(1))
    return None if located is None else located[0].context(_label(located[1]))


def _locate(frame: FrameType | None) -> tuple[tracing.Trace, Callable[..., Any]] | None:
    """The innermost emit that is running a handler at ``frame`` or further down this call
    stack: its identity (made now if nobody asked yet) and the handler's registry entry."""
    while frame is not None:
        code = frame.f_code
        if code is _EMIT_CODE or code is _TRACED_CODE:
            local = frame.f_locals
            handler = local.get("handler")  # unbound until the emit runs its first handler
            if handler is not None:
                if code is _TRACED_CODE:
                    return local["trace"], handler
                return _lazy_trace(frame, local), handler
        frame = frame.f_back
    return None


def _lazy_trace(frame: FrameType, local: dict[str, Any]) -> tracing.Trace:
    """The identity of the fast-path emit running at ``frame``, made on first request.

    It is kept in the emit's nesting record at the emit's depth, with the emit's own payload
    dict, which tells it apart from a later emit at that depth.
    """
    nesting: _Nesting = local["nesting"]
    depth: int = local["depth"]
    kwargs: dict[str, Any] = local["kwargs"]
    traces = nesting.traces
    if depth < len(traces):
        trace = traces[depth]
        if trace is not None and trace.payload is kwargs:
            return trace
    else:
        traces.extend([None] * (depth + 1 - len(traces)))
    trace = tracing.Trace(local["name"], kwargs, _trace_here(frame.f_back))
    traces[depth] = trace
    return trace


def _trace_here(frame: FrameType | None) -> tracing.Trace | None:
    """The event that work at ``frame`` is done for: the handler's event on this stack, else
    the ``cause`` this task inherited, else None (a chain starts here)."""
    located = _locate(frame)
    return located[0] if located is not None else tracing.cause.get()


def _event_log_keys(frame: FrameType | None, name: str, label: str) -> dict[str, Any]:
    """The keys naming the event, chain and handler of a log line about ``label``'s run."""
    located = _locate(frame)
    if located is None:
        return {"event_name": name, "handler": label}
    return located[0].log_keys(label)


def _slow_after(entry: Callable[..., Any], settings: tracing.TracingSettings) -> float | None:
    """The threshold the delivery loop times ``entry`` against; None when the handler has
    its own (its adapter times it) or there is none."""
    if isinstance(entry, _Adapter) and entry.slow_after is not None:
        return None
    return settings.slow_after


def _warn_if_slow(name: str, label: str, started: float, threshold: float) -> None:
    """Log one warning if the run that began at ``started`` took longer than ``threshold``."""
    duration = time.perf_counter() - started
    if duration <= threshold:
        return
    try:
        keys = _event_log_keys(_getframe(1), name, label)
        log.warning("event handler slow", **keys, duration=round(duration, 6), slow_after=threshold)
    except Exception:
        sys.stderr.write(f"app.core.events: event handler slow ({name}, {label}); logging failed\n")


def verify() -> None:
    """Check every registered handler against the catalogue; call it once all are imported.

    Reports every problem at once: handlers of undeclared events (with the closest declared
    names), handler parameters that are not fields of their event (the payload arrives as
    keyword arguments, so such a parameter would never be filled), and parameters without a
    default for fields that are only optional.

    Raises:
        CatalogueError: one or more problems; ``problems`` lists them, one line each.
    """
    verify_registrations({name: handlers(name) for name in list(_handlers)})


def _nesting_of_this_task(caller: FrameType | None) -> _Nesting:
    """Return the nesting record of the task whose emit was called from ``caller``.

    The record in the context is this task's own if it is idle or if an emit is running below
    ``caller`` on this call stack (only this task's frames are on it); otherwise it is missing or
    was inherited from a task that is using it, and a fresh one replaces it in this context.
    """
    nesting = _nesting.get()
    if not nesting.depth or _emit_running_from(caller):
        return nesting
    nesting = _Nesting()
    _nesting.set(nesting)
    return nesting


def _emit_running_from(frame: FrameType | None) -> bool:
    """Whether an ``emit`` is running at ``frame`` or further down its call stack."""
    while frame is not None:
        if frame.f_code is _EMIT_CODE:
            return True
        frame = frame.f_back
    return False


_EMIT_CODE: Final = emit.__code__
_TRACED_CODE: Final = _deliver_traced.__code__


def _check_depth(name: str, depth: int) -> None:
    """Raise EventRecursionError if an emit at ``depth`` may not nest one more."""
    if depth >= MAX_DEPTH:
        raise EventRecursionError(
            f"emit({name!r}) would nest {depth + 1} emits deep in this task, past the limit "
            f"of {MAX_DEPTH}; a handler is probably re-emitting the event that triggered it",
            event_name=name,
            depth=depth + 1,
        )


def _unwrap(entry: Callable[..., Any]) -> Callable[..., Any]:
    return entry.handler if isinstance(entry, _Adapter) else entry


def _options_of(entry: Callable[..., Any]) -> dict[str, float | None]:
    if isinstance(entry, _Adapter):
        return {"timeout": entry.timeout, "slow_after": entry.slow_after}
    return {"timeout": None, "slow_after": None}


def _format_options(options: dict[str, float | None]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in options.items())


def _label(entry: Callable[..., Any]) -> str:
    return entry.label if isinstance(entry, _Adapter) else _describe(entry)


def _log_failure(name: str, entry: Callable[..., Any], exc: Exception) -> None:
    """Log a handler's failure once, with the event's keys; if logging itself fails, fall
    back to stderr."""
    label = _label(entry)
    hook = _hooks.installed
    if hook is not None:
        hook.handler_failed(name, label, exc)
    try:
        keys = _event_log_keys(_getframe(1), name, label)
        log.exception("event handler failed", **keys, exc_info=exc)
    except Exception as logging_exc:
        try:
            sys.stderr.write(
                f"app.core.events: event handler failed (event_name={name}, handler={label}) "
                "and logging it failed too\n"
            )
            traceback.print_exception(exc, file=sys.stderr)
            traceback.print_exception(logging_exc, file=sys.stderr)
        except Exception:  # noqa: S110 - stderr itself is gone; nothing is left to report to.
            pass


def _same_callable(a: object, b: object) -> bool:
    """Identity, except that bound methods of one object and one function are the same."""
    if a is b:
        return True
    if inspect.ismethod(a) and inspect.ismethod(b):
        return a.__self__ is b.__self__ and a.__func__ is b.__func__
    return False
