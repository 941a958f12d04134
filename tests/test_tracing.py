"""Traceable events: ids, causation chains, current_event() and handler context in log lines."""

from __future__ import annotations

import datetime
import subprocess
import sys
import time
import uuid

import anyio
import anyio.lowlevel
import pytest
import structlog

from app.core import _context, tracing
from app.core.deferred import BackgroundEmitter
from app.core.events import (
    EventContext,
    InvalidHandlerError,
    InvalidOptionError,
    current_event,
    emit,
    on,
)
from app.core.logging import add_event_context
from app.core.tracing import configure_tracing, correlate

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def events_of_this_file(declare_event):
    """Declare the chain of events these tests emit."""
    for name in ("order.placed", "invoice.created", "mail.queued"):
        declare_event(name, optional=("n",))


@pytest.fixture(params=["lazy", "traced"])
def mode(request):
    """Run a test in the lazy default and with tracing on (the plugin restores the default)."""
    if request.param == "traced":
        configure_tracing(bind_context=True)
    return request.param


def label(function):
    return f"{function.__module__}.{function.__qualname__}"


async def test_current_event_is_none_outside_handlers(registry, mode):
    """Outside any handler there is no current event; a task a handler starts carries it."""
    seen = []

    async def child():
        seen.append(current_event())

    @on("order.placed")
    async def handler(**kwargs):
        async with anyio.create_task_group() as group:
            group.start_soon(child)

    assert current_event() is None
    await emit("order.placed")
    assert [(event.name, event.handler) for event in seen] == [("order.placed", label(handler))]
    assert current_event() is None


async def test_current_event_describes_the_running_handler(registry, mode):
    """Inside a handler: the name, a UUIDv7 id, a root's ids and depth, the handler, the time."""
    seen: list[EventContext | None] = []
    before = datetime.datetime.now(datetime.UTC)

    @on("order.placed")
    async def first(**kwargs):
        seen.append(current_event())
        seen.append(current_event())

    @on("order.placed")
    def second(**kwargs):
        seen.append(current_event())

    await emit("order.placed", n=1)
    after = datetime.datetime.now(datetime.UTC)
    one, again, other = seen
    assert one is not None
    assert again is not None
    assert other is not None
    assert one == again
    assert uuid.UUID(one.event_id).version == 7
    assert (one.name, one.causation_id, one.correlation_id, one.depth) == (
        "order.placed",
        None,
        one.event_id,
        1,
    )
    assert one.handler == label(first)
    assert other.handler == label(second)
    assert other.event_id == one.event_id
    assert before <= one.occurred_at <= after
    assert one.occurred_at.tzinfo is datetime.UTC
    with pytest.raises(AttributeError):
        one.name = "changed"  # type: ignore[misc]


async def test_each_emit_has_its_own_id(registry, mode):
    """Two emits of one name, one after the other, never share an id."""
    ids = []

    @on("order.placed")
    async def handler(**kwargs):
        event = current_event()
        assert event is not None
        ids.append(event.event_id)

    for n in range(3):
        await emit("order.placed", n=n)
    assert len(set(ids)) == 3
    milliseconds = [event_id[:13] for event_id in ids]  # UUIDv7 starts with Unix ms
    assert milliseconds == sorted(milliseconds)


async def test_a_chain_of_nested_emits_links_causes(registry, mode):
    """Each nested emit is caused by the event whose handler made it; all share the root's
    correlation id; depth counts the chain."""
    seen: dict[str, EventContext] = {}

    @on("order.placed")
    async def place(**kwargs):
        await emit("invoice.created")
        seen["order.placed"] = current_event()  # after the nested emit: still the order

    @on("invoice.created")
    async def invoice(**kwargs):
        seen["invoice.created"] = current_event()
        await emit("mail.queued")

    @on("mail.queued")
    async def mail(**kwargs):
        seen["mail.queued"] = current_event()

    await emit("order.placed")
    order, invoice_, mail_ = seen["order.placed"], seen["invoice.created"], seen["mail.queued"]
    assert order.causation_id is None
    assert invoice_.causation_id == order.event_id
    assert mail_.causation_id == invoice_.event_id
    assert {order.correlation_id, invoice_.correlation_id, mail_.correlation_id} == {order.event_id}
    assert [order.depth, invoice_.depth, mail_.depth] == [1, 2, 3]
    assert order.handler == label(place)


async def test_a_bound_request_id_becomes_the_correlation_id(registry, mode):
    """A request id bound in structlog's context vars is the chain's correlation id;
    ``correlate()`` takes precedence over it."""
    seen = []

    @on("order.placed")
    async def handler(**kwargs):
        seen.append(current_event().correlation_id)
        await emit("invoice.created")

    @on("invoice.created")
    async def nested(**kwargs):
        seen.append(current_event().correlation_id)

    with structlog.contextvars.bound_contextvars(request_id="req-1"):
        await emit("order.placed")
        with correlate("explicit-7"):
            await emit("order.placed")
    assert seen == ["req-1", "req-1", "explicit-7", "explicit-7"]


async def test_concurrent_chains_never_mix(registry, mode):
    """Chains interleaved on one event loop keep their own ids at every step."""
    records = []

    @on("order.placed")
    async def place(**kwargs):
        await anyio.sleep(0.01 * kwargs["n"])
        await emit("invoice.created", n=kwargs["n"])
        records.append((kwargs["n"], current_event()))

    @on("invoice.created")
    async def invoice(**kwargs):
        await anyio.lowlevel.checkpoint()
        records.append((kwargs["n"], current_event()))

    async def chain(n):
        with correlate(f"chain-{n}"):
            await emit("order.placed", n=n)

    async with anyio.create_task_group() as group:
        for n in (3, 1, 2, 0):
            group.start_soon(chain, n)

    by_chain: dict[int, list[EventContext]] = {}
    for n, event in records:
        by_chain.setdefault(n, []).append(event)
    assert sorted(by_chain) == [0, 1, 2, 3]
    for n, (invoice_, order) in by_chain.items():
        assert (order.name, invoice_.name) == ("order.placed", "invoice.created")
        assert order.correlation_id == invoice_.correlation_id == f"chain-{n}"
        assert invoice_.causation_id == order.event_id
    assert len({event.event_id for _, event in records}) == 8


async def test_a_task_started_by_a_handler_carries_the_chain(registry, mode):
    """A task a handler starts emits under the handler's event, traced or not."""
    seen = {}

    @on("order.placed")
    async def place(**kwargs):
        seen["order"] = current_event()
        async with anyio.create_task_group() as group:
            group.start_soon(emit, "invoice.created")

    @on("invoice.created")
    async def invoice(**kwargs):
        seen["invoice"] = current_event()

    with structlog.contextvars.bound_contextvars(request_id="req-5"):
        await emit("order.placed")
    order, invoice_ = seen["order"], seen["invoice"]
    assert invoice_.correlation_id == order.correlation_id == "req-5"
    assert (invoice_.causation_id, invoice_.depth) == (order.event_id, 2)


async def test_background_emits_keep_the_cause_of_the_handler_that_made_them(registry, mode):
    """``emit_soon`` from a handler delivers later, in another task, under the handler's event."""
    seen = {}

    async with BackgroundEmitter() as emitter:

        @on("order.placed")
        async def place(**kwargs):
            seen["order"] = current_event()
            emitter.emit_soon("invoice.created")

        @on("invoice.created")
        async def invoice(**kwargs):
            seen["invoice"] = current_event()

        await emit("order.placed")
        await emitter.join()
    assert seen["invoice"].causation_id == seen["order"].event_id
    assert seen["invoice"].correlation_id == seen["order"].correlation_id


def capturing_structlog(*processors):
    """Configure structlog to keep every line, after ``processors``, in the returned list."""
    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[*processors, capture])
    return capture.entries


async def test_a_handlers_lines_carry_the_event_keys(registry, restore_structlog, mode):
    """Every line a handler logs names the event, the chain and the handler (through context
    vars when traced, through ``add_event_context`` otherwise); lines outside do not."""
    lines = capturing_structlog(structlog.contextvars.merge_contextvars, add_event_context)
    log = structlog.get_logger()

    @on("order.placed")
    async def place(**kwargs):
        log.info("placing")
        await emit("invoice.created")

    @on("invoice.created")
    async def invoice(**kwargs):
        log.info("invoicing")

    log.info("before")
    await emit("order.placed")
    log.info("after")
    before, placing, invoicing, after = lines
    assert set(before) == set(after) == {"event", "log_level"}
    order_id = placing["event_id"]
    assert placing == {
        "event": "placing",
        "log_level": "info",
        "event_name": "order.placed",
        "event_id": order_id,
        "correlation_id": order_id,
        "handler": label(place),
    }
    assert invoicing == {
        "event": "invoicing",
        "log_level": "info",
        "event_name": "invoice.created",
        "event_id": invoicing["event_id"],
        "causation_id": order_id,
        "correlation_id": order_id,
        "handler": label(invoice),
    }


@pytest.mark.parametrize("plain_second", [False, True], ids=["all async", "one plain"])
async def test_each_of_several_handlers_lines_names_that_handler(
    registry, restore_structlog, plain_second
):
    """With several handlers (all async, or one a plain def), each line and each
    ``current_event()`` names the handler running then, and after the emit the last one."""
    lines = capturing_structlog(structlog.contextvars.merge_contextvars, add_event_context)
    log = structlog.get_logger()
    seen = []

    async def first(**kwargs):
        log.info("one")
        log.info("two")

    def second_plain(**kwargs):
        log.info("three")

    async def second_async(**kwargs):
        log.info("three")

    second = second_plain if plain_second else second_async
    events_seen = []

    async def third(**kwargs):
        seen.append(current_event().handler)
        events_seen.append(_context.current.get())
        log.info("four")

    for handler in (first, second, third):
        on("order.placed")(handler)
    await emit("order.placed")
    assert [(line["event"], line["handler"]) for line in lines] == [
        ("one", label(first)),
        ("two", label(first)),
        ("three", label(second)),
        ("four", label(third)),
    ]
    assert seen == [label(third)]
    assert events_seen[0].handler_label == label(third)


async def test_traced_handlers_are_bound_in_structlogs_context_vars(registry):
    """With ``bind_context`` the keys are in ``get_contextvars()`` while the handler runs."""
    configure_tracing(bind_context=True)
    seen = []

    @on("order.placed")
    async def handler(**kwargs):
        seen.append(structlog.contextvars.get_contextvars())

    await emit("order.placed")
    (bound,) = seen
    assert set(bound) == {"event_name", "event_id", "correlation_id", "handler"}
    assert bound["handler"] == label(handler)


@pytest.mark.events_lenient
@pytest.mark.parametrize("outcome", ["returns", "fails", "is cancelled"])
async def test_the_callers_bindings_are_restored_exactly(registry, outcome):
    """After a handler, structlog's bindings are the caller's again, whatever the handler
    bound, rebound or unbound, and however it ended."""
    configure_tracing(bind_context=True)
    structlog.contextvars.clear_contextvars()

    @on("order.placed")
    async def handler(**kwargs):
        structlog.contextvars.bind_contextvars(request_id="handler's", mail_id=7)
        structlog.contextvars.unbind_contextvars("user")
        if outcome == "fails":
            raise ValueError("boom")
        if outcome == "is cancelled":
            await anyio.sleep(10)

    structlog.contextvars.bind_contextvars(request_id="caller's", user="ada", handler="mine")
    try:
        with anyio.move_on_after(0.05):
            await emit("order.placed")
        assert structlog.contextvars.get_contextvars() == {
            "request_id": "caller's",
            "user": "ada",
            "handler": "mine",
        }
    finally:
        structlog.contextvars.clear_contextvars()


@pytest.mark.events_lenient
async def test_the_failure_record_carries_the_chain(registry, logs, mode):
    """The registry's failure record names the event, its cause, the chain and the handler."""
    parent = []

    @on("order.placed")
    async def place(**kwargs):
        parent.append(current_event())
        await emit("invoice.created")

    @on("invoice.created")
    async def failing(**kwargs):
        raise ValueError("boom")

    with structlog.contextvars.bound_contextvars(request_id="req-9"):
        await emit("order.placed")
    (record,) = [r for r in logs if r["event"] == "event handler failed"]
    (order,) = parent
    assert record["event_name"] == "invoice.created"
    assert record["causation_id"] == order.event_id
    assert record["correlation_id"] == "req-9"
    assert record["handler"] == label(failing)
    assert uuid.UUID(record["event_id"]).version == 7


async def test_a_slow_handler_is_logged_once(registry, logs):
    """Past the global threshold a handler is logged once with its duration; a fast one is
    not; ``@on(slow_after=0)`` opts a handler out."""
    configure_tracing(slow_after=0.02)

    @on("order.placed")
    async def slow(**kwargs):
        await anyio.sleep(0.05)

    @on("order.placed")
    async def fast(**kwargs):
        pass

    @on("order.placed", slow_after=0)
    async def exempt(**kwargs):
        await anyio.sleep(0.05)

    await emit("order.placed")
    (record,) = logs
    assert record["event"] == "event handler slow"
    assert record["log_level"] == "warning"
    assert record["handler"] == label(slow)
    assert record["event_name"] == "order.placed"
    assert record["slow_after"] == 0.02
    assert record["duration"] >= 0.05
    assert uuid.UUID(record["event_id"]).version == 7


async def test_a_handlers_own_threshold_works_without_tracing(registry, logs):
    """``@on(slow_after=...)`` warns in the lazy default too, and overrides the global one."""

    @on("order.placed", slow_after=0.01)
    def slow(**kwargs):
        time.sleep(0.03)  # a sync handler that blocks, on purpose

    await emit("order.placed")
    configure_tracing(slow_after=60)
    await emit("order.placed")
    assert [(r["event"], r["handler"], r["slow_after"]) for r in logs] == [
        ("event handler slow", label(slow), 0.01),
        ("event handler slow", label(slow), 0.01),
    ]
    assert all(r["duration"] >= 0.03 for r in logs)


@pytest.mark.parametrize("bad", [-1, "1", float("nan"), True])
def test_bad_slow_thresholds_are_refused(registry, bad):
    """A threshold that is not a number of seconds >= 0 is refused with a clear error."""
    with pytest.raises(InvalidOptionError, match="slow_after must be a number of seconds"):
        configure_tracing(slow_after=bad)
    with pytest.raises(InvalidOptionError, match="slow_after must be a number of seconds"):
        on("order.placed", slow_after=bad)


def test_bad_correlation_ids_and_keys_are_refused():
    """``correlate`` needs a non-empty str; ``correlation_keys`` a tuple of them."""
    with (
        pytest.raises(InvalidOptionError, match="correlation_id must be a non-empty str"),
        correlate(""),
    ):
        pass
    with pytest.raises(InvalidOptionError, match="correlation_keys must be a tuple"):
        configure_tracing(correlation_keys="request_id")  # type: ignore[arg-type]


def test_settings_are_restored_by_the_plugin_and_by_restore_tracing():
    """``configure_tracing`` returns what it replaced; ``restore_tracing`` puts it back."""
    assert tracing.tracing_settings() == tracing.TracingSettings()
    before = configure_tracing(bind_context=True, slow_after=1.5)
    assert tracing.tracing_settings().traced
    tracing.restore_tracing(before)
    assert tracing.tracing_settings() == tracing.TracingSettings()
    assert not tracing.tracing_settings().traced


def test_tracing_off_imports_no_opentelemetry():
    """In the default configuration the core imports nothing of OpenTelemetry. (The service
    cannot promise this: FastAPI imports OpenTelemetry itself whenever it is installed.)"""
    code = (
        "import sys, anyio, app.core.logging, app.core.deferred, app.testing.pytest_plugin\n"
        "from app.core import catalogue, events\n"
        "catalogue.declare('a.b', source='t', payload={}, purpose='p')\n"
        "events.on('a.b')(lambda **kw: events.current_event())\n"
        "anyio.run(events.emit, 'a.b')\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_opentelemetry_without_the_extra_is_a_clear_error(monkeypatch):
    """Asking for spans without the OpenTelemetry API installed names the extra to install."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "app.core._otel", raising=False)
    with pytest.raises(InvalidOptionError, match=r"pip install 'app\[otel\]'"):
        configure_tracing(opentelemetry=True)
    assert not tracing.tracing_settings().opentelemetry


def test_registering_again_with_another_threshold_is_refused(registry):
    """The same handler with another ``slow_after`` is an error naming both options."""

    async def handler(**kwargs):
        pass

    on("order.placed", slow_after=1)(handler)
    on("order.placed", slow_after=1)(handler)  # the same options: a no-op
    with pytest.raises(
        InvalidHandlerError, match=r"slow_after=1\.0; off\(\) it first .*slow_after=2\.0"
    ):
        on("order.placed", slow_after=2)(handler)
