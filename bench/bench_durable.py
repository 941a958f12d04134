"""Durable delivery, measured on a real PostgreSQL (an embedded one in a temporary folder, or
``APP_DATABASE_URL``): ``python bench/bench_durable.py [--events N]``.

- emit inside a transaction with 1 and with 10 durable handlers: the latency emit adds (one
  round trip), median and p99, against the same emit with no handler;
- one worker's delivery throughput with a trivial handler (each run claims its inbox row and
  commits), at concurrency 1 and 4;
- commit-to-handler-start latency, with the worker waiting (LISTEN/NOTIFY), median and p99.

Recovery after a worker's ``kill -9`` is measured by the test suite
(``tests/test_durable.py``), which asserts it stays under 25 s.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text

from app import db, durable
from app.core import catalogue, events
from app.core.events import emit, on

EVENT = "bench.happened"


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def register(count: int, handler: Callable[..., Awaitable[None]] | None = None) -> None:
    """A registry with ``count`` durable handlers of the benchmark's event."""
    events._handlers = collections.defaultdict(events.Entries)
    for index in range(count):

        async def trivial(**_: Any) -> None:
            return None

        on(EVENT, durable=True, id=f"bench.handler_{index}")(handler or trivial)


async def emit_latency(handlers: int, rounds: int) -> list[float]:
    """Seconds each emit takes inside an open unit of work."""
    register(handlers)
    took = []
    for index in range(rounds):
        async with db.unit_of_work() as session:
            await session.execute(text("SELECT 1"))  # as a service's business write would
            started = time.perf_counter()
            await emit(EVENT, n=index)
            took.append(time.perf_counter() - started)
    return took


async def clear() -> None:
    async with db.transaction() as session:
        await session.execute(text("TRUNCATE procrastinate_jobs, durable_inbox CASCADE"))


async def throughput(app: Any, jobs: int, concurrency: int) -> float:
    """Jobs per second one worker delivers from a full queue."""
    await clear()
    register(1)
    for index in range(0, jobs, 100):
        async with db.unit_of_work():
            for n in range(index, min(index + 100, jobs)):
                await emit(EVENT, n=n)
    started = time.perf_counter()
    await durable.work(app, concurrency=concurrency, wait=False)
    return jobs / (time.perf_counter() - started)


async def commit_to_start(app: Any, count: int) -> list[float]:
    """Seconds from a commit to the start of its durable handler, with a worker waiting."""
    await clear()
    started: dict[int, float] = {}

    async def record(*, n: int, **_: Any) -> None:
        started[n] = time.perf_counter()

    register(1, record)
    committed: dict[int, float] = {}
    worker = asyncio.create_task(durable.work(app))
    try:
        await asyncio.sleep(1.0)  # the worker is up and listening
        for n in range(count):
            async with db.unit_of_work():
                await emit(EVENT, n=n)
            committed[n] = time.perf_counter()
            await asyncio.sleep(0.01)
        deadline = time.monotonic() + 30
        while len(started) < count and time.monotonic() < deadline:  # noqa: ASYNC110 - polls
            await asyncio.sleep(0.05)
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    return [started[n] - committed[n] for n in started]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


async def main(events_count: int) -> None:
    catalogue.declare(EVENT, source="bench", payload={"n": int}, purpose="a benchmark event")
    folder = None if db.database_url() else Path(tempfile.mkdtemp(prefix="bench-durable-"))
    server = None
    if folder is not None:
        from app.db import embedded

        server = embedded.start(folder / ".app-postgres")
    try:
        await db.open_database(server.url if server else None)
        async with durable.running() as app:
            base = await emit_latency(0, 200)
            one = await emit_latency(1, 200)
            ten = await emit_latency(10, 200)
            await clear()
            rates = {c: await throughput(app, events_count, c) for c in (1, 4)}
            latency = await commit_to_start(app, 200)
        await db.close_database()
    finally:
        if server is not None:
            server.release()
        if folder is not None:
            shutil.rmtree(folder)
    print(f"CPython {platform.python_version()} on {platform.machine()}, {platform.system()}")
    print()
    print("| measure | median | p99 | target |")
    print("|---|---:|---:|---:|")
    floor = statistics.median(base)
    for label, took, target in [("1 durable handler", one, 1.0), ("10 durable handlers", ten, 1.0)]:
        added = [t - floor for t in took]
        print(
            f"| emit in a transaction, {label} (ms added) | {ms(statistics.median(added))} "
            f"| {ms(quantile(added, 0.99))} | ≤ {target} ms median |"
        )
    print(
        f"| commit to handler start (ms) | {ms(statistics.median(latency))} "
        f"| {ms(quantile(latency, 0.99))} | ≤ 50 ms p99 |"
    )
    for concurrency, rate in rates.items():
        print(
            f"| one worker, concurrency {concurrency}, trivial handler (events/s) | {rate:,.0f} "
            "| | ≥ 400 |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000, help="jobs for the throughput runs")
    asyncio.run(main(parser.parse_args().events))
