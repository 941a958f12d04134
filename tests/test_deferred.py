"""Deferred delivery: unit-of-work scopes and the background emitter, on asyncio and trio."""

from __future__ import annotations

import contextlib
import threading
from uuid import UUID

import anyio
import pytest

from app.core.deferred import (
    BackgroundEmitter,
    EmitterClosedError,
    ScopeClosedError,
    deferred_events,
)
from app.core.events import PayloadError, UnknownEventError, emit, on
from app.core.tracing import configure_tracing

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def events_of_this_file(declare_event):
    """Declare the events these tests emit."""
    declare_event("order.placed", "order_id")
    declare_event("order.shipped", "order_id")


@pytest.fixture
def delivered(registry):
    """The order ids each event's handler saw, in delivery order."""
    seen: list[tuple[str, int]] = []
    on("order.placed")(lambda **kwargs: seen.append(("placed", kwargs["order_id"])))
    on("order.shipped")(lambda **kwargs: seen.append(("shipped", kwargs["order_id"])))
    return seen


async def test_events_wait_for_a_clean_exit_then_arrive_in_order(delivered):
    """Inside the scope nothing is delivered; at its clean end, everything, in emit order."""
    async with deferred_events() as batch:
        await emit("order.placed", order_id=1)
        await emit("order.shipped", order_id=1)
        await emit("order.placed", order_id=2)
        assert delivered == []
        assert batch.names == ["order.placed", "order.shipped", "order.placed"]
    assert delivered == [("placed", 1), ("shipped", 1), ("placed", 2)]


async def test_emits_made_during_delivery_are_recorded_under_their_cause(registry, events_recorder):
    """A handler's emit during deferred delivery is recorded once, with the queued event as
    its parent; the queued event itself is recorded once, when it was emitted."""

    async def ship(**kwargs):
        await emit("order.shipped", order_id=kwargs["order_id"])

    on("order.placed")(ship)
    async with deferred_events():
        await emit("order.placed", order_id=1)
    assert events_recorder.names() == ["order.placed", "order.shipped"]
    placed, shipped = events_recorder.emits
    assert shipped.parent is placed
    assert placed.parent is None


async def test_checks_still_happen_at_emit(delivered):
    """A bad name or payload raises at the emit inside the scope, not at delivery."""
    async with deferred_events():
        with pytest.raises(UnknownEventError):
            await emit("order.lost", order_id=1)
        with pytest.raises(PayloadError):
            await emit("order.placed")
    assert delivered == []


async def test_a_block_that_raises_discards_its_events_with_one_debug_line(delivered, logs):
    """Nothing is delivered for a failed unit of work; one debug record says how many."""

    async def failing_unit_of_work():
        async with deferred_events():
            await emit("order.placed", order_id=1)
            await emit("order.shipped", order_id=1)
            raise RuntimeError("rollback")

    with pytest.raises(RuntimeError, match="rollback"):
        await failing_unit_of_work()
    assert delivered == []
    assert [without_ids(record) for record in logs] == [
        {
            "event": "deferred events discarded",
            "log_level": "debug",
            "count": 2,
            "event_names": ["order.placed", "order.shipped"],
            "reason": "the block raised RuntimeError",
        }
    ]


async def test_discard_drops_the_batch_without_an_exception(delivered, logs):
    """``batch.discard(reason)`` drops the queued events at a clean exit."""
    async with deferred_events() as batch:
        await emit("order.placed", order_id=1)
        batch.discard("response status 500")
    assert delivered == []
    assert logs[0]["reason"] == "response status 500"


async def test_nested_scopes_behave_like_savepoints(delivered):
    """A failed inner scope drops only its own events; a clean one hands them outwards."""

    async def failing_inner():
        async with deferred_events():
            await emit("order.placed", order_id=2)
            raise ValueError("inner")

    async with deferred_events():
        await emit("order.placed", order_id=1)
        with pytest.raises(ValueError, match="inner"):
            await failing_inner()
        async with deferred_events():
            await emit("order.shipped", order_id=3)
        assert delivered == []  # the clean inner scope waits for the outer one
    assert delivered == [("placed", 1), ("shipped", 3)]


async def test_concurrent_scopes_never_mix(delivered):
    """Each task's scope holds its own events: one failing drops only its own."""

    async def unit_of_work(order_id, fail):
        async with deferred_events():
            await emit("order.placed", order_id=order_id)
            await anyio.sleep(0.01)
            if fail:
                raise LookupError(order_id)

    async def run(order_id, fail):
        with contextlib.suppress(LookupError):
            await unit_of_work(order_id, fail)

    async with anyio.create_task_group() as group:
        for order_id in range(6):
            group.start_soon(run, order_id, order_id % 2 == 1)
    assert sorted(delivered) == [("placed", 0), ("placed", 2), ("placed", 4)]


async def test_delivery_keeps_failure_isolation(registry, logs, expect_handler_failure):
    """A failing handler during delivery is logged, and the next event is delivered."""
    seen = []

    def broken(**kwargs):
        raise ValueError("broken")

    on("order.placed")(broken)
    on("order.shipped")(lambda **kwargs: seen.append(kwargs["order_id"]))
    with expect_handler_failure("order.placed", ValueError):
        async with deferred_events():
            await emit("order.placed", order_id=1)
            await emit("order.shipped", order_id=1)
    assert seen == [1]
    assert [r["event"] for r in logs] == ["event handler failed"]


async def test_cancellation_during_delivery_names_what_was_lost(registry, logs):
    """If delivery is cancelled, one warning names the events not delivered, then it stops."""

    async def slow(**kwargs):
        await anyio.sleep(10)

    on("order.placed")(slow)
    with anyio.move_on_after(0.05) as scope:
        async with deferred_events():
            await emit("order.placed", order_id=1)
            await emit("order.shipped", order_id=2)
    assert scope.cancelled_caught
    assert [without_ids(record) for record in logs] == [
        {
            "event": "deferred events not delivered",
            "log_level": "warning",
            "event_names": ["order.placed", "order.shipped"],
            "count": 2,
        }
    ]


def without_ids(record):
    """The record without the ids naming its events, once they are checked: one UUIDv7 per
    event, and the correlation ids of their chains (root events here: their own ids)."""
    record = dict(record)
    event_ids = record.pop("event_ids")
    correlation_ids = record.pop("correlation_ids")
    assert len(event_ids) == len(set(event_ids)) == record["count"]
    assert all(UUID(event_id).version == 7 for event_id in event_ids)
    assert correlation_ids == sorted(event_ids)
    return record


async def test_background_emits_are_delivered_in_the_owners_task_group(delivered):
    """emit_soon returns at once; the delivery happens in the emitter's task group."""
    async with BackgroundEmitter() as emitter:
        emitter.emit_soon("order.placed", order_id=1)
        emitter.emit_soon("order.shipped", order_id=1)
        assert emitter.pending == ["order.placed", "order.shipped"]
    assert sorted(delivered) == [("placed", 1), ("shipped", 1)]
    assert emitter.pending == []


async def test_emit_soon_checks_at_once_and_refuses_when_closed(delivered):
    """A bad emit raises in the caller; a closed emitter refuses new work."""
    emitter = BackgroundEmitter()
    with pytest.raises(EmitterClosedError, match="not running"):
        emitter.emit_soon("order.placed", order_id=1)
    async with emitter:
        with pytest.raises(PayloadError):
            emitter.emit_soon("order.placed")
        with pytest.raises(UnknownEventError):
            emitter.emit_soon("order.lost", order_id=1)
    with pytest.raises(EmitterClosedError):
        emitter.emit_soon("order.placed", order_id=1)
    assert delivered == []


async def test_shutdown_waits_for_pending_deliveries_within_the_grace_period(registry, logs):
    """Deliveries that finish within the grace period complete; nothing is logged."""
    done = []

    async def slowish(**kwargs):
        await anyio.sleep(0.05)
        done.append(kwargs["order_id"])

    on("order.placed")(slowish)
    async with BackgroundEmitter(grace_period=5) as emitter:
        for order_id in range(3):
            emitter.emit_soon("order.placed", order_id=order_id)
    assert sorted(done) == [0, 1, 2]
    assert logs == []


async def test_shutdown_cancels_what_outlives_the_grace_period_and_says_so(registry, logs):
    """Past the grace period the rest is cancelled, with one warning naming each event."""
    done = []

    async def stuck(**kwargs):
        await anyio.sleep(10)
        done.append(1)

    on("order.shipped")(stuck)
    on("order.placed")(lambda **kwargs: done.append(kwargs["order_id"]))
    with anyio.fail_after(5):
        async with BackgroundEmitter(grace_period=0.05) as emitter:
            emitter.emit_soon("order.placed", order_id=7)
            emitter.emit_soon("order.shipped", order_id=8)
            emitter.emit_soon("order.shipped", order_id=9)
    assert done == [7]
    assert [without_ids(record) for record in logs] == [
        {
            "event": "background deliveries cancelled",
            "log_level": "warning",
            "event_names": ["order.shipped", "order.shipped"],
            "count": 2,
            "grace_period": 0.05,
        }
    ]


@pytest.fixture(params=["plain", "traced"])
def mode(request):
    """Tracing off, and on (the plugin restores the default)."""
    if request.param == "traced":
        configure_tracing(bind_context=True, slow_after=60)
    return request.param


@contextlib.contextmanager
def scope_open_in_another_thread():
    """Keep a deferral scope open in another thread for the block."""
    ready, done = threading.Event(), threading.Event()

    async def hold():
        async with deferred_events():
            ready.set()
            await anyio.to_thread.run_sync(done.wait)

    thread = threading.Thread(target=anyio.run, args=(hold,))
    thread.start()
    ready.wait(5)
    try:
        yield
    finally:
        done.set()
        thread.join(5)


async def test_an_emit_from_a_task_that_outlives_a_committed_scope_is_delivered(delivered, mode):
    """A task started in a scope that emits after the scope committed delivers at once."""
    with scope_open_in_another_thread():
        async with anyio.create_task_group() as group:
            emitted = anyio.Event()
            go = anyio.Event()

            async def late():
                await go.wait()
                await emit("order.shipped", order_id=2)
                emitted.set()

            async with deferred_events():
                group.start_soon(late)
                await emit("order.placed", order_id=1)
            assert delivered == [("placed", 1)]
            go.set()
            await emitted.wait()
    assert delivered == [("placed", 1), ("shipped", 2)]


async def test_an_emit_from_a_task_that_outlives_a_discarded_scope_raises(delivered, mode):
    """After the scope rolled back, a late emit of its task raises ScopeClosedError."""
    errors = []
    go = anyio.Event()
    async with anyio.create_task_group() as group:

        async def late():
            await go.wait()
            try:
                await emit("order.shipped", order_id=2)
            except ScopeClosedError as error:
                errors.append(str(error))

        async def rolled_back():
            async with deferred_events():
                group.start_soon(late)
                raise RuntimeError("rollback")

        with pytest.raises(RuntimeError):
            await rolled_back()
        go.set()
    assert delivered == []
    assert errors == [
        "cannot emit 'order.shipped': the deferred_events() scope it belongs to was discarded "
        "(the block raised RuntimeError), so the work it announces did not happen. Emit from "
        "inside the scope, or open a new one."
    ]


async def test_a_late_emit_goes_to_the_enclosing_scope_while_it_is_open(delivered):
    """A task of a finished inner scope emits into the outer one, still open."""
    go, emitted = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as group, deferred_events() as outer:

        async def late():
            await go.wait()
            await emit("order.shipped", order_id=2)
            emitted.set()

        async with deferred_events():
            group.start_soon(late)
            await emit("order.placed", order_id=1)
        go.set()
        await emitted.wait()
        assert outer.names == ["order.placed", "order.shipped"]
        assert delivered == []
    assert delivered == [("placed", 1), ("shipped", 2)]


async def test_emit_soon_inside_a_scope_waits_for_its_commit(delivered, mode):
    """``emit_soon`` in a unit of work is delivered in the background after the commit, and
    dropped with the scope's other events on a rollback."""
    with scope_open_in_another_thread():
        async with BackgroundEmitter() as emitter:
            async with deferred_events():
                emitter.emit_soon("order.placed", order_id=1)
                await emit("order.shipped", order_id=1)
                await emitter.join()
                assert delivered == []
            await emitter.join()
            assert sorted(delivered) == [("placed", 1), ("shipped", 1)]

            async def rolled_back():
                async with deferred_events():
                    emitter.emit_soon("order.placed", order_id=2)
                    raise RuntimeError("rollback")

            with pytest.raises(RuntimeError):
                await rolled_back()
            await emitter.join()
    assert ("placed", 2) not in delivered
