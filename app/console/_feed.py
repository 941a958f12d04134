"""The console's recorder: what each emit ran, kept in a bounded history and pushed to pages.

Framework-free (anyio only). ``Feed.watch()`` wraps the delivery loop
(``app.core._pipeline.wrap_delivery``, in a slot of its own) while at least one page watches
and undoes it when the last one leaves, so with no page open emits pay nothing for the
console. It asks to see every emit, so while a page watches an emit whose handlers are all
durable is delivered too (to no handler, after its transaction commits). Each delivered emit
becomes an ``EmitRecord`` (name, ids, time, the payload's field names, or its values' reprs if
the deployment opted in, each in-process handler's duration and outcome, and its durable
handlers); it goes into the history ring buffer and into every watcher's queue. A watcher's
queue is bounded too: a page that reads slowly loses its oldest items, an emit never waits.

Handlers run through ``_ObservedHandler``, which times them and re-raises whatever they
raise, so the delivery loop still isolates and logs each failure once.
"""

from __future__ import annotations

import collections
import contextvars
import reprlib
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import anyio

from app.core import _pipeline
from app.core._context import Event
from app.core.events import registrations, run_handler

__all__ = ["EmitRecord", "Failure", "Feed", "HandlerRun", "Watcher"]

TRACEBACK_LINES: Final = 8
"""How many lines of a failure's traceback the console keeps (its last ones)."""

_repr = reprlib.Repr()  # keyword arguments only from Python 3.12
_repr.maxstring = _repr.maxother = 80
_repr.maxlevel = 2


@dataclass(frozen=True, slots=True)
class HandlerRun:
    """One in-process handler's run: its label, how long it took and how it ended."""

    handler: str
    duration: float
    outcome: str  # "ok", "failed" or "cancelled"
    error: str | None = None


@dataclass(slots=True)
class EmitRecord:
    """One delivered emit, as the console shows it; never holds the payload's objects.

    ``fields`` maps each field name to its value's repr when payloads are shown, else to None.
    ``durable`` names the durable handlers the emit enqueued jobs for (workers run them).
    """

    name: str
    event_id: str
    correlation_id: str
    causation_id: str | None
    depth: int
    occurred_at: datetime
    fields: dict[str, str | None]
    durable: tuple[str, ...]
    runs: list[HandlerRun] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Whether a handler of it failed."""
        return any(run.outcome != "ok" for run in self.runs)


@dataclass(frozen=True, slots=True)
class Failure:
    """A handler failure the console saw: the emit, the handler, the error and a short
    traceback (its last ``TRACEBACK_LINES`` lines)."""

    event_name: str
    event_id: str
    correlation_id: str
    handler: str
    error: str
    traceback: str
    at: datetime


class Watcher:
    """One page's queue of records: bounded, dropping its oldest item when full."""

    def __init__(self, size: int) -> None:
        self._items: collections.deque[EmitRecord] = collections.deque(maxlen=size)
        self._ready = anyio.Event()
        self._thread = threading.get_ident()
        self.dropped = 0
        """How many records were dropped because the page read too slowly."""
        self.closed = False
        """Whether the feed was closed: the page's stream is to end."""

    def close(self) -> None:
        """Mark it closed and wake the page (from the page's thread)."""
        self.closed = True
        self._ready.set()

    def put(self, record: EmitRecord) -> None:
        """Queue ``record`` without waiting (dropping the oldest if full) and wake the page.

        From another thread than the page's the page is not woken: it finds the record when
        it next wakes (its keep-alive)."""
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append(record)
        if threading.get_ident() == self._thread:
            self._ready.set()

    async def get(self, wait: float) -> list[EmitRecord]:
        """Wait up to ``wait`` seconds for records; return those queued (maybe none)."""
        if not self._items:
            with anyio.move_on_after(wait):
                await self._ready.wait()
        self._ready = anyio.Event()
        items = list(self._items)
        self._items.clear()
        return items


_recording: contextvars.ContextVar[EmitRecord | None] = contextvars.ContextVar(
    "app.console.recording", default=None
)
"""The record of the emit whose handlers run in this context (set by the console's wrapper)."""


class Feed:
    """The console's recorder of one process: history, failures and the watching pages.

    Args:
        history: How many emits (and failures) to keep, newest last.
        queue_size: How many records a watching page may have unread before the oldest go.
        show_payloads: Keep each field's value (its short repr), not only its name.
    """

    def __init__(
        self, history: int = 200, *, queue_size: int = 100, show_payloads: bool = False
    ) -> None:
        self.history: collections.deque[EmitRecord] = collections.deque(maxlen=history)
        self.failures: collections.deque[Failure] = collections.deque(maxlen=history)
        self.queue_size = queue_size
        self.show_payloads = show_payloads
        self._watchers: set[Watcher] = set()
        self._undo: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self.closed = False
        """Whether ``close()`` was called: every watcher, present or future, is closed."""
        self.slot = f"console-{id(self):x}"
        """Its delivery wrapper's slot in ``app.core._pipeline``: one per feed, so two consoles
        in one process never undo each other's."""

    @property
    def recording(self) -> bool:
        """Whether the delivery loop is wrapped (a page watches)."""
        return self._undo is not None

    @contextmanager
    def watch(self) -> Iterator[Watcher]:
        """A queue of the emits delivered while the block runs; the first watcher wraps the
        delivery loop, the last one to leave unwraps it."""
        watcher = Watcher(self.queue_size)
        watcher.closed = self.closed
        with self._lock:
            self._watchers.add(watcher)
            if self._undo is None:
                self._undo = _pipeline.wrap_delivery(self.slot, self._wrap, every_emit=True)
        try:
            yield watcher
        finally:
            with self._lock:
                self._watchers.discard(watcher)
                if not self._watchers and self._undo is not None:
                    self._undo()
                    self._undo = None

    def close(self) -> None:
        """Close every watcher, and those to come, so their pages' streams end (the server is
        stopping: an open stream would hold its shutdown). Call it on the pages' thread."""
        self.closed = True
        for watcher in list(self._watchers):
            watcher.close()

    def chain(self, correlation_id: str) -> list[tuple[int, EmitRecord]]:
        """The recorded emits of one chain as a tree in depth-first order: (indent, record)
        pairs, causes before their effects; an emit whose cause was not recorded is a root."""
        members = [r for r in self.history if r.correlation_id == correlation_id]
        known = {r.event_id for r in members}
        children: dict[str | None, list[EmitRecord]] = collections.defaultdict(list)
        for record in sorted(members, key=lambda r: r.occurred_at):
            parent = record.causation_id if record.causation_id in known else None
            children[parent].append(record)
        tree: list[tuple[int, EmitRecord]] = []

        def walk(parent: str | None, indent: int) -> None:
            for child in children.get(parent, ()):
                tree.append((indent, child))
                walk(child.event_id, indent + 1)

        walk(None, 0)
        return tree

    def publish(self, record: EmitRecord) -> None:
        """Keep ``record`` in the history and queue it for every watching page; never waits."""
        self.history.append(record)
        for watcher in list(self._watchers):
            watcher.put(record)

    def _wrap(self, inner: _pipeline.Deliver) -> _pipeline.Deliver:
        observed = _pipeline.wrap_each(lambda entry: _ObservedHandler(entry, self))

        async def deliver_observed(
            name: str, kwargs: dict[str, Any], event: Event, entries: Sequence[Any]
        ) -> None:
            record = self._record(name, kwargs, event)
            token = _recording.set(record)
            try:
                await inner(name, kwargs, event, observed(entries))
            finally:
                _recording.reset(token)
                self.publish(record)

        return deliver_observed

    def _record(self, name: str, kwargs: dict[str, Any], event: Event) -> EmitRecord:
        fields = {
            key: (_repr.repr(value) if self.show_payloads else None)
            for key, value in kwargs.items()
        }
        return EmitRecord(
            name=name,
            event_id=event.event_id,
            correlation_id=event.correlation_id,
            causation_id=event.causation_id,
            depth=event.depth,
            occurred_at=event.occurred_at,
            fields=fields,
            durable=tuple(str(r.id) for r in registrations(name) if r.durable),
        )

    def _failed(self, record: EmitRecord, handler: str, error: Exception) -> None:
        lines = "".join(traceback.format_exception(error)).rstrip().splitlines()
        self.failures.append(
            Failure(
                event_name=record.name,
                event_id=record.event_id,
                correlation_id=record.correlation_id,
                handler=handler,
                error=_describe(error),
                traceback="\n".join(lines[-TRACEBACK_LINES:]),
                at=datetime.now(UTC),
            )
        )


class _ObservedHandler:
    """A registration as the console's delivery runs it: timed, its outcome recorded.

    Whatever it raises propagates to the delivery loop, which logs failures as for any handler.
    """

    __slots__ = ("awaits", "call", "entry", "feed", "label", "slow_after")

    def __init__(self, entry: Any, feed: Feed) -> None:
        self.entry = entry
        self.feed = feed
        self.label: str = entry.label
        self.slow_after: float | None = getattr(entry, "slow_after", None)
        self.awaits = True
        self.call = self.run

    async def run(self, **kwargs: Any) -> None:
        record = _recording.get()
        started = time.perf_counter()
        outcome, error = "cancelled", None
        try:
            await run_handler(self.entry, kwargs)
            outcome = "ok"
        except Exception as exc:
            outcome, error = "failed", _describe(exc)
            if record is not None:
                self.feed._failed(record, self.label, exc)
            raise
        finally:
            if record is not None:
                duration = time.perf_counter() - started
                record.runs.append(HandlerRun(self.label, duration, outcome, error))


def _describe(error: BaseException) -> str:
    return f"{type(error).__qualname__}: {error}"
