"""Durable delivery, measured on a real PostgreSQL (an embedded one in a temporary folder, or
``APP_DATABASE_URL``): ``python bench/bench_durable.py [--events N] [--rounds R]``; the cases
alternate in ``--rounds`` rounds, so that a busy moment of a shared machine hits them all.

- emit inside a transaction with 1 and with 10 durable handlers: the latency emit adds (one
  round trip), median and p99, against the same emit with no handler;
- one worker's delivery throughput with a trivial handler (each run claims its inbox row and
  commits), at concurrency 1, 4 and 8, on the app a worker gets (``durable.worker_app``);
- commit-to-handler-start latency, from just before the COMMIT is sent, with the worker
  waiting (LISTEN/NOTIFY), median and p99.

Recovery after a worker's ``kill -9`` is measured by the test suite
(``tests/test_durable.py``), which asserts it stays under 25 s.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
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
    """Seconds from a commit (just before it is sent, so its own fsync counts) to the start of
    its durable handler, with a worker waiting."""
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
                # Before the COMMIT is sent: the worker shares this event loop, and may start
                # the handler before this coroutine resumes after the commit.
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


async def main(events_count: int, rounds: int) -> None:
    catalogue.declare(EVENT, source="bench", payload={"n": int}, purpose="a benchmark event")
    folder = None if db.database_url() else Path(tempfile.mkdtemp(prefix="bench-durable-"))
    server = None
    if folder is not None:
        from app.db import embedded

        server = embedded.start(folder / ".app-postgres")
    emits: dict[int, list[float]] = {0: [], 1: [], 10: []}
    rates: dict[int, list[float]] = {1: [], 4: [], 8: []}
    try:
        await db.open_database(server.url if server else None)
        async with durable.running(), durable.worker_app(concurrency=8) as worker:
            for _ in range(rounds):  # alternating, so that a busy moment hits every case
                for handlers, took in emits.items():
                    took += await emit_latency(handlers, 40)
                for concurrency, rate in rates.items():
                    rate.append(await throughput(worker, events_count, concurrency))
            latency = await commit_to_start(worker, 200)
        await db.close_database()
    finally:
        if server is not None:
            server.release()
        if folder is not None:
            shutil.rmtree(folder)
    print(f"CPython {platform.python_version()} on {platform.machine()}, {platform.system()}")
    print(f"{rounds} alternating rounds; load average at the end {os.getloadavg()[0]:.2f}")
    print()
    print("| measure | median | p99 | target |")
    print("|---|---:|---:|---:|")
    floor = statistics.median(emits[0])
    for handlers in (1, 10):
        added = [t - floor for t in emits[handlers]]
        label = f"{handlers} durable handler{'s' if handlers > 1 else ''}"
        print(
            f"| emit in a transaction, {label} (ms added) | {ms(statistics.median(added))} "
            f"| {ms(quantile(added, 0.99))} | ≤ 1.0 ms median |"
        )
    print(
        f"| commit to handler start (ms) | {ms(statistics.median(latency))} "
        f"| {ms(quantile(latency, 0.99))} | ≤ 50 ms p99 |"
    )
    for concurrency, rate in rates.items():
        print(
            f"| one worker, concurrency {concurrency}, trivial handler (events/s) "
            f"| {statistics.median(rate):,.0f} ({min(rate):,.0f} to {max(rate):,.0f}) | | ≥ 400 |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000, help="jobs per throughput run")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.events, arguments.rounds))
