"""Cost of one ``emit`` against a hand-written floor, side by side in one process.

The floor is the least any isolating dispatcher can do: an ``async def`` taking the payload
as ``**kwargs`` and calling each handler inside ``try/except Exception`` (awaiting it when it
is ``async``; logging the failure with the same logger when it raises). Both are timed in many
short alternating rounds (so drift hits both alike) on asyncio and trio; the tables show
medians in ns per call and the median of the paired ratios with its interquartile range.

Rows:

* no-op ``async`` handlers (0, 1, 10, 100) and no-op plain ``def`` handlers (1, 10, 100);
* ten handlers that raise (emit logs each failure; so does the floor);
* a handler that logs one structlog line through the service's logging set-up
  (``configure_logging()``, console lines by default, and JSON lines; into a null stream);
* the service's tracing configuration (``configure_tracing(slow_after=1.0)``) against the
  default, as ns added per one-handler emit;
* tracing fully on with OpenTelemetry spans, which has no target: it is what spans cost.

Usage: ``python bench/bench_emit.py [--rounds N] [--check]``; ``--check`` exits 1 when a row
misses its target.
"""

from __future__ import annotations

import argparse
import collections
import gc
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import structlog

from app.core import catalogue, events, tracing
from app.core.logging import configure_logging

EVENT = "bench.noop"
PAYLOAD = {"employee_id": 1, "department_id": 2, "created_by": 3}
log = structlog.get_logger("bench")


@dataclass(frozen=True)
class Row:
    """One measured row: medians in ns, and the paired ratio's median and quartiles."""

    table: str
    backend: str
    label: str
    emit_ns: float
    floor_ns: float
    ratio: float
    low: float
    high: float
    target: float | None
    added: bool = False
    """Compare ``emit_ns - floor_ns`` (ns added) with the target instead of the ratio."""

    @property
    def met(self) -> bool:
        if self.target is None:
            return True
        return (self.emit_ns - self.floor_ns if self.added else self.ratio) <= self.target


async def floor(handlers: tuple[Callable[..., Any], ...], /, **kwargs: Any) -> None:
    """The floor for ``async`` handlers: await each in order, isolating its failures."""
    for handler in handlers:
        try:
            await handler(**kwargs)
        except Exception:  # noqa: S112 - isolating failures is what is measured.
            continue


async def floor_sync(handlers: tuple[Callable[..., Any], ...], /, **kwargs: Any) -> None:
    """The floor for plain ``def`` handlers: call each in order, logging its failure."""
    for handler in handlers:
        try:
            handler(**kwargs)
        except Exception as exc:
            log.exception("event handler failed", event_name=EVENT, handler="h", exc_info=exc)


def async_noops(count: int) -> tuple[Callable[..., Any], ...]:
    def make() -> Callable[..., Any]:
        async def noop(**kwargs: Any) -> None:
            return None

        return noop

    return tuple(make() for _ in range(count))


def sync_noops(count: int) -> tuple[Callable[..., Any], ...]:
    def make() -> Callable[..., Any]:
        def noop(**kwargs: Any) -> None:
            return None

        return noop

    return tuple(make() for _ in range(count))


def failing(count: int) -> tuple[Callable[..., Any], ...]:
    def make() -> Callable[..., Any]:
        def fail(**kwargs: Any) -> None:
            raise ValueError("failed")

        return fail

    return tuple(make() for _ in range(count))


def logging_handler() -> tuple[Callable[..., Any], ...]:
    def log_one_line(**kwargs: Any) -> None:
        log.info("welcome mail queued", employee_id=kwargs["employee_id"])

    return (log_one_line,)


Timer = Callable[[int], Any]


def emit_timer() -> Timer:
    async def timed(iterations: int) -> float:
        start = time.perf_counter_ns()
        for _ in range(iterations):
            await events.emit(EVENT, **PAYLOAD)
        return (time.perf_counter_ns() - start) / iterations

    return timed


def floor_timer(dispatch: Callable[..., Any], handlers: tuple[Callable[..., Any], ...]) -> Timer:
    async def timed(iterations: int) -> float:
        start = time.perf_counter_ns()
        for _ in range(iterations):
            await dispatch(handlers, **PAYLOAD)
        return (time.perf_counter_ns() - start) / iterations

    return timed


async def alternate(
    first: Timer, second: Timer, rounds: int, iterations: int
) -> tuple[float, float, list[float]]:
    """Time ``first`` and ``second`` in alternating rounds; medians and the paired ratios."""
    await first(iterations)  # warm-up
    await second(iterations)
    first_ns: list[float] = []
    second_ns: list[float] = []
    for _ in range(rounds):
        first_ns.append(await first(iterations))
        second_ns.append(await second(iterations))
    ratios = [a / b for a, b in zip(first_ns, second_ns, strict=True)]
    return statistics.median(first_ns), statistics.median(second_ns), ratios


def register(handlers: tuple[Callable[..., Any], ...]) -> None:
    """A registry holding exactly ``handlers`` for the event measured."""
    events._handlers = collections.defaultdict(events.Entries)
    for handler in handlers:
        events.on(EVENT)(handler)


def row(
    table: str,
    backend: str,
    label: str,
    measured: tuple[float, float, list[float]],
    target: float | None,
    added: bool = False,
) -> Row:
    emit_ns, floor_ns, ratios = measured
    low, _, high = statistics.quantiles(ratios, n=4)
    return Row(
        table,
        backend,
        label,
        emit_ns,
        floor_ns,
        statistics.median(ratios),
        low,
        high,
        target,
        added,
    )


def iterations_for(count: int) -> int:
    return max(20, 2_000 // (count + 1))


async def dispatch_rows(backend: str, rounds: int) -> list[Row]:
    """Async and sync no-op handlers, and ten failing ones, against their floors."""
    rows = []
    for count, target in ((0, 2.5), (1, 2.5), (10, 1.3), (100, 1.05)):
        handlers = async_noops(count)
        register(handlers)
        measured = await alternate(
            emit_timer(), floor_timer(floor, handlers), rounds, iterations_for(count)
        )
        rows.append(row("dispatch", backend, f"{count} async", measured, target))
    for count, target in ((1, 2.5), (10, 1.5), (100, 1.5)):
        handlers = sync_noops(count)
        register(handlers)
        measured = await alternate(
            emit_timer(), floor_timer(floor_sync, handlers), rounds, iterations_for(count)
        )
        rows.append(row("dispatch", backend, f"{count} sync", measured, target))
    with quiet_logging():
        handlers = failing(10)
        register(handlers)
        measured = await alternate(
            emit_timer(), floor_timer(floor_sync, handlers), max(10, rounds // 4), 50
        )
    rows.append(row("dispatch", backend, "10 failing", measured, 1.8))
    return rows


async def realistic_rows(backend: str, rounds: int) -> list[Row]:
    """A handler logging one line, and the service's tracing configuration."""
    rows = []
    for json, target in ((True, 1.15), (False, None)):
        with quiet_logging(json=json):
            handlers = logging_handler()
            register(handlers)
            measured = await alternate(
                emit_timer(), floor_timer(floor_sync, handlers), max(10, rounds // 4), 200
            )
        renderer = "JSON, as in production" if json else "console"
        rows.append(
            row("realistic", backend, f"1 handler logging a line ({renderer})", measured, target)
        )
    handlers = async_noops(1)
    register(handlers)
    plain = emit_timer()

    async def traced(iterations: int) -> float:
        before = tracing.configure_tracing(slow_after=1.0)
        try:
            result: float = await plain(iterations)
        finally:
            tracing.restore_tracing(before)
        return result

    measured = await alternate(traced, plain, rounds, 1_000)
    rows.append(
        row("realistic", backend, "service tracing, 1 handler (ns added)", measured, 3_000, True)
    )
    return rows


async def spans_rows(backend: str, rounds: int) -> list[Row]:
    """Tracing fully on, OpenTelemetry spans into an in-memory exporter; nothing without the
    SDK (``pip install -e '.[dev]'``)."""
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )
    except ImportError:
        return []
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    before = tracing.configure_tracing(
        bind_context=True, slow_after=60, opentelemetry=True, tracer_provider=provider
    )
    try:
        handlers = async_noops(1)
        register(handlers)
        measured = await alternate(
            emit_timer(), floor_timer(floor, handlers), max(10, rounds // 10), 200
        )
        exporter.clear()
        return [row("spans", backend, "1 async, spans", measured, None)]
    finally:
        tracing.restore_tracing(before)


class _NullStream:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        return None


@contextmanager
def quiet_logging(*, json: bool = True) -> Iterator[None]:
    """The service's logging set-up (the event keys added), into a null stream."""
    saved = structlog.get_config()
    configure_logging(json=json, stream=_NullStream())  # type: ignore[arg-type]
    try:
        yield
    finally:
        structlog.configure(**saved)


def declare_event() -> None:
    """A fresh catalogue holding the event measured."""
    catalogue._declared = {}
    catalogue.declare(
        EVENT,
        source="bench",
        payload={"employee_id": int, "department_id": int, "created_by": int},
        purpose="measure dispatch",
    )


async def run(backend: str, rounds: int) -> list[Row]:
    declare_event()
    return [
        *await dispatch_rows(backend, rounds),
        *await realistic_rows(backend, rounds),
        *await spans_rows(backend, rounds),
    ]


def print_table(rows: list[Row]) -> None:
    print("| backend | handlers | emit ns | floor ns | ratio (IQR) | target |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        if r.added:
            measured = f"+{r.emit_ns - r.floor_ns:,.0f} ns"
            target = f"≤ +{r.target:,.0f} ns"
        else:
            measured = f"{r.ratio:.2f}x ({r.low:.2f} to {r.high:.2f})"
            target = "none" if r.target is None else f"{r.target}x"
        mark = "" if r.met else " MISSED"
        print(
            f"| {r.backend} | {r.label} | {r.emit_ns:,.0f} | {r.floor_ns:,.0f} | "
            f"{measured} | {target}{mark} |"
        )


def main(argv: list[str] | None = None) -> int:
    """Print the tables; with ``--check``, return 1 when a row misses its target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="timed rounds per row")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    saved = events._handlers, catalogue._declared
    gc.disable()  # a collection landing in one side's round would skew that pair
    try:
        rows = [
            r
            for backend in ("asyncio", "trio")
            for r in anyio.run(run, backend, args.rounds, backend=backend)
        ]
    finally:
        gc.enable()
        events._handlers, catalogue._declared = saved
    print(f"CPython {sys.version.split()[0]}")
    for table in ("dispatch", "realistic", "spans"):
        print()
        print_table([r for r in rows if r.table == table])
    missed = [r for r in rows if not r.met]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
