"""Delivery later: after a unit of work commits, or in the background of an application.

``deferred_events()`` opens a scope in which ``emit`` checks everything at once but queues the
delivery until the scope ends cleanly; ``BackgroundEmitter`` delivers fire-and-forget emits in
a task group that its owner (an application's lifespan) awaits. Both run on anyio.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any, Final

import anyio
import structlog

from app.core import _hooks, catalogue, tracing
from app.core._errors import EventsError
from app.core.events import _trace_here, emit
from app.core.tracing import Trace

__all__ = [
    "BackgroundEmitter",
    "DeferredBatch",
    "EmitterClosedError",
    "Events",
    "deferred_events",
    "deliver_in_order",
]

log = structlog.get_logger(__name__)

DEFAULT_GRACE_PERIOD: Final = 10.0
"""Seconds ``BackgroundEmitter`` waits for pending deliveries at shutdown, by default."""


class EmitterClosedError(EventsError, RuntimeError):
    """``emit_soon`` on a BackgroundEmitter that is not running (not entered, or shut down)."""


class DeferredBatch:
    """The events a ``deferred_events()`` scope queued, in emit order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.discard_reason: str | None = None

    def discard(self, reason: str) -> None:
        """Drop every queued event, and those still to come, when the scope ends."""
        self.discard_reason = reason

    @property
    def names(self) -> list[str]:
        """The queued event names, in emit order."""
        return [name for name, _ in self.events]


Events = list[tuple[str, dict[str, Any]]]


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
    (``"deferred events discarded"``, with ``count`` and ``reason``). Cancellation during
    delivery propagates after one warning naming the events not delivered.

    Works through a ContextVar, so code deep in the call stack needs no extra argument; tasks
    started inside the block inherit it.
    """
    outer = _hooks.deferral.get()
    batch = DeferredBatch()
    token = _hooks.deferral.set(batch.events)
    _hooks.count_scope(+1, catalogue.refresh_fast_paths)
    try:
        yield batch
    except BaseException as error:
        _discarded(batch, f"the block raised {type(error).__name__}")
        raise
    finally:
        _hooks.deferral.reset(token)
        _hooks.count_scope(-1, catalogue.refresh_fast_paths)
    if batch.discard_reason is not None:
        _discarded(batch, batch.discard_reason)
    elif outer is not None:
        outer.extend(batch.events)
    elif deliver is not None:
        deliver(batch.events)
    else:
        await deliver_in_order(batch.events)


async def deliver_in_order(events: Events, *, report_cancellation: bool = True) -> None:
    """Emit queued events one after another (they were checked and recorded when queued).

    An ``Exception`` from one emit is logged (``"deferred event failed"``) and the next goes
    on; cancellation propagates, after one warning naming the events not delivered unless
    ``report_cancellation`` is false (the caller reports it).
    """
    for index, (name, kwargs) in enumerate(events):
        token = _hooks.replaying.set(kwargs)
        try:
            await emit(name, **kwargs)
        except Exception:
            log.exception("deferred event failed", event_name=name)
        except BaseException:
            if report_cancellation:
                log.warning(
                    "deferred events not delivered",
                    event_names=[n for n, _ in events[index:]],
                    count=len(events) - index,
                )
            raise
        finally:
            _hooks.replaying.reset(token)


def _discarded(batch: DeferredBatch, reason: str) -> None:
    if batch.events:
        log.debug(
            "deferred events discarded",
            count=len(batch.events),
            event_names=batch.names,
            reason=reason,
        )


class BackgroundEmitter:
    """Fire-and-forget emits, delivered in a task group owned by whoever enters this.

    Use it as an application's lifespan resource::

        async with BackgroundEmitter(grace_period=5) as emitter:
            emitter.emit_soon("employee.created", employee_id=1, ...)

    On exit it stops accepting, waits up to ``grace_period`` seconds for pending deliveries,
    then cancels the rest with one warning (``"background deliveries cancelled"``, naming each
    event). Nothing is dropped without a log line. Events started from inside a handler are
    delivered as caused by that handler's event (see ``app.core.tracing``).
    """

    def __init__(self, *, grace_period: float = DEFAULT_GRACE_PERIOD) -> None:
        self.grace_period = grace_period
        self._group: anyio.abc.TaskGroup | None = None
        self._pending: dict[int, list[str]] = {}
        self._ids = itertools.count()
        self._idle: anyio.Event | None = None

    @property
    def pending(self) -> list[str]:
        """Names of the events whose delivery has not finished, in the order given."""
        return [name for names in self._pending.values() for name in names]

    async def __aenter__(self) -> BackgroundEmitter:
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group = group
        self._idle = anyio.Event()
        self._idle.set()
        return self

    def emit_soon(self, name: str, /, **kwargs: Any) -> None:
        """Check the event now and deliver it in the background, as ``emit`` would.

        Raises:
            EmitterClosedError: the emitter is not running.
            EventNameError, UnknownEventError, PayloadError: as ``emit``, at once.
        """
        group = self._running(name)
        catalogue.check_emit(name, kwargs)
        self._start(group, [(name, kwargs)])

    def deliver_soon(self, events: Events) -> None:
        """Deliver events already checked (a committed ``deferred_events`` batch), in order,
        in one background task.

        Raises:
            EmitterClosedError: the emitter is not running.
        """
        if events:
            self._start(self._running(events[0][0]), events)

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

    def _start(self, group: anyio.abc.TaskGroup, events: Events) -> None:
        key = next(self._ids)
        if not self._pending and self._idle is not None:
            self._idle = anyio.Event()
        self._pending[key] = [name for name, _ in events]
        cause = _trace_here(sys._getframe(2))  # the caller of emit/deliver_soon
        group.start_soon(self._deliver, key, events, cause, name=f"deliver {events[0][0]}")

    async def _deliver(self, key: int, events: Events, cause: Trace | None) -> None:
        token = tracing.cause.set(cause)
        try:
            await deliver_in_order(events, report_cancellation=False)  # __aexit__ reports it
        finally:
            tracing.cause.reset(token)
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
                log.warning(
                    "background deliveries cancelled",
                    event_names=self.pending,
                    count=len(self.pending),
                    grace_period=self.grace_period,
                )
                group.cancel_scope.cancel()
        finally:
            result = await group.__aexit__(exc_type, exc, traceback)
        return result
