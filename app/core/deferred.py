"""Delivery later: after a unit of work commits, or in the background of an application.

``deferred_events()`` opens a scope in which ``emit`` checks everything at once but queues the
delivery until the scope ends cleanly; ``BackgroundEmitter`` delivers fire-and-forget emits in
a task group that its owner (an application's lifespan) awaits. Both run on anyio.

Nothing queued vanishes: an emit reaching a scope that has ended (from a task that outlived
it) is queued in the enclosing open scope, delivered at once if the scope committed, or
refused with ``ScopeClosedError`` if it was discarded.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any, Final, Literal, NamedTuple

import anyio
import structlog

from app.core import _pipeline
from app.core._context import Event
from app.core._errors import DurableDeliveryError, EventsError, ScopeClosedError
from app.core.events import admit, deliver_later, registrations

__all__ = [
    "BackgroundEmitter",
    "DeferredBatch",
    "EmitterClosedError",
    "Events",
    "Queued",
    "ScopeClosedError",
    "deferred_events",
    "deliver_in_order",
]

log = structlog.get_logger(__name__)

DEFAULT_GRACE_PERIOD: Final = 10.0
"""Seconds ``BackgroundEmitter`` waits for pending deliveries at shutdown, by default."""


class EmitterClosedError(EventsError, RuntimeError):
    """``emit_soon`` on a BackgroundEmitter that is not running (not entered, or shut down)."""


class Queued(NamedTuple):
    """An event checked by ``emit`` and waiting for its delivery (it holds the payload only
    until then)."""

    name: str
    kwargs: dict[str, Any]
    event: Event
    via: Callable[[list[Queued]], None] | None = None
    """Where to hand it when its scope commits (a ``BackgroundEmitter``'s ``deliver_soon``);
    None: the scope delivers it."""


Events = list[Queued]


class DeferredBatch:
    """The events a ``deferred_events()`` scope queued, in emit order, and the scope's state:
    ``"open"``, then ``"committed"`` or ``"discarded"``."""

    def __init__(self, outer: DeferredBatch | None) -> None:
        self.events: Events = []
        self.discard_reason: str | None = None
        self.state: Literal["open", "committed", "discarded"] = "open"
        self.outer = outer
        self._lock = threading.Lock()

    def discard(self, reason: str) -> None:
        """Drop every queued event, and those still to come, when the scope ends."""
        self.discard_reason = reason

    @property
    def names(self) -> list[str]:
        """The queued event names, in emit order."""
        return [item.name for item in self.events]

    def defer(
        self,
        name: str,
        kwargs: dict[str, Any],
        event: Event,
        via: Callable[[Events], None] | None = None,
    ) -> bool:
        """Queue a checked event in the innermost scope still open from this one outwards;
        False when every such scope committed (the caller delivers it now).

        Raises:
            ScopeClosedError: the first scope found ended discarded.
        """
        return _queue_in_open_scope(self, [Queued(name, kwargs, event, via)])

    def _close(self, state: Literal["committed", "discarded"]) -> Events:
        with self._lock:
            self.state = state
            events, self.events = self.events, []
        return events


def _queue_in_open_scope(batch: DeferredBatch | None, items: Events) -> bool:
    """Append ``items`` to the first open scope from ``batch`` outwards; False if none is
    open and none on the way was discarded.

    Raises:
        ScopeClosedError: a scope on the way ended discarded.
    """
    while batch is not None:
        with batch._lock:
            if batch.state == "open":
                batch.events.extend(items)
                return True
            if batch.state == "discarded":
                names = ", ".join(repr(item.name) for item in items)
                raise ScopeClosedError(
                    f"cannot emit {names}: the deferred_events() scope it belongs to was "
                    f"discarded ({batch.discard_reason}), so the work it announces did not "
                    "happen. Emit from inside the scope, or open a new one.",
                    event_name=items[0].name,
                )
        batch = batch.outer
    return False


@contextlib.asynccontextmanager
async def deferred_events(
    *, deliver: Callable[[Events], None] | None = None
) -> AsyncIterator[DeferredBatch]:
    """Queue the deliveries of every ``emit`` in this context until the block ends.

    ``emit`` still checks name and payload at once and raises there. On a clean exit the
    queued events are delivered in emit order, each with the usual failure isolation (or
    passed to ``deliver``, such as ``BackgroundEmitter.deliver_soon``, to deliver elsewhere),
    or, in a nested scope, handed to the enclosing one (they go when it ends cleanly). If
    the block raises, or ``discard()`` was called, they are dropped with one debug log line
    (``"deferred events discarded"``, with ``count``, names, ids and ``reason``).
    Cancellation during delivery propagates after one warning naming the events not delivered.

    Works through a ContextVar, so code deep in the call stack needs no extra argument. Tasks
    started inside the block inherit it: their emits are queued while it is open; once it has
    ended they go to the enclosing open scope, are delivered at once if it committed, or raise
    ``ScopeClosedError`` if it was discarded. ``BackgroundEmitter.emit_soon`` inside the block
    waits for the commit too.
    """
    outer = _pipeline.deferral.get()
    batch = DeferredBatch(outer if isinstance(outer, DeferredBatch) else None)
    token = _pipeline.deferral.set(batch)
    try:
        yield batch
    except BaseException as error:
        batch.discard_reason = batch.discard_reason or f"the block raised {type(error).__name__}"
        _discarded(batch, batch._close("discarded"))
        raise
    finally:
        _pipeline.deferral.reset(token)
    if batch.discard_reason is not None:
        _discarded(batch, batch._close("discarded"))
        return
    items = batch._close("committed")
    if not items or _queue_in_open_scope(batch.outer, items):
        return
    if deliver is not None:
        deliver(items)
    else:
        await deliver_in_order(items)


async def deliver_in_order(items: Events, *, report_cancellation: bool = True) -> None:
    """Deliver queued events one after another (they were checked and recorded when queued);
    those queued by ``emit_soon`` are handed to their emitter instead.

    An ``Exception`` from one delivery is logged (``"deferred event failed"``) and the next
    goes on; cancellation propagates, after one warning naming the events not delivered unless
    ``report_cancellation`` is false (the caller reports it).
    """
    for index, item in enumerate(items):
        try:
            if item.via is not None:
                item.via([item._replace(via=None)])
            else:
                await deliver_later(item.name, item.kwargs, item.event)
        except Exception:
            log.exception("deferred event failed", **item.event.ids())
        except BaseException:
            if report_cancellation:
                log.warning("deferred events not delivered", **describe(items[index:]))
            raise


def describe(items: Events) -> dict[str, Any]:
    """Log keys naming queued events: their names, event ids and correlation ids."""
    return {
        "count": len(items),
        "event_names": [item.name for item in items],
        "event_ids": [item.event.event_id for item in items],
        "correlation_ids": sorted({item.event.correlation_id for item in items}),
    }


def _discarded(batch: DeferredBatch, items: Events) -> None:
    if items:
        log.debug("deferred events discarded", **describe(items), reason=batch.discard_reason)


class BackgroundEmitter:
    """Fire-and-forget emits, delivered in a task group owned by whoever enters this.

    Use it as an application's lifespan resource::

        async with BackgroundEmitter(grace_period=5) as emitter:
            emitter.emit_soon("employee.created", employee_id=1, ...)

    On exit it stops accepting, waits up to ``grace_period`` seconds for pending deliveries,
    then cancels the rest with one warning (``"background deliveries cancelled"``, naming each
    event and its ids). Nothing is dropped without a log line. An event emitted soon by work
    done for another event is caused by it, one deeper in its chain, as with ``emit``.
    """

    def __init__(self, *, grace_period: float = DEFAULT_GRACE_PERIOD) -> None:
        self.grace_period = grace_period
        self._group: anyio.abc.TaskGroup | None = None
        self._pending: dict[int, Events] = {}
        self._ids = itertools.count()
        self._idle: anyio.Event | None = None

    @property
    def pending(self) -> list[str]:
        """Names of the events whose delivery has not finished, in the order given."""
        return [item.name for items in self._pending.values() for item in items]

    async def __aenter__(self) -> BackgroundEmitter:
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group = group
        self._idle = anyio.Event()
        self._idle.set()
        return self

    def emit_soon(self, name: str, /, **kwargs: Any) -> None:
        """Check the event now, as ``emit`` would, and deliver it in the background.

        Inside a ``deferred_events()`` scope (a unit of work) it waits for the scope: it is
        delivered in the background once the scope commits, and dropped with the scope's other
        events if it is discarded.

        Raises:
            EmitterClosedError: the emitter is not running.
            EventNameError, UnknownEventError, PayloadError, EventRecursionError: as ``emit``,
                at once.
            DurableDeliveryError: the event has durable handlers, whose jobs must be enqueued
                in the emitter's transaction: ``await emit(...)`` in the unit of work instead.
        """
        group = self._running(name)
        event = admit(name, kwargs)
        if event is None:
            return
        durable = [str(r.id) for r in registrations(name) if r.durable]
        if durable:
            raise DurableDeliveryError(
                f"cannot emit_soon({name!r}): it has durable handlers ({', '.join(durable)}), "
                "whose jobs are enqueued in the emitter's transaction. Use await emit(...) "
                "inside the unit of work.",
                event_name=name,
            )
        deferral = _pipeline.deferral.get()
        if deferral is not None and deferral.defer(name, kwargs, event, self.deliver_soon):
            return
        self._start(group, [Queued(name, kwargs, event)])

    def deliver_soon(self, items: Events) -> None:
        """Deliver events already checked (a committed ``deferred_events`` batch), in order,
        in one background task.

        Raises:
            EmitterClosedError: the emitter is not running.
        """
        if items:
            self._start(self._running(items[0].name), items)

    async def join(self) -> None:
        """Wait until every delivery started so far has finished."""
        while self._pending and self._idle is not None:
            await self._idle.wait()

    def _running(self, name: str) -> anyio.abc.TaskGroup:
        if self._group is None:
            raise EmitterClosedError(
                f"cannot deliver {name!r}: the background emitter is not running",
                event_name=name,
            )
        return self._group

    def _start(self, group: anyio.abc.TaskGroup, items: Events) -> None:
        key = next(self._ids)
        if not self._pending and self._idle is not None:
            self._idle = anyio.Event()
        self._pending[key] = items
        group.start_soon(self._deliver, key, items, name=f"deliver {items[0].name}")

    async def _deliver(self, key: int, items: Events) -> None:
        token = _pipeline.deferral.set(None)  # delivered now: no scope of the caller's applies
        try:
            await deliver_in_order(items, report_cancellation=False)  # __aexit__ reports it
        finally:
            _pipeline.deferral.reset(token)
            del self._pending[key]
            if not self._pending and self._idle is not None:
                self._idle.set()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        group, self._group = self._group, None
        if group is None:
            raise EmitterClosedError("BackgroundEmitter exited without being entered")
        try:
            if self._pending:
                with anyio.move_on_after(self.grace_period, shield=True):
                    await self.join()
            if self._pending:
                pending = [item for items in self._pending.values() for item in items]
                log.warning(
                    "background deliveries cancelled",
                    **describe(pending),
                    grace_period=self.grace_period,
                )
                group.cancel_scope.cancel()
        finally:
            result = await group.__aexit__(exc_type, exc, traceback)
        return result
