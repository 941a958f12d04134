"""Cost of one ``emit`` against a hand-written floor, side by side in one process.

The floor is the least any isolating dispatcher can do: an ``async def`` taking the payload
as ``**kwargs`` and awaiting each handler inside ``try/except Exception``. Both are timed in
many short alternating rounds (so drift hits both alike) on asyncio and trio, with 0, 1, 10
and 100 no-op async handlers; the table shows medians in ns per call and the median of the
paired ratios. Tracing is in its default (lazy) configuration there; a second table shows
tracing fully on (context binding, slow-handler timing and OpenTelemetry spans into an
in-memory exporter), which has no target: it is what turning tracing on costs.

Usage: ``python bench/bench_emit.py [--rounds N] [--check]``; ``--check`` exits 1 when a ratio
misses its target.
"""

from __future__ import annotations

import argparse
import collections
import gc
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from app.core import catalogue, events, tracing

HANDLER_COUNTS = (0, 1, 10, 100)
TARGETS = {0: 3.0, 1: 1.6, 10: 1.15, 100: 1.05}
"""Highest acceptable median ratio emit/floor, by handler count."""

EVENT = "bench.noop"
Handler = Callable[..., Awaitable[None]]


async def floor(handlers: tuple[Handler, ...], /, **kwargs: Any) -> None:
    """The floor: await each handler in order, isolating its failures."""
    for handler in handlers:
        try:
            await handler(**kwargs)
        except Exception:  # noqa: S112 - isolating failures is what is measured.
            continue


def make_handlers(count: int) -> tuple[Handler, ...]:
    """Return ``count`` distinct no-op async handlers."""

    def make() -> Handler:
        async def noop(**kwargs: Any) -> None:
            return None

        return noop

    return tuple(make() for _ in range(count))


async def time_emit(iterations: int) -> float:
    """Return ns per ``emit`` over ``iterations`` calls."""
    start = time.perf_counter_ns()
    for _ in range(iterations):
        await events.emit(EVENT, employee_id=1, department_id=2, created_by=3)
    return (time.perf_counter_ns() - start) / iterations


async def time_floor(handlers: tuple[Handler, ...], iterations: int) -> float:
    """Return ns per floor call over ``iterations`` calls."""
    start = time.perf_counter_ns()
    for _ in range(iterations):
        await floor(handlers, employee_id=1, department_id=2, created_by=3)
    return (time.perf_counter_ns() - start) / iterations


async def measure(
    count: int, rounds: int, after_round: Callable[[], object] = lambda: None
) -> tuple[float, float, float]:
    """Return median ns per emit, per floor call, and of their paired ratio; call
    ``after_round`` after each round, untimed."""
    handlers = make_handlers(count)
    events._handlers = collections.defaultdict(list)
    for handler in handlers:
        events.on(EVENT)(handler)
    iterations = max(20, 2_000 // (count + 1))
    await time_emit(iterations)  # warm-up, also fills the name cache
    await time_floor(handlers, iterations)
    emit_ns: list[float] = []
    floor_ns: list[float] = []
    for _ in range(rounds):
        emit_ns.append(await time_emit(iterations))
        floor_ns.append(await time_floor(handlers, iterations))
        after_round()
    ratios = [e / f for e, f in zip(emit_ns, floor_ns, strict=True)]
    return statistics.median(emit_ns), statistics.median(floor_ns), statistics.median(ratios)


Row = tuple[str, int, float, float, float]


def declare_event() -> None:
    """A fresh catalogue holding the event measured."""
    catalogue._declared = {}
    catalogue.declare(
        EVENT,
        source="bench",
        payload={"employee_id": int, "department_id": int, "created_by": int},
        purpose="measure dispatch",
    )


def run(backend: str, rounds: int) -> list[Row]:
    """Measure every handler count on one backend, with the catalogue's key checks on."""
    declare_event()
    rows = []
    for count in HANDLER_COUNTS:
        emit_ns, floor_ns, ratio = anyio.run(measure, count, rounds, backend=backend)
        rows.append((backend, count, emit_ns, floor_ns, ratio))
    return rows


def run_traced(backend: str, rounds: int) -> list[Row]:
    """Measure 1 and 10 handlers with tracing fully on; nothing if OpenTelemetry's SDK is
    not installed (``pip install -e '.[dev]'``)."""
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
        declare_event()
        rows = []
        for count in (1, 10):
            emit_ns, floor_ns, ratio = anyio.run(
                measure, count, max(10, rounds // 5), exporter.clear, backend=backend
            )
            rows.append((backend, count, emit_ns, floor_ns, ratio))
        return rows
    finally:
        tracing.restore_tracing(before)


def main(argv: list[str] | None = None) -> int:
    """Print the table; with ``--check``, return 1 when a ratio misses its target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="timed rounds per cell")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    saved = events._handlers, catalogue._declared
    gc.disable()  # a collection landing in one side's round would skew that pair
    try:
        rows = [row for backend in ("asyncio", "trio") for row in run(backend, args.rounds)]
        traced = [
            row for backend in ("asyncio", "trio") for row in run_traced(backend, args.rounds)
        ]
    finally:
        gc.enable()
        events._handlers, catalogue._declared = saved
    print("| backend | handlers | emit ns | floor ns | ratio | target |")
    print("|---|---:|---:|---:|---:|---:|")
    missed = 0
    for backend, count, emit_ns, floor_ns, ratio in rows:
        ok = ratio <= TARGETS[count]
        missed += not ok
        mark = "" if ok else " MISSED"
        print(
            f"| {backend} | {count} | {emit_ns:,.0f} | {floor_ns:,.0f} | "
            f"{ratio:.2f}x | {TARGETS[count]}x{mark} |"
        )
    if traced:
        print("\nTracing fully on (context binding, slow-handler timing, OpenTelemetry spans):\n")
        print("| backend | handlers | emit ns | floor ns | ratio |")
        print("|---|---:|---:|---:|---:|")
        for backend, count, emit_ns, floor_ns, ratio in traced:
            print(f"| {backend} | {count} | {emit_ns:,.0f} | {floor_ns:,.0f} | {ratio:.2f}x |")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
