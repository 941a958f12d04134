"""Dispatch: ``emit`` awaits handlers one by one, in order, over a snapshot."""

from __future__ import annotations

import anyio
import pytest

from app.core.events import emit, handlers, off, on

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def events_of_this_file(declare_event):
    """Declare the events these tests emit."""
    declare_event(
        "employee.created",
        optional=("employee_id", "items", "name", "event", "handler"),
    )


async def test_handlers_run_in_registration_order_one_at_a_time(registry):
    """Each handler is awaited to the end before the next one starts."""
    trace = []

    async def first(**kwargs):
        trace.append("first:start")
        await anyio.sleep(0.02)
        trace.append("first:end")

    def second(**kwargs):
        trace.append("second")

    async def third(**kwargs):
        trace.append("third:start")
        await anyio.sleep(0.01)
        trace.append("third:end")

    for handler in (first, second, third):
        on("employee.created")(handler)
    await emit("employee.created")
    assert trace == ["first:start", "first:end", "second", "third:start", "third:end"]


async def test_a_registration_during_emit_applies_to_the_next_emit(registry):
    """A handler that registers or removes handlers changes the next emit, not this one."""
    trace = []

    async def late(**kwargs):
        trace.append("late")

    async def removed(**kwargs):
        trace.append("removed")

    async def mutate(**kwargs):
        trace.append("mutate")
        if trace.count("mutate") == 1:
            on("employee.created")(late)
            off("employee.created", removed)

    on("employee.created")(mutate)
    on("employee.created")(removed)
    await emit("employee.created")
    assert trace == ["mutate", "removed"]
    await emit("employee.created")
    assert trace == ["mutate", "removed", "mutate", "late"]
    assert handlers("employee.created") == (mutate, late)


async def test_each_handler_gets_its_own_kwargs_mapping_of_the_same_objects(registry):
    """A handler that mutates its kwargs does not affect the next; values are not copied."""
    payload = {"items": [1, 2]}
    seen = []

    async def mutating(**kwargs):
        seen.append(kwargs["items"])
        kwargs["items"] = "replaced"
        kwargs["extra"] = True

    async def reading(**kwargs):
        seen.append(kwargs["items"])
        assert "extra" not in kwargs

    on("employee.created")(mutating)
    on("employee.created")(reading)
    await emit("employee.created", **payload)
    assert seen[0] is payload["items"]
    assert seen[1] is payload["items"]
    assert payload == {"items": [1, 2]}


async def test_payload_keys_named_like_parameters_reach_handlers(registry):
    """``name``, ``event`` and ``handler`` are ordinary payload keys."""
    received = []

    async def handler(**kwargs):
        received.append(kwargs)

    on("employee.created")(handler)
    await emit("employee.created", name="Ada", event="hired", handler="hr")
    assert received == [{"name": "Ada", "event": "hired", "handler": "hr"}]


async def test_positional_payload_is_a_type_error_before_any_handler_runs(registry):
    """``emit(name, value)`` raises TypeError and runs nothing."""
    calls = []
    on("employee.created")(lambda **kwargs: calls.append(1))
    with pytest.raises(TypeError):
        await emit("employee.created", 1)  # type: ignore[call-arg]
    assert calls == []


async def test_emit_without_handlers_is_a_silent_no_op(registry, logs):
    """A valid name nobody handles does nothing, logs nothing, and adds no entry."""
    await emit("employee.created", employee_id=1)
    assert logs == []
    assert dict(registry) == {}


async def test_handlers_see_the_emitters_context_variables(registry):
    """Context variables set by the emitter are visible inside handlers."""
    import contextvars

    request_id = contextvars.ContextVar("request_id", default=None)
    seen = []

    async def handler(**kwargs):
        seen.append(request_id.get())

    on("employee.created")(handler)
    request_id.set("req-42")
    await emit("employee.created")
    assert seen == ["req-42"]
