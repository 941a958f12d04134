"""Failure isolation: a handler's Exception is logged once and the next handler runs."""

from __future__ import annotations

import functools
import io
import uuid

import pytest
import structlog

from app.core.events import emit, on

# These tests look at the failure records themselves, so the plugin's strict mode stays off.
pytestmark = [pytest.mark.anyio, pytest.mark.events_lenient]


@pytest.fixture(autouse=True)
def events_of_this_file(declare_event):
    """Declare the events these tests emit."""
    declare_event("employee.created", optional=("employee_id", "ssn"))


def label(function):
    return f"{function.__module__}.{function.__qualname__}"


async def test_a_failing_handler_is_logged_once_and_the_next_runs(registry, logs):
    """The failure is one error record with the event, its ids, the handler and the exception;
    no payload."""
    error = ValueError("boom")
    ran = []

    async def failing(**kwargs):
        raise error

    async def after(**kwargs):
        ran.append(kwargs)

    on("employee.created")(failing)
    on("employee.created")(after)
    await emit("employee.created", employee_id=1, ssn="078-05-1120")

    assert ran == [{"employee_id": 1, "ssn": "078-05-1120"}]
    (record,) = logs
    event_id = record["event_id"]
    assert uuid.UUID(event_id).version == 7
    assert record == {
        "event": "event handler failed",
        "log_level": "error",
        "event_name": "employee.created",
        "event_id": event_id,
        "correlation_id": event_id,  # a root emit with no caller id starts its own chain
        "handler": label(failing),
        "exc_info": error,
    }


async def test_each_failure_names_its_own_handler_wherever_it_runs(registry, logs):
    """Among five async handlers, the second and the fourth fail: each record names its own
    handler, and ``current_event().handler`` inside every one names it too."""
    from app.core.events import current_event

    seen = []

    def make(index, fails):
        async def handler(**kwargs):
            seen.append(current_event().handler)
            if fails:
                raise ValueError(index)

        handler.__qualname__ = f"handler_{index}"
        return handler

    handlers = [make(index, index in (1, 3)) for index in range(5)]
    for handler in handlers:
        on("employee.created")(handler)
    await emit("employee.created", employee_id=1)

    assert seen == [label(handler) for handler in handlers]
    assert [record["handler"] for record in logs] == [label(handlers[1]), label(handlers[3])]


@pytest.mark.parametrize(
    "error",
    [
        ExceptionGroup("several", [ValueError("a"), KeyError("b")]),
        RuntimeError("plain"),
        TimeoutError("its own timeout"),
    ],
    ids=["exception-group", "runtime-error", "timeout-error"],
)
async def test_any_exception_is_isolated(registry, logs, error):
    """Exception subclasses, an ExceptionGroup included, never escape emit."""
    ran = []

    def failing(**kwargs):
        raise error

    on("employee.created")(failing)
    on("employee.created")(lambda **kwargs: ran.append(1))
    await emit("employee.created")
    assert ran == [1]
    assert [record["exc_info"] for record in logs] == [error]


async def test_a_missing_keyword_argument_is_a_logged_failure(registry, logs):
    """A handler requiring a field the emitter did not send fails alone, logged."""
    ran = []

    async def needs_department(*, department_id, **kwargs):
        ran.append(department_id)

    on("employee.created")(needs_department)
    on("employee.created")(lambda **kwargs: ran.append("next"))
    await emit("employee.created", employee_id=1)
    assert ran == ["next"]
    (record,) = logs
    assert isinstance(record["exc_info"], TypeError)
    assert "department_id" in str(record["exc_info"])
    assert record["handler"] == label(needs_department)


async def test_sync_and_adapted_handlers_are_labelled_by_their_own_name(registry, logs):
    """Sync handlers, partials, bound methods and callable objects get readable labels."""

    def sync_failing(**kwargs):
        raise ValueError

    async def with_arg(prefix, **kwargs):
        raise ValueError(prefix)

    class Handler:
        async def method(self, **kwargs):
            raise ValueError

        async def __call__(self, **kwargs):
            raise ValueError

    instance = Handler()
    on("employee.created")(sync_failing)
    on("employee.created")(functools.partial(with_arg, "p"))
    on("employee.created")(instance.method)
    on("employee.created")(instance)
    await emit("employee.created")
    assert [record["handler"] for record in logs] == [
        label(sync_failing),
        f"functools.partial({label(with_arg)})",
        label(Handler.method),
        label(Handler),
    ]


async def test_a_hostile_handler_does_not_break_dispatch(registry, logs):
    """No ``__qualname__``, a raising repr and a raising exception str are all survived."""

    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no str")

    class Hostile:
        def __getattribute__(self, name):
            if name in ("__qualname__", "__module__"):
                raise RuntimeError("no names")
            return object.__getattribute__(self, name)

        def __repr__(self):
            raise RuntimeError("no repr")

        async def __call__(self, **kwargs):
            raise Unprintable

    ran = []
    on("employee.created")(Hostile())
    on("employee.created")(lambda **kwargs: ran.append(1))
    await emit("employee.created")
    assert ran == [1]
    (record,) = logs
    assert record["handler"] == f"<{Hostile.__qualname__} object>"
    assert isinstance(record["exc_info"], Unprintable)


async def test_a_failure_renders_with_a_real_logger(registry, restore_structlog):
    """Through a configured renderer the record shows the handler and the traceback."""
    from app.core.logging import configure_logging

    stream = io.StringIO()
    configure_logging(stream=stream)

    async def failing(**kwargs):
        raise ValueError("rendered")

    on("employee.created")(failing)
    await emit("employee.created", employee_id=1)
    output = stream.getvalue()
    assert "event handler failed" in output
    assert f"handler={label(failing)}" in output
    assert "event_name=employee.created" in output
    assert "ValueError: rendered" in output
    assert "employee_id" not in output


async def test_a_failing_log_processor_does_not_break_dispatch(registry, restore_structlog, capsys):
    """When logging the failure fails too, both reach stderr and dispatch goes on."""

    def broken_processor(logger, method_name, event_dict):
        raise OSError("log sink is down")

    structlog.configure(processors=[broken_processor])
    ran = []

    async def failing(**kwargs):
        raise ValueError("original")

    on("employee.created")(failing)
    on("employee.created")(lambda **kwargs: ran.append(1))
    await emit("employee.created")
    assert ran == [1]
    err = capsys.readouterr().err
    assert (
        "event handler failed (event_name=employee.created, "
        f"handler={label(failing)}) and logging it failed too"
    ) in err
    assert "ValueError: original" in err
    assert "OSError: log sink is down" in err


async def test_failures_carry_the_emitters_structlog_context(registry, restore_structlog):
    """Values the caller bound with structlog's contextvars appear in the failure record."""
    from structlog.contextvars import bound_contextvars, merge_contextvars
    from structlog.testing import LogCapture

    capture = LogCapture()
    structlog.configure(processors=[merge_contextvars, capture])

    async def failing(**kwargs):
        raise ValueError

    on("employee.created")(failing)
    with bound_contextvars(request_id="req-7"):
        await emit("employee.created")
    (record,) = capture.entries
    assert record["request_id"] == "req-7"
    assert record["event_name"] == "employee.created"
