"""Load the reference service over loopback and check that no delivery is lost or doubled.

Starts ``python -m app serve`` in a subprocess on a free loopback port, over an embedded
PostgreSQL in a temporary folder (or the server ``--database-url`` names), sends ``--creates``
creates and as many status changes (``onboarding`` to ``active``) at ``--concurrency``, then
waits for the handlers and counts, per employee, the welcome mails and audit rows: each must be
exactly one. Prints p50 and p99 latency, requests per second and the missing and duplicated
rows; exits 1 if any is missing or duplicated, or a request failed. It stops by itself (every
wait is bounded) and stops the server with SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx


def free_port() -> int:
    """A loopback TCP port free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(
    folder: str,
    port: int,
    database_url: str | None,
    *,
    serve: Sequence[str] = (sys.executable, "-m", "app"),
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``python -m app --json serve --port PORT`` in ``folder`` (``serve``: another command
    taking the same arguments), on ``database_url`` or else the folder's embedded server, with
    ``env`` added to the environment; its output is discarded."""
    environment = {key: value for key, value in os.environ.items() if key != "APP_DATABASE_URL"}
    if database_url:
        environment["APP_DATABASE_URL"] = database_url
    environment.update(env or {})
    command = [*serve, "--json", "serve", "--port", str(port)]
    return subprocess.Popen(  # noqa: S603 - this project's own entry point
        command,
        cwd=folder,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_server(server: subprocess.Popen[bytes]) -> None:
    """Stop the server with SIGINT, killing it if it has not exited within 60 s."""
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


async def wait_until_up(client: httpx.AsyncClient, server: subprocess.Popen[bytes]) -> None:
    """Wait until ``server`` answers ``client`` (exit if it dies or takes over 60 s)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("the server exited early")
        try:
            await client.get("/audit")
            return
        except httpx.TransportError:
            await asyncio.sleep(0.1)
    raise SystemExit("the server did not come up within 60 s")


async def phase(
    count: int, concurrency: int, request: Callable[[int], Awaitable[httpx.Response]]
) -> tuple[list[float], list[httpx.Response | None], float]:
    """Run ``request(i)`` for i in range(count), ``concurrency`` at a time."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    responses: list[httpx.Response | None] = []

    async def one(index: int) -> None:
        async with gate:
            started = time.perf_counter()
            try:
                response: httpx.Response | None = await request(index)
            except httpx.TransportError:
                response = None  # counted as failed
            latencies.append(time.perf_counter() - started)
            responses.append(response)

    started = time.perf_counter()
    await asyncio.gather(*(one(index) for index in range(count)))
    return latencies, responses, time.perf_counter() - started


def _row(name: str, latencies: list[float], seconds: float, failed: int) -> str:
    cuts = statistics.quantiles(latencies, n=100)
    return (
        f"| {name} | {len(latencies):,} | {failed} | {cuts[49] * 1000:,.1f} | "
        f"{cuts[98] * 1000:,.1f} | {len(latencies) / seconds:,.0f} |"
    )


def miscount(rows: list[dict[str, Any]], expected: set[int]) -> tuple[int, int]:
    """(missing, duplicated) rows of ``expected`` employees, one row each expected."""
    counts = collections.Counter(row["employee_id"] for row in rows)
    missing = len(expected - set(counts))
    duplicated = sum(n - 1 for n in counts.values() if n > 1) + len(set(counts) - expected)
    return missing, duplicated


async def _run(
    base: str, creates: int, concurrency: int, server: subprocess.Popen[bytes], database: str
) -> int:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        await wait_until_up(client, server)

        async def create(index: int) -> httpx.Response:
            body = {"name": f"Load {index}", "department_id": 1 + index % 7, "created_by": 1}
            return await client.post("/employees", json=body)

        made, created, made_in = await phase(creates, concurrency, create)
        ids = sorted(r.json()["id"] for r in created if r is not None and r.status_code == 201)

        async def activate(index: int) -> httpx.Response:
            body = {"to_state": "active", "actor_id": 1}
            return await client.post(f"/employees/{ids[index]}/status", json=body)

        moved_latencies, moved, moved_in = await phase(len(ids), concurrency, activate)
        deadline = time.monotonic() + 60
        while True:
            mails = (await client.get("/outbox")).json()
            audit = (await client.get("/audit")).json()
            if (len(mails) >= len(ids) and len(audit) >= len(ids)) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    failed_creates = sum(r is None or r.status_code != 201 for r in created)
    failed_moves = sum(r is None or r.status_code != 200 for r in moved)
    mails_missing, mails_doubled = miscount(mails, set(ids))
    audit_missing, audit_doubled = miscount(audit, set(ids))
    python = platform.python_version()
    print(f"concurrency {concurrency}, loopback, {database}, CPython {python}")
    print("| requests | count | failed | p50 ms | p99 ms | requests/s |")
    print("|---|---:|---:|---:|---:|---:|")
    print(_row("POST /employees", made, made_in, failed_creates))
    print(_row("POST /employees/{id}/status", moved_latencies, moved_in, failed_moves))
    print()
    print("| rows | expected | missing | duplicated |")
    print("|---|---:|---:|---:|")
    print(f"| welcome mails | {len(ids):,} | {mails_missing} | {mails_doubled} |")
    print(f"| audit rows | {len(ids):,} | {audit_missing} | {audit_doubled} |")
    bad = failed_creates + failed_moves + mails_missing + mails_doubled
    return 1 if bad + audit_missing + audit_doubled else 0


def main() -> int:
    """Parse the options, run the load against a fresh server, and return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=1000, help="creates, and status changes")
    parser.add_argument("--concurrency", type=int, default=200, help="requests in flight")
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server's URL, whose database must be empty (default: an embedded "
        "one in a temporary folder)",
    )
    args = parser.parse_args()
    port = free_port()
    database = "the PostgreSQL server given" if args.database_url else "embedded PostgreSQL"
    with tempfile.TemporaryDirectory(prefix="bench-service-") as folder:
        server = start_server(folder, port, args.database_url)
        try:
            base = f"http://127.0.0.1:{port}"
            return asyncio.run(_run(base, args.creates, args.concurrency, server, database))
        finally:
            stop_server(server)


if __name__ == "__main__":
    sys.exit(main())
