"""OpenTelemetry spans for traced emits: one per emit, a child per handler, errors recorded."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from app.core.events import current_event, emit, on
from app.core.tracing import configure_tracing

pytestmark = pytest.mark.anyio


@pytest.fixture
def exporter(declare_event):
    """Tracing on with spans kept in memory (the plugin turns tracing off afterwards)."""
    declare_event("order.placed")
    declare_event("invoice.created")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    configure_tracing(opentelemetry=True, tracer_provider=provider)
    return exporter


@pytest.mark.events_lenient
async def test_spans_form_the_tree_of_the_chain(registry, exporter):
    """emit → handle → nested emit → handle, linked by parent and by the event ids; a failing
    handler's span has error status and the exception, and the next handler still gets one."""
    ids = {}

    @on("order.placed")
    async def place(**kwargs):
        ids["order"] = current_event().event_id
        await emit("invoice.created")

    @on("invoice.created")
    async def failing(**kwargs):
        ids["invoice"] = current_event().event_id
        raise ValueError("no printer")

    @on("invoice.created")
    async def after(**kwargs):
        pass

    await emit("order.placed")
    spans = {
        (s.name, s.attributes.get("event.handler", "")): s for s in exporter.get_finished_spans()
    }
    assert len(spans) == 5
    emit_order = spans["emit order.placed", ""]
    handle_place = spans["handle order.placed", f"{__name__}.{place.__qualname__}"]
    emit_invoice = spans["emit invoice.created", ""]
    handle_failing = spans["handle invoice.created", f"{__name__}.{failing.__qualname__}"]
    handle_after = spans["handle invoice.created", f"{__name__}.{after.__qualname__}"]

    assert emit_order.parent is None
    assert handle_place.parent.span_id == emit_order.context.span_id
    assert emit_invoice.parent.span_id == handle_place.context.span_id
    assert handle_failing.parent.span_id == emit_invoice.context.span_id
    assert handle_after.parent.span_id == emit_invoice.context.span_id
    assert {s.context.trace_id for s in spans.values()} == {emit_order.context.trace_id}

    assert dict(emit_order.attributes) == {
        "event.name": "order.placed",
        "event.id": ids["order"],
        "event.correlation_id": ids["order"],
        "event.depth": 1,
    }
    assert dict(emit_invoice.attributes) == {
        "event.name": "invoice.created",
        "event.id": ids["invoice"],
        "event.causation_id": ids["order"],
        "event.correlation_id": ids["order"],
        "event.depth": 2,
    }
    assert handle_failing.status.status_code is StatusCode.ERROR
    (exception,) = handle_failing.events
    assert exception.name == "exception"
    assert exception.attributes["exception.type"] == "ValueError"
    assert handle_after.status.status_code is StatusCode.UNSET
    assert handle_place.status.status_code is StatusCode.UNSET
