"""What is running follows context: into tasks, threads and greenlets, with causal depth."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import sys
import threading
import uuid
import weakref

import anyio
import anyio.from_thread
import anyio.to_thread
import greenlet
import pytest
import structlog
from sqlalchemy.util import greenlet_spawn

from app.core import _context, _pipeline, catalogue
from app.core.deferred import BackgroundEmitter, deferred_events
from app.core.events import (
    MAX_DEPTH,
    EventRecursionError,
    InvalidHandlerError,
    PayloadError,
    current_event,
    declare,
    emit,
    on,
)
from app.core.logging import add_event_context
from app.core.tracing import configure_tracing, new_event_id

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def events_of_this_file(declare_event):
    """Declare the events these tests emit."""
    declare_event("order.placed", optional=("level", "item"))
    declare_event("invoice.created", optional=("level",))
    declare_event("ping.sent")
    declare_event("pong.sent")


@pytest.fixture(params=["plain", "traced"])
def mode(request):
    """Run a test with tracing off and fully on but spans (the plugin restores the default)."""
    if request.param == "traced":
        configure_tracing(bind_context=True, slow_after=60)
    return request.param


def label(function):
    return f"{function.__module__}.{function.__qualname__}"


def names_and_depths(seen):
    return [(event.name, event.depth) for event in seen]


async def test_a_task_group_task_started_by_a_handler_works_for_its_event(registry, mode):
    """A task a handler starts sees the handler's event and its emits are caused by it."""
    seen = {}

    async def child():
        seen["child"] = current_event()
        await emit("invoice.created")

    @on("order.placed")
    async def place(**kwargs):
        seen["order"] = current_event()
        async with anyio.create_task_group() as group:
            group.start_soon(child)

    @on("invoice.created")
    async def invoice(**kwargs):
        seen["invoice"] = current_event()

    await emit("order.placed")
    order, child_, invoice_ = seen["order"], seen["child"], seen["invoice"]
    assert child_.event_id == order.event_id
    assert child_.handler == label(place)
    assert (invoice_.causation_id, invoice_.depth) == (order.event_id, 2)
    assert invoice_.correlation_id == order.correlation_id
    assert current_event() is None


async def test_worker_threads_and_calls_back_carry_the_event(registry, mode):
    """``to_thread`` work sees the event; its ``from_thread`` emits are one deeper."""
    seen = []

    def in_thread():
        seen.append(current_event())
        anyio.from_thread.run(emit, "invoice.created")

    @on("order.placed")
    async def place(**kwargs):
        seen.append(current_event())
        await anyio.to_thread.run_sync(in_thread)

    @on("invoice.created")
    async def invoice(**kwargs):
        seen.append(current_event())

    await emit("order.placed")
    order, in_thread_, invoice_ = seen
    assert in_thread_.event_id == order.event_id
    assert (invoice_.causation_id, invoice_.depth) == (order.event_id, 2)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # asyncio's own function
async def test_asyncio_to_thread_carries_the_event(registry):
    """``asyncio.to_thread`` copies the context, so the worker thread sees the event."""
    seen = []

    @on("order.placed")
    async def place(**kwargs):
        seen.append(current_event())
        seen.append(await asyncio.to_thread(current_event))

    await emit("order.placed")
    assert seen[0] is not None
    assert seen[1] == seen[0]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # SQLAlchemy's async is asyncio's
async def test_sqlalchemys_greenlet_bridge_carries_the_event(registry):
    """Code SQLAlchemy runs in its greenlet (ORM listeners during ``await flush()``) sees the
    event, and so does its log line."""
    seen = []

    def listener():
        seen.append(current_event())
        return add_event_context(None, "info", {"event": "row written"})

    @on("order.placed")
    async def place(**kwargs):
        seen.append(await greenlet_spawn(listener))

    await emit("order.placed")
    event, line = seen
    assert event.name == "order.placed"
    assert line == {"event": "row written", **event.log_keys()}


def test_current_event_never_raises_at_a_greenlets_top_frame():
    """Called as a greenlet's own function, with nothing beneath it, it returns None."""
    assert greenlet.greenlet(current_event).switch() is None


async def test_the_log_processor_adds_the_keys_in_tasks_and_threads(registry, mode):
    """Lines logged by a handler, a task it starts and a thread it uses carry its keys."""
    lines = []

    def log_line(where):
        lines.append(add_event_context(None, "info", {"event": where}))

    @on("order.placed")
    async def place(**kwargs):
        log_line("handler")
        async with anyio.create_task_group() as group:
            group.start_soon(anyio.to_thread.run_sync, log_line, "thread")
            group.start_soon(lambda: anyio.to_thread.run_sync(log_line, "task thread"))

    await emit("order.placed")
    log_line("outside")
    by_place = {line.pop("event"): line for line in lines}
    keys = by_place["handler"]
    assert keys["event_name"] == "order.placed"
    assert keys["handler"] == label(place)
    assert by_place == {"handler": keys, "thread": keys, "task thread": keys, "outside": {}}


@pytest.mark.events_expect_failure("order.placed", ExceptionGroup)
async def test_a_handler_reemitting_through_its_own_task_group_stops_at_the_limit(registry, logs):
    """Depth is causal, not per task: a loop through new tasks stops at MAX_DEPTH."""
    depths = []

    @on("order.placed")
    async def again(**kwargs):
        depths.append(current_event().depth)
        async with anyio.create_task_group() as group:
            group.start_soon(emit, "order.placed")

    await emit("order.placed")
    assert depths == list(range(1, MAX_DEPTH + 1))
    (record,) = logs  # the innermost handler, whose task group raised; the others succeed
    assert record["event"] == "event handler failed"
    assert record["handler"] == label(again)
    (error,) = record["exc_info"].exceptions
    assert isinstance(error, EventRecursionError)
    assert error.depth == MAX_DEPTH + 1


@pytest.mark.events_expect_failure("pong.sent", EventRecursionError)
async def test_a_ping_pong_through_emit_soon_stops_at_the_limit(registry, logs):
    """``emit_soon`` from a handler is one deeper: a background ping-pong stops at MAX_DEPTH
    with one record of the error, logged by the handler that tried."""
    runs = []
    async with BackgroundEmitter() as emitter:

        @on("ping.sent")
        def ping(**kwargs):
            runs.append(current_event().depth)
            emitter.emit_soon("pong.sent")

        @on("pong.sent")
        def pong(**kwargs):
            runs.append(current_event().depth)
            emitter.emit_soon("ping.sent")

        with anyio.fail_after(5):
            await emit("ping.sent")
            await emitter.join()
    assert runs == list(range(1, MAX_DEPTH + 1))
    (record,) = logs
    assert record["event"] == "event handler failed"
    assert isinstance(record["exc_info"], EventRecursionError)
    assert record["exc_info"].depth == MAX_DEPTH + 1
    assert record["event_name"] == "pong.sent"  # depth 16 is a pong; its ping would be 17


@pytest.mark.events_expect_failure("order.placed", EventRecursionError)
async def test_a_hop_through_a_thread_and_back_stops_at_the_limit(registry, logs):
    """``to_thread`` + ``from_thread.run`` carries the depth: the loop ends, no deadlock."""
    depths = []

    def hop():
        anyio.from_thread.run(emit, "order.placed")

    @on("order.placed")
    async def again(**kwargs):
        depths.append(current_event().depth)
        await anyio.to_thread.run_sync(hop)

    with anyio.fail_after(10):
        await emit("order.placed")
    assert depths == list(range(1, MAX_DEPTH + 1))
    assert isinstance(logs[0]["exc_info"], EventRecursionError)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.eager_task_factory is 3.12+")
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_eager_task_factory_changes_nothing(registry, logs):
    """With eager tasks, a task started by a handler works for its event from its first line,
    emits one deeper, and nothing is left behind for later tasks."""
    loop = asyncio.get_running_loop()
    loop.set_task_factory(asyncio.eager_task_factory)
    try:
        seen = []

        async def child():
            seen.append(("child", current_event()))  # before its first await
            await emit("invoice.created")

        @on("order.placed")
        async def place(**kwargs):
            seen.append(("order", current_event()))
            await asyncio.create_task(child())
            seen.append(("order after", current_event()))

        @on("invoice.created")
        async def invoice(**kwargs):
            seen.append(("invoice", current_event()))

        for _ in range(MAX_DEPTH + 2):  # more emits than the limit: nothing accumulates
            seen.clear()
            await asyncio.create_task(emit("order.placed"))
            (_, order), (_, child_), (_, invoice_), (_, after) = seen
            assert child_ == order == after
            assert (invoice_.causation_id, invoice_.depth) == (order.event_id, 2)
            assert await asyncio.create_task(_current()) is None
        assert logs == []
    finally:
        loop.set_task_factory(None)


async def _current():
    return current_event()


async def test_chains_mean_the_same_traced_or_not(registry):
    """Causation, depth, correlation and occurred_at agree with tracing off and on."""
    results = {}
    seen = []

    @on("order.placed")
    async def place(**kwargs):
        seen.append(current_event())
        await emit("invoice.created")

    @on("invoice.created")
    async def invoice(**kwargs):
        seen.append(current_event())

    for traced in (False, True):
        configure_tracing(reset=True, bind_context=traced, slow_after=60 if traced else 0)
        seen.clear()
        with structlog.contextvars.bound_contextvars(request_id="req-1"):
            before = _now()
            await emit("order.placed")
        order, invoice_ = seen
        assert before <= order.occurred_at <= invoice_.occurred_at
        results[traced] = (
            names_and_depths(seen),
            invoice_.causation_id == order.event_id,
            {event.correlation_id for event in seen},
        )
    assert (
        results[False]
        == results[True]
        == (
            [("order.placed", 1), ("invoice.created", 2)],
            True,
            {"req-1"},
        )
    )


def _now():
    from datetime import UTC, datetime

    return datetime.now(UTC)


async def test_no_payload_outlives_its_emit(registry, mode, monkeypatch):
    """Whatever asked for the event's identity, the payload is gone once emit returns."""
    monkeypatch.setattr(_pipeline, "before", None)  # the test plugin's recorder keeps payloads

    class Item:
        pass

    item = Item()
    gone = weakref.ref(item)

    @on("order.placed")
    async def place(**kwargs):
        current_event()
        structlog.get_logger().info("placed")
        await emit("invoice.created")

    @on("invoice.created")
    async def invoice(**kwargs):
        assert current_event().causation_id is not None

    await emit("order.placed", item=item)
    del item
    gc.collect()
    assert gone() is None


def test_a_timeout_on_a_plain_def_is_refused(registry):
    """``timeout=`` cannot be enforced on a plain def: registration says so."""

    def handler(**kwargs):
        return None

    with pytest.raises(InvalidHandlerError) as caught:
        on("order.placed", timeout=1)(handler)
    assert str(caught.value) == (
        f"cannot register {label(handler)} for 'order.placed' with timeout=1: it is a plain "
        "def, which runs on the event loop's thread where no timeout can interrupt it. "
        "Make it async def, or drop the timeout."
    )


async def test_sync_handlers_are_called_by_the_delivery_loop_itself(registry):
    """No coroutine stands between the delivery loop and a plain def handler."""
    callers = []

    @on("order.placed")
    def place(**kwargs):
        callers.append(sys._getframe(1).f_code.co_name)

    await emit("order.placed")
    assert callers == ["_deliver"]


def test_event_ids_ignore_random_seed_and_sort_by_time():
    """``random.seed`` does not touch the ids; later ids sort after earlier ones."""
    ns = 1_800_000_000_000_000_000
    random.seed(1)
    first = new_event_id(ns)
    random.seed(1)
    second = new_event_id(ns)
    assert first != second
    later = new_event_id(ns + 1_000_000)
    assert sorted([later, first]) == [first, later] or sorted([later, second])[1] == later


def test_ids_of_one_millisecond_are_distinct_and_sort_in_the_order_made():
    """Within one process and millisecond, each id differs and sorts after the one before."""
    ns = 1_800_000_000_000_000_000
    ids = [new_event_id(ns) for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert ids == sorted(ids)
    assert {uuid.UUID(event_id).version for event_id in ids} == {7}


def test_a_forked_child_makes_other_ids_than_its_parent():
    """The generator is reseeded in a forked child, so parent and child never repeat."""
    ns = 1_800_000_000_000_000_000
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write one id and leave at once
        os.write(write, new_event_id(ns).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child_id = os.read(read, 100).decode()
    os.close(read)
    assert len(child_id) == 36
    assert child_id != new_event_id(ns)


async def test_the_production_key_check_refuses_undeclared_and_missing_fields(
    registry, monkeypatch
):
    """With no step before delivery (no test hook, no type checks), emit still checks keys."""
    monkeypatch.setattr(_pipeline, "before", None)
    declare(
        "refund.issued",
        source="tests",
        payload={"order_id": int, "amount": int},
        purpose="a test event",
    )
    got = []
    on("refund.issued")(lambda **kwargs: got.append(kwargs))
    with pytest.raises(PayloadError, match="undeclared field"):
        await emit("refund.issued", order_id=1, extra=2)
    with pytest.raises(PayloadError, match="missing required field"):
        await emit("refund.issued", order_id=1)
    await emit("refund.issued", order_id=1, amount=2)
    assert got == [{"order_id": 1, "amount": 2}]
    assert catalogue.payload_types_checked()  # the plugin's setting, untouched: no step read


def test_threads_declaring_registering_and_opening_scopes_at_once_never_fail(registry):
    """Declarations, registrations and scopes in several threads at once: no error, and every
    emit reaches exactly its own handlers."""
    errors = []
    delivered = []
    barrier = threading.Barrier(4)

    def work(index):
        try:
            barrier.wait()
            for round_ in range(30):
                name = f"thread{index}.round{round_}"
                declare(name, source="tests", payload={}, purpose="a test event")
                on(name)(lambda _n=name, **kwargs: delivered.append(_n))

                async def scoped(name=name):
                    async with deferred_events():
                        await emit(name)

                anyio.run(scoped)
        except Exception as error:  # the test reports it below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sorted(delivered) == sorted(f"thread{i}.round{r}" for i in range(4) for r in range(30))


@pytest.mark.events_expect_failure("order.placed", ValueError)
async def test_the_context_variable_is_reset_after_every_emit(registry):
    """After an emit, even one whose handler failed, nothing of it is left in the context."""

    @on("order.placed")
    async def fails(**kwargs):
        raise ValueError("boom")

    await emit("order.placed")
    assert _context.current.get() is None
