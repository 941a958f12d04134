"""Durable handlers in the core: marking, the transport protocol, JSON checks and run_job,
on asyncio and trio, with an in-memory transport."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from app.core.deferred import BackgroundEmitter, deferred_events
from app.core.durable import DurableDeliveryError, DurableJob, install_transport, run_job
from app.core.events import (
    CatalogueError,
    HandlerNotRegisteredError,
    HandlerTimeoutError,
    InvalidHandlerError,
    InvalidOptionError,
    PayloadError,
    current_event,
    emit,
    handlers,
    off,
    on,
    verify,
)
from app.core.logging import add_event_context

pytestmark = pytest.mark.anyio


class MemoryTransport:
    """Keeps each enqueue call's jobs, in order."""

    def __init__(self) -> None:
        self.calls: list[list[DurableJob]] = []

    async def enqueue(self, jobs: Sequence[DurableJob]) -> None:
        self.calls.append(list(jobs))

    @property
    def jobs(self) -> list[DurableJob]:
        return [job for call in self.calls for job in call]


@pytest.fixture
def transport():
    """An in-memory durable transport, installed for the test."""
    memory = MemoryTransport()
    undo = install_transport(memory)
    yield memory
    undo()


@pytest.fixture(autouse=True)
def events_of_this_file(declare_event):
    """Declare the events these tests emit."""
    declare_event("order.placed", "order_id", optional=("note",))
    declare_event("order.shipped", "order_id")


async def mail(**_: Any) -> None:
    """A durable handler that does nothing."""


async def audit(**_: Any) -> None:
    """Another durable handler that does nothing."""


def test_durable_handlers_are_listed_with_the_others_in_order(registry):
    """handlers() lists durable and in-process handlers together, in registration order."""

    def first(**_):
        pass

    def last(**_):
        pass

    on("order.placed")(first)
    on("order.placed", durable=True, id="shop.mail")(mail)
    on("order.placed")(last)
    assert handlers("order.placed") == (first, mail, last)
    off("order.placed", mail)
    assert handlers("order.placed") == (first, last)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "a durable handler's id must be dotted lowercase words"),
        ({"id": "Mail"}, "a durable handler's id must be dotted lowercase words"),
        ({"id": "mail"}, "a durable handler's id must be dotted lowercase words"),
        ({"id": "shop.mail", "max_attempts": 0}, "max_attempts must be an int >= 1, not 0."),
        ({"id": "shop.mail", "timeout": 0}, "timeout must be None or a positive"),
    ],
)
def test_bad_durable_options_are_refused_at_once(registry, options, message):
    """A durable handler needs a dotted lowercase id, max_attempts >= 1 and a timeout > 0."""
    with pytest.raises(InvalidOptionError, match=message):
        on("order.placed", durable=True, **options)


def test_durable_options_without_durable_are_refused(registry):
    """id= and max_attempts= mean nothing for an in-process handler."""
    with pytest.raises(InvalidOptionError, match="pass durable=True"):
        on("order.placed", id="shop.mail")


def test_a_durable_handler_must_be_async(registry):
    """A plain def cannot be durable."""
    with pytest.raises(InvalidHandlerError, match="as durable: it is not async def"):
        on("order.placed", durable=True, id="shop.mail")(lambda **_: None)


def test_durable_ids_are_unique_across_events(registry):
    """Two durable handlers with one id are refused, whatever their events."""
    on("order.placed", durable=True, id="shop.mail")(mail)
    with pytest.raises(InvalidHandlerError, match=r"id='shop.mail': .*mail \(for 'order.placed'"):
        on("order.shipped", durable=True, id="shop.mail")(audit)
    on("order.placed", durable=True, id="shop.mail")(mail)  # the same again: a no-op
    assert handlers("order.placed") == (mail,)


async def test_emit_enqueues_one_job_per_durable_handler_in_one_call(registry, transport):
    """Durable handlers do not run in-process; their jobs go to the transport in one call,
    with the event's ids; in-process handlers run in order."""
    ran: list[str] = []
    seen: list[Any] = []

    async def first(**_):
        ran.append("first")
        seen.append(current_event())

    on("order.placed")(first)
    on("order.placed", durable=True, id="shop.mail", max_attempts=3, timeout=2)(mail)
    on("order.placed", durable=True, id="shop.audit")(audit)
    on("order.placed")(lambda **_: ran.append("last"))
    await emit("order.placed", order_id=7, note=None)
    assert ran == ["first", "last"]
    [call] = transport.calls
    event = seen[0]
    assert [(j.handler_id, j.max_attempts, j.timeout) for j in call] == [
        ("shop.mail", 3, 2),
        ("shop.audit", 5, 60.0),
    ]
    for job in call:
        assert job.event_name == "order.placed"
        assert job.payload == {"order_id": 7, "note": None}
        assert (job.event_id, job.correlation_id, job.causation_id, job.depth) == (
            event.event_id,
            event.correlation_id,
            None,
            1,
        )
        assert job.occurred_at == event.occurred_at
        assert DurableJob.from_json(job.to_json()) == job


async def test_no_transport_refuses_the_emit_before_anything_runs(registry):
    """An event with durable handlers and no transport raises DurableDeliveryError and runs
    no handler."""
    ran: list[int] = []
    on("order.placed")(lambda **kw: ran.append(kw["order_id"]))
    on("order.placed", durable=True, id="shop.mail")(mail)
    with pytest.raises(
        DurableDeliveryError, match=r"durable handlers \(shop.mail\) and no durable"
    ):
        await emit("order.placed", order_id=1)
    assert ran == []


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (datetime.date(2026, 1, 1), "field 'order_id' holds a date, which is not a JSON value"),
        ([1, {"at": {2}}], "field 'order_id'[1]['at'] holds a set, which is not a JSON value"),
        ({1: "a"}, "field 'order_id' has the key 1, not a str"),
        (float("nan"), "field 'order_id' is nan, which JSON cannot hold"),
        ((1, 2), "field 'order_id' holds a tuple, which is not a JSON value"),
    ],
)
async def test_a_payload_that_is_not_json_is_refused(registry, transport, value, problem):
    """A value that would not survive JSON raises PayloadError naming the field; nothing is
    enqueued and nothing runs."""
    ran: list[int] = []
    on("order.placed")(lambda **kw: ran.append(1))
    on("order.placed", durable=True, id="shop.mail")(mail)
    with pytest.raises(PayloadError) as caught:
        await emit("order.placed", order_id=value)
    assert str(caught.value).startswith(f"cannot emit 'order.placed': {problem}. ")
    assert caught.value.wrong_types == ["order_id"]
    assert (transport.calls, ran) == ([], [])


async def test_jobs_are_enqueued_at_emit_in_process_delivery_waits(registry, transport):
    """Inside a deferral scope (a unit of work) the job is enqueued at the emit, while the
    in-process handlers wait for the clean exit; a discarded scope leaves the job to the
    transport's transaction."""
    ran: list[int] = []
    on("order.placed")(lambda **kw: ran.append(kw["order_id"]))
    on("order.placed", durable=True, id="shop.mail")(mail)
    async with deferred_events():
        await emit("order.placed", order_id=1)
        assert (len(transport.jobs), ran) == (1, [])
    assert ran == [1]


async def test_an_event_with_only_durable_handlers_runs_nothing_in_process(registry, transport):
    """With only durable handlers, emit enqueues and returns."""
    on("order.shipped", durable=True, id="shop.audit")(audit)
    async with deferred_events() as batch:
        await emit("order.shipped", order_id=2)
        assert batch.names == []
    assert [job.payload for job in transport.jobs] == [{"order_id": 2}]


async def test_emit_soon_refuses_durable_events(registry, transport):
    """emit_soon cannot enqueue in the emitter's transaction, so it refuses."""
    on("order.placed", durable=True, id="shop.mail")(mail)
    async with BackgroundEmitter() as emitter:
        with pytest.raises(DurableDeliveryError, match=r"cannot emit_soon\('order.placed'\)"):
            emitter.emit_soon("order.placed", order_id=1)
    assert transport.calls == []


async def test_run_job_restores_the_original_event(registry, transport):
    """In run_job, current_event() reports the original event's name and ids and the durable
    handler; an emit made there is caused by it, one deeper."""
    seen: list[Any] = []
    keys: dict[str, Any] = {}

    async def handler(**kwargs):
        seen.append((kwargs, current_event()))
        keys.update(add_event_context(None, "info", {}))
        await emit("order.shipped", order_id=kwargs["order_id"])

    on("order.placed", durable=True, id="shop.mail")(handler)
    on("order.shipped", durable=True, id="shop.audit")(audit)
    await emit("order.placed", order_id=5)
    [job] = transport.jobs
    await run_job(job)
    [(kwargs, event)] = seen
    assert kwargs == {"order_id": 5}
    assert (event.name, event.event_id, event.correlation_id, event.causation_id) == (
        "order.placed",
        job.event_id,
        job.correlation_id,
        None,
    )
    assert (event.depth, event.occurred_at, event.handler) == (
        1,
        job.occurred_at,
        f"{__name__}.test_run_job_restores_the_original_event.<locals>.handler",
    )
    assert keys == {
        "event_name": "order.placed",
        "event_id": job.event_id,
        "correlation_id": job.correlation_id,
        "handler": event.handler,
    }
    nested = transport.jobs[1]
    assert (nested.causation_id, nested.correlation_id, nested.depth) == (
        job.event_id,
        job.correlation_id,
        2,
    )
    assert current_event() is None


async def test_run_job_propagates_failures_and_timeouts(registry, transport):
    """run_job raises what the handler raises, and HandlerTimeoutError past its timeout."""

    async def failing(**_):
        raise ConnectionError("mail server down")

    async def slow(**_):
        await anyio.sleep(5)

    on("order.placed", durable=True, id="shop.mail")(failing)
    on("order.shipped", durable=True, id="shop.slow", timeout=0.05)(slow)
    await emit("order.placed", order_id=1)
    await emit("order.shipped", order_id=1)
    mail_job, slow_job = transport.jobs
    with pytest.raises(ConnectionError, match="mail server down"):
        await run_job(mail_job)
    with pytest.raises(HandlerTimeoutError, match=r"timed out after 0.05 s"):
        await run_job(slow_job)


async def test_run_job_of_an_unknown_handler_id_raises(registry, transport):
    """A job whose handler id is not registered here raises HandlerNotRegisteredError."""
    on("order.placed", durable=True, id="shop.mail")(mail)
    await emit("order.placed", order_id=1)
    [job] = transport.jobs
    off("order.placed", mail)
    with pytest.raises(HandlerNotRegisteredError, match=r"no durable handler has id 'shop\.mail'"):
        await run_job(job)


def test_verify_reports_durable_handlers_of_events_with_non_json_fields(registry, declare_event):
    """verify() refuses a durable handler of an event whose declared field types are not JSON."""
    declare_event("invoice.sent", "invoice_id", sent_on=datetime.date, total=float | None)
    on("invoice.sent", durable=True, id="billing.archive")(mail)
    on("order.placed", durable=True, id="shop.mail")(audit)
    with pytest.raises(CatalogueError) as caught:
        verify()
    [problem] = caught.value.problems
    assert problem.startswith(f"{__name__}.mail (")
    assert "is a durable handler of 'invoice.sent', whose field sent_on is not of a JSON" in problem


def test_install_transport_returns_its_undo(registry):
    """install_transport swaps the transport and its undo puts the previous one back."""
    from app.core import _pipeline

    first, second = MemoryTransport(), MemoryTransport()
    undo_first = install_transport(first)
    undo_second = install_transport(second)
    assert _pipeline.transport is second
    undo_second()
    assert _pipeline.transport is first
    undo_first()
    assert _pipeline.transport is None
