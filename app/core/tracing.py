"""Traceable events: each emit's identity, its causation chain, and its handler's context.

Every emit has an ``event_id`` (a UUIDv7 string: unique across processes, sortable by
time), the ``causation_id`` of the event whose work emitted it (None at the root of a chain)
and a ``correlation_id`` shared by the whole chain. A chain takes the correlation id its
caller already has: one set with ``correlate()``, else the first of ``correlation_keys``
bound in structlog's context vars (the service binds ``request_id``), else the root event's
own id. Inside a handler, and in the tasks and threads it starts,
``app.core.events.current_event()`` returns an ``EventContext``; the log processor
``app.core.logging.add_event_context`` adds its keys to every line. These mean the same
whatever is configured here: the ids are made when first asked for, ``occurred_at`` is when
the emit started.

``configure_tracing`` adds, around the one delivery loop (``app.core._pipeline``):

* ``slow_after``: a warning for each handler run slower than a threshold;
* ``bind_context``: the handler's keys bound in structlog's context vars while it runs
  (restoring the caller's bindings exactly afterwards), for chains that do not use the
  processor;
* ``opentelemetry``: a span per emit and a child span per handler.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import structlog

from app.core import _context, _pipeline
from app.core._checks import check_slow_after
from app.core._context import Event, EventContext, correlate, new_event_id
from app.core._errors import InvalidOptionError
from app.core.events import Registration, run_handler, warn_if_slow

if TYPE_CHECKING:
    from app.core._otel import Spans

__all__ = [
    "EventContext",
    "TracingSettings",
    "check_slow_after",
    "configure_tracing",
    "correlate",
    "new_event_id",
    "restore_tracing",
    "tracing_settings",
]


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """How emits are traced; see ``configure_tracing``."""

    bind_context: bool = False
    slow_after: float | None = None
    opentelemetry: bool = False
    tracer_provider: Any = None
    correlation_keys: tuple[str, ...] = ("correlation_id", "request_id")
    spans: Spans | None = field(default=None, repr=False, compare=False)

    @property
    def traced(self) -> bool:
        """Whether delivery is wrapped (any feature beyond the default)."""
        return self.bind_context or self.slow_after is not None or self.opentelemetry


_settings = TracingSettings()
_undo_wrapper: Callable[[], None] | None = None
_settings_lock = threading.Lock()


def tracing_settings() -> TracingSettings:
    """The settings in force."""
    return _settings


def configure_tracing(
    *,
    bind_context: bool | None = None,
    slow_after: float | None = None,
    opentelemetry: bool | None = None,
    tracer_provider: Any = None,
    correlation_keys: tuple[str, ...] | None = None,
    reset: bool = False,
) -> TracingSettings:
    """Change how emits are traced; options left out keep their current value.

    Args:
        bind_context: Bind ``event_name``, ``event_id``, ``causation_id`` (when set),
            ``correlation_id`` and ``handler`` in structlog's context vars while each handler
            runs, restoring the caller's bindings exactly afterwards (also on failure and
            cancellation; keys the handler binds itself are undone too). Not needed where
            ``add_event_context`` is in the processor chain, which adds the same keys.
        slow_after: Seconds after which a handler is slow: it is logged once at warning level
            (``"event handler slow"``, with ``duration``). ``@on(slow_after=...)`` overrides
            it per handler. ``0`` turns it off.
        opentelemetry: Record a span per emit and a child span per handler (needs the
            ``otel`` extra).
        tracer_provider: The OpenTelemetry tracer provider to use (the global one if None).
        correlation_keys: The structlog context keys whose value becomes a new chain's
            correlation id, first bound wins.
        reset: Start from the defaults instead of the settings in force.

    Returns:
        The settings in force before; ``restore_tracing`` puts them back.

    Raises:
        InvalidOptionError: an option is out of range, or OpenTelemetry is asked for and not
            installed.
    """
    with _settings_lock:
        before = _settings
        base = TracingSettings() if reset else before
        changes: dict[str, Any] = {}
        if bind_context is not None:
            changes["bind_context"] = bool(bind_context)
        if slow_after is not None:
            changes["slow_after"] = check_slow_after(slow_after) or None
        if opentelemetry is not None:
            changes["opentelemetry"] = bool(opentelemetry)
        if tracer_provider is not None:
            changes["tracer_provider"] = tracer_provider
        if correlation_keys is not None:
            if isinstance(correlation_keys, str) or not all(
                isinstance(key, str) and key for key in correlation_keys
            ):
                raise InvalidOptionError(
                    f"correlation_keys must be a tuple of non-empty str, not {correlation_keys!r}"
                )
            changes["correlation_keys"] = tuple(correlation_keys)
        settings = dataclasses.replace(base, **changes)
        spans = _spans(settings.tracer_provider) if settings.opentelemetry else None
        _apply(dataclasses.replace(settings, spans=spans))
    return before


def restore_tracing(settings: TracingSettings) -> None:
    """Put back settings that ``configure_tracing`` returned."""
    with _settings_lock:
        _apply(settings)


def _apply(settings: TracingSettings) -> None:
    """Make ``settings`` the ones in force; the caller holds ``_settings_lock``."""
    global _settings, _undo_wrapper
    _settings = settings
    _context.set_correlation_keys(settings.correlation_keys)
    if _undo_wrapper is not None:
        _undo_wrapper()
        _undo_wrapper = None
    if settings.traced:
        _undo_wrapper = _pipeline.wrap_delivery("trace", _traced_delivery(settings))


def _spans(provider: Any) -> Spans:
    try:
        from app.core._otel import Spans  # only when asked: it is an extra
    except ImportError as error:
        raise InvalidOptionError(
            f"opentelemetry=True needs the OpenTelemetry API: pip install 'app[otel]' ({error})"
        ) from error
    return Spans(provider)


def _traced_delivery(settings: TracingSettings) -> Callable[[_pipeline.Deliver], _pipeline.Deliver]:
    """The wrapper of the delivery loop for ``settings``: each handler runs as a traced
    handler, and the emit in its span. The traced handlers of a registration list are made
    once per list (the registry replaces a name's list when it changes)."""
    spans = settings.spans
    traced = _pipeline.wrap_each(lambda registration: _TracedHandler(registration, settings))

    def wrap(inner: _pipeline.Deliver) -> _pipeline.Deliver:
        async def deliver_traced(
            name: str, kwargs: dict[str, Any], event: Event, entries: Sequence[Any]
        ) -> None:
            if spans is None:
                await inner(name, kwargs, event, traced(entries))
                return
            with spans.emit(event):
                await inner(name, kwargs, event, traced(entries))

        return deliver_traced

    return wrap


class _TracedHandler:
    """A registration as traced delivery runs it: in its span, with its keys bound, timed.

    Its failures propagate to the delivery loop, which logs them as for any handler.
    """

    __slots__ = ("awaits", "bind", "call", "inner", "label", "spans", "threshold")

    def __init__(self, registration: Registration, settings: TracingSettings) -> None:
        self.label = registration.label
        self.awaits = True
        self.bind = settings.bind_context
        self.spans = settings.spans
        # A handler's own threshold is timed by its registration.
        self.threshold = settings.slow_after if registration.slow_after is None else None
        self.inner: Callable[..., Any] = (
            registration.call
            if registration.awaits
            else functools.partial(_run_plain, registration)
        )
        self.call = self.run

    async def run(self, **kwargs: Any) -> None:
        bindings = None
        if self.bind:
            bindings = bind_event_keys(_current_event(), self.label)
        try:
            started = time.perf_counter()
            try:
                if self.spans is None:
                    await self.inner(**kwargs)
                else:
                    with self.spans.handler(_current_event(), self.label) as span:
                        try:
                            await self.inner(**kwargs)
                        except Exception as error:
                            self.spans.failed(span, error)
                            raise
            except Exception:
                if self.threshold:
                    warn_if_slow(self.label, started, self.threshold)
                raise
            if self.threshold:
                warn_if_slow(self.label, started, self.threshold)
        finally:
            if bindings is not None:
                restore_bindings(bindings)


async def _run_plain(registration: Registration, /, **kwargs: Any) -> None:
    await run_handler(registration, kwargs)


def _current_event() -> Event:
    """The event the delivery loop is running (traced handlers run only inside it)."""
    event = _context.current.get()
    assert event is not None  # noqa: S101 - the loop sets it before calling any handler
    return event


def bind_event_keys(event: Event, handler: str) -> contextvars.Context:
    """Bind the keys of ``handler``'s run of ``event`` in structlog's context vars; return
    what ``restore_bindings`` needs to put the bindings back as they were."""
    before = contextvars.copy_context()
    structlog.contextvars.bind_contextvars(**event.log_keys(handler))
    return before


def restore_bindings(before: contextvars.Context) -> None:
    """Put every structlog binding of this context back exactly as it was in ``before``,
    whatever was bound, rebound or unbound since."""
    now = contextvars.copy_context()
    for var, value in now.items():
        if var.name.startswith(_PREFIX):
            old = before.get(var, Ellipsis)  # Ellipsis is structlog's "not bound"
            if old is not value:
                var.set(old)
    for var, value in before.items():
        if var.name.startswith(_PREFIX) and var not in now:
            var.set(value)


_PREFIX: Final = structlog.contextvars.STRUCTLOG_KEY_PREFIX
