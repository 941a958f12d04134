"""The service's requests per second with durable handlers, against the same routes with
durable delivery muted: ``python bench/bench_durable_service.py [--rounds R] [--creates N]
[--concurrency C] [--worker-off]``.

Starts ``python -m app serve`` twice on free loopback ports, each in a temporary folder with
its own embedded PostgreSQL (``bench_service``'s helpers): as shipped (the durable handlers'
jobs enqueued in each request's transaction and run by the embedded worker), and muted (the
same server, the durable transport's enqueue replaced by one that writes nothing, from this
script: the service has no such option). Then, in ``--rounds`` alternating rounds, each gets
``--creates`` creates and as many status changes at ``--concurrency``, each round in another
order; a round's rate is its requests over its time, which for the durable server lasts until
its worker has written every welcome mail and audit row (its worker's work is the service's,
and must not spill into the next server's round). Prints the median rate of each, and the
median of the per-round ratios (durable over muted) with its lowest and highest; target
ratio ≥ 0.8.
``--worker-off`` adds a third server, ``APP_WORKER=off`` with no worker anywhere (the web
process's own share, as with workers on other hosts). Exits 1 if a request failed, or if at
the end a welcome mail or audit row is missing or doubled (durable) or written at all (muted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import psycopg
from bench_service import free_port, miscount, phase, start_server, stop_server, wait_until_up
from sqlalchemy.engine import make_url

TARGET = 0.8
_COUNTS = "SELECT (SELECT count(*) FROM notify_outbox), (SELECT count(*) FROM audit_trail)"


def serve_muted(arguments: Sequence[str]) -> int:
    """``python -m app`` with ``arguments``, its durable transport writing no job."""
    from app.cli import main
    from app.durable import queue

    async def enqueue_nothing(self: object, jobs: object) -> None:
        return None

    queue.ProcrastinateTransport.enqueue = enqueue_nothing  # type: ignore[method-assign]
    return main(list(arguments))


class Server:
    """One variant of the service, running, and what it was sent."""

    def __init__(self, name: str, folder: str, *, delivers: bool, **options: Any) -> None:
        self.name = name
        self.delivers = delivers
        self.folder = folder
        self.port = free_port()
        self.process = start_server(folder, self.port, None, **options)
        self.client = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.port}",
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=1000),
            timeout=60,
        )
        self.rates: list[float] = []
        self.failed = 0
        self.ids: set[int] = set()

    async def round(self, creates: int, concurrency: int) -> None:
        """``creates`` creates, then a status change of each: their rate is kept."""
        made: list[int] = []

        async def create(index: int) -> httpx.Response:
            body = {"name": f"Load {index}", "department_id": 1 + index % 7, "created_by": 1}
            response = await self.client.post("/employees", json=body)
            if response.status_code == 201:
                made.append(response.json()["id"])
            return response

        async def activate(index: int) -> httpx.Response:
            body = {"to_state": "active", "actor_id": 1}
            return await self.client.post(f"/employees/{made[index]}/status", json=body)

        started = time.perf_counter()
        _, created, _ = await phase(creates, concurrency, create)
        _, moved, _ = await phase(len(made), concurrency, activate)
        self.failed += sum(r is None or r.status_code != 201 for r in created)
        self.failed += sum(r is None or r.status_code != 200 for r in moved)
        self.ids.update(made)
        if self.delivers:  # its worker's share counts: wait until it has caught up
            await self.caught_up(len(self.ids))
        self.rates.append((len(created) + len(moved)) / (time.perf_counter() - started))

    async def caught_up(self, expected: int) -> None:
        """Return once the worker has written ``expected`` welcome mails and audit rows (or
        after 60 s), counted in the server's database: asking the service for its whole
        outbox and audit trail every few milliseconds would load the server being timed."""
        url = json.loads((Path(self.folder) / ".app-postgres" / "state.json").read_text())["url"]
        libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        deadline = time.monotonic() + 60
        async with await psycopg.AsyncConnection.connect(libpq, autocommit=True) as connection:
            while time.monotonic() < deadline:
                cursor = await connection.execute(_COUNTS)
                if min(await cursor.fetchone() or (0, 0)) >= expected:
                    return
                await asyncio.sleep(0.02)

    async def rows(self, path: str, expected: int) -> list[dict[str, Any]]:
        """The rows at ``path`` once there are ``expected`` (or after 60 s)."""
        deadline = time.monotonic() + 60
        while True:
            rows: list[dict[str, Any]] = (await self.client.get(path)).json()
            if len(rows) >= expected or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.05)


async def run(servers: list[Server], rounds: int, creates: int, concurrency: int) -> int:
    for server in servers:
        await wait_until_up(server.client, server.process)
        await server.round(max(1, creates // 10), concurrency)  # warm up: pools, caches
        server.rates.clear()
    for index in range(rounds):  # each round in another order: none always follows another
        for server in servers[index % len(servers) :] + servers[: index % len(servers)]:
            await server.round(creates, concurrency)
    problems = []
    for server in servers:
        for path in ("/outbox", "/audit"):
            rows = await server.rows(path, len(server.ids) if server.delivers else 0)
            if server.delivers:
                missing, doubled = miscount(rows, server.ids)
                if missing or doubled:
                    problems.append(f"{server.name} {path}: {missing} missing, {doubled} doubled")
            elif rows:
                problems.append(f"{server.name} {path}: {len(rows)} rows, none expected")
        if server.failed:
            problems.append(f"{server.name}: {server.failed} requests failed")
        await server.client.aclose()
    report(servers, rounds, creates, concurrency)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


def report(servers: list[Server], rounds: int, creates: int, concurrency: int) -> None:
    print(
        f"CPython {platform.python_version()}, loopback, embedded PostgreSQL each; {rounds} "
        f"alternating rounds of {creates} creates and {creates} status changes at concurrency "
        f"{concurrency}; load average at the end {os.getloadavg()[0]:.2f}"
    )
    print()
    print("| service | requests/s (median, lowest to highest) | against muted (median, range) |")
    print("|---|---:|---:|")
    muted = next(server for server in servers if server.name == "muted")
    for server in servers:
        ratios = [rate / base for rate, base in zip(server.rates, muted.rates, strict=True)]
        against = (
            "1"
            if server is muted
            else f"{statistics.median(ratios):.2f} ({min(ratios):.2f} to {max(ratios):.2f}); "
            f"target ≥ {TARGET}"
        )
        print(
            f"| {server.name} | {statistics.median(server.rates):,.0f} "
            f"({min(server.rates):,.0f} to {max(server.rates):,.0f}) | {against} |"
        )


def main() -> int:
    """Parse the options, start the servers, load them in turn, and return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    parser.add_argument("--creates", type=int, default=300, help="creates per round")
    parser.add_argument("--concurrency", type=int, default=50, help="requests in flight")
    parser.add_argument(
        "--worker-off",
        action="store_true",
        help="also load a server with APP_WORKER=off and no worker (jobs wait)",
    )
    args = parser.parse_args()
    muted_serve = (sys.executable, str(Path(__file__).resolve()), "--serve-muted")
    variants: list[tuple[str, dict[str, Any]]] = [
        ("durable", {"delivers": True}),
        ("muted", {"delivers": False, "serve": muted_serve}),
    ]
    if args.worker_off:
        variants.append(("worker off", {"delivers": False, "env": {"APP_WORKER": "off"}}))
    with ExitStack() as stack:
        servers = []
        for name, options in variants:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-durable-svc-"))
            server = Server(name, folder, **options)
            stack.callback(stop_server, server.process)
            servers.append(server)
        return asyncio.run(run(servers, args.rounds, args.creates, args.concurrency))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-muted"]:
        sys.exit(serve_muted(sys.argv[2:]))
    sys.exit(main())
