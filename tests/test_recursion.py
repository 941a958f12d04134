"""Re-entrancy: nested emits run depth-first and are bounded per task."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from app.core.events import MAX_DEPTH, EventRecursionError, emit, on

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def events_of_this_file(declare_event):
    """Declare the events these tests emit."""
    declare_event("employee.created")
    declare_event("employee.status_changed")
    declare_event("ping.sent")
    declare_event("pong.sent")
    declare_event("loop.ran", optional=("level", "task"))
    declare_event("nobody.listens")
    declare_event("chain.step", "level", "chain")
    declare_event("fan.out")


async def test_nested_emits_run_depth_first(registry):
    """A handler's emit delivers completely before the outer emit's next handler."""
    trace = []

    async def outer_first(**kwargs):
        trace.append("outer:first")
        await emit("employee.status_changed")
        trace.append("outer:first:end")

    on("employee.created")(outer_first)
    on("employee.created")(lambda **kwargs: trace.append("outer:second"))
    on("employee.status_changed")(lambda **kwargs: trace.append("inner"))
    await emit("employee.created")
    assert trace == ["outer:first", "inner", "outer:first:end", "outer:second"]


@pytest.mark.events_expect_failure("pong.sent", EventRecursionError)
async def test_ping_pong_recursion_ends_with_one_record(registry, logs):
    """``a -> b -> a -> ...`` stops at MAX_DEPTH with one EventRecursionError record."""
    calls = []

    async def ping(**kwargs):
        calls.append("ping")
        await emit("pong.sent")

    async def pong(**kwargs):
        calls.append("pong")
        await emit("ping.sent")

    on("ping.sent")(ping)
    on("pong.sent")(pong)
    await emit("ping.sent")

    assert len(calls) == MAX_DEPTH == 16
    (record,) = logs
    error = record["exc_info"]
    assert isinstance(error, EventRecursionError)
    assert isinstance(error, RecursionError)
    assert error.depth == MAX_DEPTH + 1
    assert error.event_name == "ping.sent"
    assert str(error).startswith(
        "emit('ping.sent') would be 17 events deep in its causal chain, past the limit of 16"
    )
    assert record["event_name"] == "pong.sent"  # the enclosing emit, whose handler failed
    assert record["handler"] == f"{pong.__module__}.{pong.__qualname__}"


@pytest.mark.events_expect_failure("loop.ran", EventRecursionError)
async def test_the_depth_resets_after_each_emit(registry, logs):
    """Nesting ends with the emit: a second recursion is bounded the same way."""
    calls = []

    async def again(**kwargs):
        calls.append(1)
        await emit("loop.ran")

    on("loop.ran")(again)
    await emit("loop.ran")
    await emit("loop.ran")
    assert len(calls) == 2 * MAX_DEPTH
    assert len(logs) == 2


@pytest.mark.events_expect_failure("loop.ran", EventRecursionError)
async def test_an_emit_without_handlers_past_the_limit_also_raises(registry, logs):
    """The bound holds for a nested emit of a name that has no handlers."""
    levels = []

    async def deeper(**kwargs):
        levels.append(kwargs["level"])
        if kwargs["level"] < MAX_DEPTH:
            await emit("loop.ran", level=kwargs["level"] + 1)
        else:
            await emit("nobody.listens")

    on("loop.ran")(deeper)
    await emit("loop.ran", level=1)
    assert levels == list(range(1, MAX_DEPTH + 1))
    (record,) = logs
    assert record["exc_info"].event_name == "nobody.listens"


async def test_a_nested_emit_at_the_limit_is_allowed(registry, logs):
    """Exactly MAX_DEPTH nested emits run without an error."""
    levels = []

    async def deeper(**kwargs):
        levels.append(kwargs["level"])
        if kwargs["level"] < MAX_DEPTH:
            await emit("loop.ran", level=kwargs["level"] + 1)

    on("loop.ran")(deeper)
    await emit("loop.ran", level=1)
    assert levels == list(range(1, MAX_DEPTH + 1))
    assert logs == []


async def test_concurrent_emits_in_other_tasks_never_trip_the_limit(registry, logs):
    """Many tasks nesting at once, spawned from inside a handler, each count on their own."""
    chains = 24
    depth_per_chain = MAX_DEPTH - 1  # leaves room for the spawning handler's own emit
    reached = []

    async def chain(**kwargs):
        # Let every other chain advance, so that all of them are in flight together.
        await anyio.lowlevel.checkpoint()
        if kwargs["level"] < depth_per_chain:
            await emit("chain.step", level=kwargs["level"] + 1, chain=kwargs["chain"])
        else:
            reached.append(kwargs["chain"])

    async def fan_out(**kwargs):
        async with anyio.create_task_group() as group:
            for index in range(chains):
                group.start_soon(emit_chain, index)

    async def emit_chain(index):
        await emit("chain.step", level=1, chain=index)

    on("chain.step")(chain)
    on("fan.out")(fan_out)
    await emit("fan.out")
    assert sorted(reached) == list(range(chains))
    assert logs == []


async def test_nesting_is_counted_again_in_each_task(registry, logs):
    """Tasks that inherit an idle nesting record from their parent still count on their own."""
    reached = []

    async def deeper(**kwargs):
        await anyio.lowlevel.checkpoint()
        if kwargs["level"] < MAX_DEPTH:
            await emit("loop.ran", level=kwargs["level"] + 1, task=kwargs["task"])
        else:
            reached.append(kwargs["task"])

    on("loop.ran")(deeper)
    await emit("loop.ran", level=MAX_DEPTH, task=-1)  # the parent's context now holds a record
    async with anyio.create_task_group() as group:
        for index in range(4):
            group.start_soon(lambda i=index: emit("loop.ran", level=1, task=i))
    assert sorted(reached) == [-1, 0, 1, 2, 3]
    assert logs == []
