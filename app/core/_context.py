"""What is running: the event whose handlers this context works for, and its identity.

``emit`` sets ``current`` while it runs handlers, so the event follows the work exactly where
context variables go: into tasks a handler starts, into worker threads (``to_thread``) and
back (``from_thread``), into SQLAlchemy's greenlet bridge. Nothing here reads the call stack.

An ``Event`` knows its name, its cause (``parent``) and its depth in the chain, and when it
started. Its ids are made from that when first asked for; it never holds the payload.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import operator
import os
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import structlog

from app.core._errors import InvalidOptionError

__all__ = [
    "Event",
    "EventContext",
    "correlate",
    "current",
    "new_event_id",
]


class Labelled(Protocol):
    """A running handler, as the event sees it."""

    label: str


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
        occurred_at: When the emit started, an aware UTC datetime.
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
        keys: dict[str, Any] = {"event_name": self.name, "event_id": self.event_id}
        if self.causation_id is not None:
            keys["causation_id"] = self.causation_id
        keys["correlation_id"] = self.correlation_id
        keys["handler"] = self.handler
        return keys


class Event:
    """One emit as the work done for it sees it: name, cause, depth, start, running handler.

    The delivery loop sets ``running`` once per delivery: the handlers it runs and the
    iterator it takes them from (over them, or over a sequence of the same length), so the
    running handler is the one that iterator gave last and the loop stores nothing per
    handler. The ids are made on first use from the start time, so an event nobody asks
    about costs no id.
    """

    __slots__ = (
        "_caller",
        "_correlation_id",
        "_id",
        "_line",
        "depth",
        "name",
        "ns",
        "parent",
        "running",
    )

    running: tuple[Sequence[Labelled], Iterator[object]]
    """The handlers the delivery loop runs, and the iterator it takes them from (a list's or
    a tuple's, which knows how many items it has left); unset until it starts."""

    def __init__(self, name: str, parent: Event | None, depth: int) -> None:
        self.name = name
        self.parent = parent
        self.depth = depth
        self.ns = time.time_ns()
        # A root event takes its correlation id from its caller's context, read when needed.
        self._caller = contextvars.copy_context() if parent is None else None
        # Made when first asked for (None, not unset: a missing slot raises, which is slow).
        self._id: str | None = None
        self._correlation_id: str | None = None
        self._line: tuple[Labelled | None, dict[str, Any]] | None = None

    @property
    def handler(self) -> Labelled | None:
        """The handler the emit is running now (the last one once it is done), or None
        before the first one starts."""
        try:
            handlers, iterator = self.running
        except AttributeError:
            return None
        index = len(handlers) - operator.length_hint(iterator) - 1
        return handlers[index] if index >= 0 else None

    @handler.setter
    def handler(self, handler: Labelled | None) -> None:
        self.running = ((), iter(())) if handler is None else ((handler,), iter(()))

    @property
    def event_id(self) -> str:
        """This emit's id, a UUIDv7 string made from its start time on first use."""
        event_id = self._id
        if event_id is None:
            event_id = self._id = new_event_id(self.ns)
        return event_id

    @property
    def causation_id(self) -> str | None:
        """The id of the event whose work emitted this one, or None at the root."""
        return None if self.parent is None else self.parent.event_id

    @property
    def correlation_id(self) -> str:
        """The chain's id: the root's caller's (``correlate``, or a bound structlog key), else
        the root event's own id."""
        correlation_id = self._correlation_id
        if correlation_id is None:
            if self.parent is not None:
                found: str | None = self.parent.correlation_id
            else:
                caller, self._caller = self._caller, None
                found = None if caller is None else _callers_correlation_id(caller)
            correlation_id = self._correlation_id = found or self.event_id
        return correlation_id

    @property
    def occurred_at(self) -> datetime:
        """When the emit started, an aware UTC datetime."""
        return datetime.fromtimestamp(self.ns / 1e9, UTC)

    @property
    def handler_label(self) -> str:
        """The running handler's ``module.qualname``; empty before the first one starts."""
        handler = self.handler
        return "" if handler is None else handler.label

    def context(self) -> EventContext:
        """This event as ``current_event()`` shows it."""
        return EventContext(
            name=self.name,
            event_id=self.event_id,
            causation_id=self.causation_id,
            correlation_id=self.correlation_id,
            depth=self.depth,
            handler=self.handler_label,
            occurred_at=self.occurred_at,
        )

    def ids(self) -> dict[str, Any]:
        """The keys naming this event in a log line: ``event_name``, ``event_id``,
        ``causation_id`` (only if set) and ``correlation_id``."""
        keys: dict[str, Any] = {"event_name": self.name, "event_id": self.event_id}
        causation_id = self.causation_id
        if causation_id is not None:
            keys["causation_id"] = causation_id
        keys["correlation_id"] = self.correlation_id
        return keys

    def log_keys(self, handler: str | None = None) -> dict[str, Any]:
        """The keys of a log line about ``handler``'s run (the running one by default)."""
        keys = self.ids()
        keys["handler"] = self.handler_label if handler is None else handler
        return keys

    def line_keys(self) -> Mapping[str, Any]:
        """The keys of a line logged now, as ``log_keys()``; made once per running handler
        and shared, so the caller must not change them."""
        handler = self.handler
        line = self._line
        if line is not None and line[0] is handler:
            return line[1]
        keys = self.log_keys("" if handler is None else handler.label)
        self._line = (handler, keys)
        return keys


current: contextvars.ContextVar[Event | None] = contextvars.ContextVar(
    "app.core.events.current", default=None
)
"""The event whose work this context is doing, or None."""

_correlation: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "app.core.events.correlation", default=None
)

correlation_keys: tuple[str, ...] = ("correlation_id", "request_id")
"""The structlog context keys whose value becomes a new chain's correlation id, first bound
wins; ``configure_tracing(correlation_keys=...)`` sets it."""


@contextlib.contextmanager
def correlate(correlation_id: str) -> Iterator[None]:
    """Make ``correlation_id`` the correlation id of every chain started in this block.

    Raises:
        InvalidOptionError: ``correlation_id`` is not a non-empty ``str``.
    """
    if not isinstance(correlation_id, str) or not correlation_id:
        raise InvalidOptionError(f"correlation_id must be a non-empty str, not {correlation_id!r}.")
    token = _correlation.set(correlation_id)
    try:
        yield
    finally:
        _correlation.reset(token)


def _callers_correlation_id(caller: contextvars.Context) -> str | None:
    """The correlation id the context ``caller`` carries: ``correlate()``'s, else the first
    of ``correlation_keys`` bound in structlog's context vars, else None."""
    explicit = caller.get(_correlation)
    if explicit is not None:
        return explicit
    wanted = _structlog_names
    best: tuple[int, str] | None = None
    for var, value in caller.items():
        rank = wanted.get(var.name)
        unbound = value is None or value is Ellipsis  # Ellipsis: structlog's "not bound"
        if rank is not None and not unbound and (best is None or rank < best[0]):
            best = (rank, str(value))
    return None if best is None else best[1]


def set_correlation_keys(keys: tuple[str, ...]) -> None:
    """Make ``keys`` the structlog context keys a new chain takes its correlation id from."""
    global correlation_keys, _structlog_names
    correlation_keys = keys
    _structlog_names = {_STRUCTLOG_PREFIX + key: rank for rank, key in enumerate(keys)}


_STRUCTLOG_PREFIX: Final = structlog.contextvars.STRUCTLOG_KEY_PREFIX
_structlog_names: dict[str, int] = {}
set_correlation_keys(correlation_keys)


_random: Final = random.Random()  # noqa: S311 - ids must be unique, not secret
"""The registry's own generator, seeded from the OS: ``random.seed()`` does not touch it."""

_COUNTER_MASK: Final = 0xFFFF_FFFF_FFFF
_node = ""
_counter: Iterator[int] = iter(())
_head: tuple[int, str] = (-1, "")


def _draw() -> None:
    """Draw this process's id bits and counter start; a forked child draws its own."""
    global _node, _counter, _head
    _random.seed()
    _node = f"{_random.getrandbits(12):03x}-{0x8000 | _random.getrandbits(14):04x}-"
    _counter = itertools.count(_random.getrandbits(48))
    _head = (-1, "")


_draw()
os.register_at_fork(after_in_child=_draw)  # a forked child must not repeat its parent


def new_event_id(ns: int | None = None) -> str:
    """A new UUIDv7 (RFC 9562) string: 48 bits of Unix milliseconds (``ns``, or now), then 26
    bits drawn once per process and a 48-bit counter started at a random value (the RFC's
    fixed-length counter method). Unique across processes (74 bits drawn per process, and
    the counter never repeats within one), sortable by time, and by order of making within a
    process and millisecond; the generator is the registry's own, redrawn in a forked child.

    They are not secrets: the bits are fast to draw, not cryptographic.
    """
    global _head
    milliseconds = (time.time_ns() if ns is None else ns) // 1_000_000
    head = _head
    if head[0] != milliseconds:  # "mmmmmmmm-mmmm-7nnn-8nnn-", made once per millisecond
        head = _head = (
            milliseconds,
            f"{milliseconds >> 16 & 0xFFFF_FFFF:08x}-{milliseconds & 0xFFFF:04x}-7{_node}",
        )
    return head[1] + (next(_counter) & _COUNTER_MASK).to_bytes(6).hex()
