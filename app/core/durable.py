"""Durable handlers: the core's part (framework-free; the transport lives elsewhere).

A handler registered with ``@on(name, durable=True, id="pkg.what", max_attempts=5,
timeout=30.0)`` is not run by ``emit``. Instead ``emit`` checks that the payload is JSON, then
hands one ``DurableJob`` per durable handler, all at once, to the installed
``DurableTransport`` (``install_transport``), which writes them in the emitter's open
transaction: a rollback drops them. A worker later gives each job to ``run_job``.

No transport installed, or (the transport's own check) no unit of work open: the emit is
refused with ``DurableDeliveryError`` before anything runs; there is no in-process fallback.
"""

from __future__ import annotations

from typing import Final

import structlog

from app.core import _context
from app.core._context import Event
from app.core._durable import (
    DEFAULT_DURABLE_TIMEOUT,
    DEFAULT_MAX_ATTEMPTS,
    JSON_FIELD_TYPES,
    DurableJob,
    DurableTransport,
)
from app.core._errors import DurableDeliveryError, HandlerNotRegisteredError
from app.core._pipeline import install_transport
from app.core.events import Registration, durable_registration

__all__ = [
    "DEFAULT_DURABLE_TIMEOUT",
    "DEFAULT_MAX_ATTEMPTS",
    "JSON_FIELD_TYPES",
    "DurableDeliveryError",
    "DurableJob",
    "DurableTransport",
    "install_transport",
    "restore_event",
    "run_job",
]

log = structlog.get_logger(__name__)

_current: Final = _context.current


async def run_job(job: DurableJob) -> None:
    """Run the durable handler ``job`` names with its payload, as work done for its event.

    Inside, ``current_event()`` reports the original event (name, ids, depth, time) and the
    handler, and log lines carry them (``app.core.logging.add_event_context``); an emit made
    by the handler is caused by the original event, one deeper. The handler's ``timeout``
    applies (``HandlerTimeoutError``). Nothing is logged here: every exception propagates, so
    that the worker retries the job.

    Raises:
        HandlerNotRegisteredError: no durable handler has the job's ``handler_id`` in this
            process (its module was not imported, or the id changed).
        Exception: whatever the handler raises.
    """
    registration = durable_registration(job.handler_id)
    if registration is None:
        raise HandlerNotRegisteredError(
            f"no durable handler has id {job.handler_id!r} in this process (the job is for "
            f"{job.event_name!r}, event {job.event_id}). Import the package that registers "
            "it, or, if the id was changed, register the handler under its old id too.",
            event_name=job.event_name,
        )
    event = restore_event(job, registration)
    token = _current.set(event)
    try:
        await registration.call(**job.payload)
    finally:
        _current.reset(token)


def restore_event(job: DurableJob, registration: Registration | None = None) -> Event:
    """The event ``job`` was enqueued for, as the work done for it sees it: same name, ids,
    depth and start time, ``registration`` as its running handler."""
    parent = None
    if job.causation_id is not None:
        parent = _restored(job.event_name, None, job.depth - 1, job)
        parent._id = job.causation_id
    event = _restored(job.event_name, parent, job.depth, job)
    event._id = job.event_id
    event.handler = registration
    return event


def _restored(name: str, parent: Event | None, depth: int, job: DurableJob) -> Event:
    event = Event(name, parent, depth)
    event.ns = int(job.occurred_at.timestamp() * 1_000_000) * 1_000
    event._caller = None
    event._correlation_id = job.correlation_id
    return event
