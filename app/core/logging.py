"""Logging set-up for entry points, and the processor that names a handler's event in every
line it logs; library modules only call ``structlog.get_logger``."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

from app.core import _context

__all__ = ["add_event_context", "configure_logging"]


def add_event_context(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: for a line logged by work done for an event (a handler, and the
    tasks, threads and greenlets it starts), add ``event_name``, ``event_id``,
    ``causation_id`` (when set), ``correlation_id`` and ``handler``, unless the line already
    has them. Add it to your own chain after ``merge_contextvars``::

        structlog.configure(processors=[..., merge_contextvars, add_event_context, ...])

    Outside any event it costs one context variable read; it never raises.
    """
    event = _context.current.get()
    if event is None:
        return event_dict
    keys = event.line_keys()
    if keys.keys().isdisjoint(event_dict):
        event_dict.update(keys)
    else:
        for key, value in keys.items():
            event_dict.setdefault(key, value)
    return event_dict


def configure_logging(
    *, json: bool = False, level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    """Configure structlog for the process: console lines, or one JSON object per line.

    Only entry points call this. Standard-library logging (uvicorn's, say) is routed to the
    same output in the same format. Context variables bound with
    ``structlog.contextvars.bind_contextvars`` appear in every line, and so do the keys of
    the event a line was logged for (``add_event_context``); exceptions are rendered
    as a traceback (console) or a structured list of frames (JSON).

    Args:
        json: Render JSON lines instead of console lines.
        level: The lowest level that is written.
        stream: Where lines go; standard output by default.
    """
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_event_context,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: list[structlog.typing.Processor]
    if json:
        # Frames without their locals: a traceback must not leak an event's payload.
        renderer = [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            structlog.processors.JSONRenderer(),
        ]
    else:
        renderer = [
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            )
        ]
    output = stream or sys.stdout
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(output),
        cache_logger_on_first_use=False,
    )
    # Libraries that log through the standard library (uvicorn) get the same lines.
    handler = logging.StreamHandler(output)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
