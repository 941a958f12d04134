"""OpenTelemetry spans for traced emits; imported only when ``configure_tracing`` asks for it.

One span per emit (``emit <name>``) and a child span per handler (``handle <name>``), each
with the event's ids as attributes. A nested emit's span is a child of the handler span that
made it, through OpenTelemetry's own context, which tasks started by a handler inherit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

if TYPE_CHECKING:
    from app.core._context import Event

__all__ = ["Spans"]


class Spans:
    """Starts the spans of traced emits on one tracer."""

    def __init__(self, provider: Any = None) -> None:
        self.tracer = trace.get_tracer("app.core.events", tracer_provider=provider)

    @contextlib.contextmanager
    def emit(self, event: Event) -> Iterator[None]:
        """The span of one emit, current for the block."""
        attributes: dict[str, str | int] = {
            "event.name": event.name,
            "event.id": event.event_id,
            "event.correlation_id": event.correlation_id,
            "event.depth": event.depth,
        }
        if event.causation_id is not None:
            attributes["event.causation_id"] = event.causation_id
        with self.tracer.start_as_current_span(
            f"emit {event.name}",
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ):
            yield

    @contextlib.contextmanager
    def handler(self, event: Event, label: str) -> Iterator[trace.Span]:
        """The span of one handler's run, current for the block; ``failed`` marks it."""
        with self.tracer.start_as_current_span(
            f"handle {event.name}",
            attributes={"event.id": event.event_id, "event.handler": label},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span

    @staticmethod
    def failed(span: trace.Span, error: BaseException) -> None:
        """Record ``error`` on ``span`` and set its status to error."""
        span.record_exception(error)
        span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}"))
