"""Traceable events: each emit's identity, its causation chain, and its handler's context.

Every emit has an ``event_id`` (a UUIDv7 string: unique across processes, sortable by
time), the ``causation_id`` of the event whose handler emitted it (None at the root of a
chain) and a ``correlation_id`` shared by the whole chain. A chain takes the correlation id
its caller already has: one set with ``correlate()``, else the first of
``correlation_keys`` bound in structlog's context vars (the service binds ``request_id``),
else the root event's own id. Inside a handler, ``app.core.events.current_event()`` returns
an ``EventContext``.

Two configurations, set with ``configure_tracing``:

* **Lazy** (the default) costs emit nothing: an event's identity is made the first time
  anything asks for it (``current_event()``, a log line through ``add_event_context``, a
  handler's failure, a nested emit that needs its cause), so ``occurred_at`` is that moment.
  A task started by a handler begins a new chain unless a ``BackgroundEmitter`` started it.
* **Traced** (any of ``bind_context``, ``slow_after``, ``opentelemetry`` on) makes the
  identity as the emit starts, binds the handler's keys in structlog's context vars while it
  runs (restoring the caller's bindings exactly afterwards), warns about slow handlers,
  carries the chain into tasks that handlers start, and records OpenTelemetry spans.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import random
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import structlog

from app.core import _hooks, catalogue
from app.core._errors import InvalidOptionError

if TYPE_CHECKING:
    from app.core._otel import Spans

__all__ = [
    "EventContext",
    "TracingSettings",
    "configure_tracing",
    "correlate",
    "new_event_id",
    "restore_tracing",
    "tracing_settings",
]


@dataclass(frozen=True, slots=True)
class EventContext:
    """What ``current_event()`` returns inside a handler: the event it is handling.

    Attributes:
        name: The event name.
        event_id: This emit's id (a UUIDv7 string).
        causation_id: The id of the event whose handler emitted this one; None at the root.
        correlation_id: Shared by every event of the chain.
        depth: 1 for a root emit, one more for each emit in the chain above it.
        handler: The running handler, as ``module.qualname``.
        occurred_at: When the emit started (traced) or its identity was first asked for
            (lazy), an aware UTC datetime.
    """

    name: str
    event_id: str
    causation_id: str | None
    correlation_id: str
    depth: int
    handler: str
    occurred_at: datetime

    def log_keys(self) -> dict[str, Any]:
        """The keys a log line inside this handler carries (``causation_id`` only if set)."""
        return _log_keys(
            self.name, self.event_id, self.causation_id, self.correlation_id, self.handler
        )


def _log_keys(
    name: str, event_id: str, causation_id: str | None, correlation_id: str, handler: str
) -> dict[str, Any]:
    keys: dict[str, Any] = {"event_name": name, "event_id": event_id}
    if causation_id is not None:
        keys["causation_id"] = causation_id
    keys["correlation_id"] = correlation_id
    keys["handler"] = handler
    return keys


class Trace:
    """One emit's identity, shared by all its handlers (``app.core.events`` makes these).

    ``payload`` is the emit's own keyword dict, kept to tell this emit from a later one.
    """

    __slots__ = (
        "causation_id",
        "correlation_id",
        "depth",
        "event_id",
        "name",
        "occurred_at",
        "payload",
    )

    def __init__(self, name: str, payload: Mapping[str, Any], cause: Trace | None) -> None:
        self.name = name
        self.payload = payload
        self.event_id = new_event_id()
        self.occurred_at = datetime.now(UTC)
        if cause is None:
            self.causation_id: str | None = None
            self.correlation_id = _caller_correlation_id() or self.event_id
            self.depth = 1
        else:
            self.causation_id = cause.event_id
            self.correlation_id = cause.correlation_id
            self.depth = cause.depth + 1

    def log_keys(self, handler: str) -> dict[str, Any]:
        """The keys of a log line inside ``handler``'s run of this emit."""
        return _log_keys(self.name, self.event_id, self.causation_id, self.correlation_id, handler)

    def context(self, handler: str) -> EventContext:
        """This emit as seen from inside ``handler``."""
        return EventContext(
            name=self.name,
            event_id=self.event_id,
            causation_id=self.causation_id,
            correlation_id=self.correlation_id,
            depth=self.depth,
            handler=handler,
            occurred_at=self.occurred_at,
        )


cause: contextvars.ContextVar[Trace | None] = contextvars.ContextVar(
    "app.core.tracing.cause", default=None
)
"""The event a task works for when its own stack shows none: set by traced emits while their
handlers run (tasks those start inherit it) and by ``BackgroundEmitter`` in its tasks."""

_correlation: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "app.core.tracing.correlation", default=None
)


@contextlib.contextmanager
def correlate(correlation_id: str) -> Iterator[None]:
    """Make ``correlation_id`` the correlation id of every chain started in this block.

    Raises:
        InvalidOptionError: ``correlation_id`` is not a non-empty ``str``.
    """
    if not isinstance(correlation_id, str) or not correlation_id:
        raise InvalidOptionError(f"correlation_id must be a non-empty str, not {correlation_id!r}")
    token = _correlation.set(correlation_id)
    try:
        yield
    finally:
        _correlation.reset(token)


def _caller_correlation_id() -> str | None:
    explicit = _correlation.get()
    if explicit is not None:
        return explicit
    bound = structlog.contextvars.get_contextvars()
    for key in _settings.correlation_keys:
        value = bound.get(key)
        if value is not None:
            return str(value)
    return None


def new_event_id() -> str:
    """A new UUIDv7 (RFC 9562) string: 48 bits of Unix milliseconds, then 74 random bits.

    The random bits come from ``random`` (seeded from the OS, reseeded in forked children):
    ids must be unique, not unguessable, and ``os.urandom`` costs a system call per id.
    """
    milliseconds = time.time_ns() // 1_000_000
    value = (milliseconds & 0xFFFF_FFFF_FFFF) << 80 | _random_bits(80)
    text = f"{value & ~_VERSION_AND_VARIANT | _V7:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


_random_bits: Final = random.getrandbits
_VERSION_AND_VARIANT: Final = 0xF << 76 | 0b11 << 62
_V7: Final = 0x7 << 76 | 0b10 << 62


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
        """Whether emits are traced as they start (any feature beyond the lazy default)."""
        return self.bind_context or self.slow_after is not None or self.opentelemetry


_settings = TracingSettings()
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
            cancellation; keys the handler binds itself are undone too).
        slow_after: Seconds after which a handler is slow: it is logged once at warning level
            (``"event handler slow"``, with ``duration``). ``@on(slow_after=...)`` overrides
            it per handler. ``0`` turns it off.
        opentelemetry: Record a span per emit and a child span per handler (needs the
            ``otel`` extra).
        tracer_provider: The OpenTelemetry tracer provider to use (the global one if None).
        correlation_keys: The structlog context keys whose value becomes a new chain's
            correlation id, first bound wins.
        reset: Start from the defaults (lazy) instead of the settings in force.

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
    global _settings
    _settings = settings
    _hooks.set_traced(settings if settings.traced else None, catalogue.refresh_fast_paths)


def _spans(provider: Any) -> Spans:
    try:
        from app.core._otel import Spans  # only when asked: it is an extra
    except ImportError as error:
        raise InvalidOptionError(
            f"opentelemetry=True needs the OpenTelemetry API: pip install 'app[otel]' ({error})"
        ) from error
    return Spans(provider)


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


def bind_event_keys(trace: Trace, handler: str) -> contextvars.Context:
    """Bind the keys of ``handler``'s run of ``trace`` in structlog's context vars; return
    what ``restore_bindings`` needs to put the bindings back as they were."""
    before = contextvars.copy_context()
    structlog.contextvars.bind_contextvars(**trace.log_keys(handler))
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
