"""Cancellation and BaseExceptions propagate; per-handler timeouts are isolated failures."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from app.core.events import HandlerTimeoutError, emit, on

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def events_of_this_file(declare_event):
    """Declare the events these tests emit."""
    declare_event("employee.created", optional=("employee_id",))


async def test_outer_cancellation_propagates_and_stops_later_handlers(registry, logs):
    """A cancel scope around emit cancels the running handler; nothing after it runs."""
    trace = []

    async def slow(**kwargs):
        trace.append("slow")
        await anyio.sleep(10)
        trace.append("slow:after")

    on("employee.created")(slow)
    on("employee.created")(lambda **kwargs: trace.append("later"))
    with anyio.move_on_after(0.05) as scope:
        await emit("employee.created")
    assert scope.cancelled_caught
    assert trace == ["slow"]
    assert logs == []


async def test_fail_after_around_emit_gives_the_caller_timeout_error(registry, logs):
    """``anyio.fail_after`` around emit raises TimeoutError to the caller."""

    async def slow(**kwargs):
        await anyio.sleep(10)

    on("employee.created")(slow)
    with pytest.raises(TimeoutError), anyio.fail_after(0.05):
        await emit("employee.created")
    assert logs == []


async def test_cancelling_a_task_group_cancels_emit(registry, logs):
    """Cancelling the task group that runs emit ends it without a failure record."""
    started = anyio.Event()
    trace = []

    async def slow(**kwargs):
        started.set()
        await anyio.sleep(10)

    on("employee.created")(slow)
    on("employee.created")(lambda **kwargs: trace.append("later"))
    async with anyio.create_task_group() as group:
        group.start_soon(emit, "employee.created")
        await started.wait()
        group.cancel_scope.cancel()
    assert trace == []
    assert logs == []


@pytest.mark.parametrize(
    "error",
    [KeyboardInterrupt, SystemExit, GeneratorExit],
)
async def test_base_exceptions_propagate_at_once(registry, logs, error):
    """A BaseException that is not an Exception leaves emit; later handlers do not run."""
    trace = []

    def raising(**kwargs):
        raise error

    on("employee.created")(raising)
    on("employee.created")(lambda **kwargs: trace.append("later"))
    with pytest.raises(error):
        await emit("employee.created")
    assert trace == []
    assert logs == []


async def test_a_base_exception_group_propagates(registry, logs):
    """A BaseExceptionGroup (holding a KeyboardInterrupt) is not swallowed."""
    group = BaseExceptionGroup("stop", [KeyboardInterrupt()])

    async def raising(**kwargs):
        raise group

    on("employee.created")(raising)
    with pytest.raises(BaseExceptionGroup) as caught:
        await emit("employee.created")
    assert caught.value is group
    assert logs == []


@pytest.mark.events_expect_failure("employee.created", HandlerTimeoutError)
async def test_a_handler_over_its_timeout_is_cancelled_and_logged(registry, logs):
    """``timeout=`` cancels that handler, logs "timed out" with the limit, and goes on."""
    trace = []

    async def slow(**kwargs):
        trace.append("slow")
        await anyio.sleep(10)
        trace.append("slow:after")

    on("employee.created", timeout=0.05)(slow)
    on("employee.created")(lambda **kwargs: trace.append("next"))
    with anyio.fail_after(5):
        await emit("employee.created")
    assert trace == ["slow", "next"]
    (record,) = logs
    error = record["exc_info"]
    assert isinstance(error, HandlerTimeoutError)
    assert isinstance(error, TimeoutError)
    assert str(error) == f"handler {slow.__module__}.{slow.__qualname__} timed out after 0.05 s"
    assert error.timeout == 0.05
    assert error.event_name == "employee.created"
    assert error.handler is slow
    assert record["event"] == "event handler failed"
    assert record["handler"] == f"{slow.__module__}.{slow.__qualname__}"


async def test_a_handler_within_its_timeout_is_not_disturbed(registry, logs):
    """A handler that finishes in time runs to the end and logs nothing."""
    trace = []

    async def quick(**kwargs):
        await anyio.lowlevel.checkpoint()
        trace.append(kwargs)

    on("employee.created", timeout=5)(quick)
    await emit("employee.created", employee_id=1)
    assert trace == [{"employee_id": 1}]
    assert logs == []


async def test_outer_cancellation_wins_over_a_handler_timeout(registry, logs):
    """Cancellation from outside still propagates through a handler with a timeout."""
    trace = []

    async def slow(**kwargs):
        await anyio.sleep(10)

    on("employee.created", timeout=5)(slow)
    on("employee.created")(lambda **kwargs: trace.append("later"))
    with anyio.move_on_after(0.05) as scope:
        await emit("employee.created")
    assert scope.cancelled_caught
    assert trace == []
    assert logs == []
