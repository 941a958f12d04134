"""The durable-handlers acceptance run: real processes killed with -9, nothing lost or doubled.

``python bench/crash_run.py [--employees N] [--concurrency C]`` runs two scenarios, each in a
fresh empty folder as a new user would (the embedded PostgreSQL lives there), over loopback:

1. ``serve`` (with its embedded worker): N creates, then N status changes; the server is
   killed with -9 right after the last response and started again.
2. ``serve`` with ``APP_WORKER=off`` and two ``python -m app worker`` processes, one of them
   killed with -9 and restarted three times during the load; the server is killed with -9
   right after the last response and started again.

Each then waits (at most 90 s) until every welcome mail and audit row is there, and counts
them per employee: exactly one each. It prints a table and exits 1 on anything missing or
doubled, or on a failed request. Every wait is bounded and it stops what it started.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DELIVERY_WAIT = 90.0
"""Seconds the run waits for every row after the restart (a killed worker's jobs are
re-queued after about 15 s)."""


@dataclass
class Outcome:
    """What one scenario counted."""

    scenario: str
    employees: set[int]
    failed_requests: int
    mails: collections.Counter[int]
    audit: collections.Counter[int]
    delivered_in: float

    def miscount(self, counts: collections.Counter[int]) -> tuple[int, int]:
        """(missing, duplicated) rows, one per employee expected."""
        expected = self.employees
        missing = len(expected - set(counts))
        duplicated = sum(n - 1 for n in counts.values() if n > 1) + len(set(counts) - expected)
        return missing, duplicated

    @property
    def good(self) -> bool:
        lost = self.miscount(self.mails) + self.miscount(self.audit)
        return self.failed_requests == 0 and not any(lost)


class Processes:
    """The service's processes in one folder, started and killed on demand."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.port = port
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, *arguments: str, worker: bool = True) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k not in ("APP_DATABASE_URL", "APP_WORKER")}
        if not worker:
            env["APP_WORKER"] = "off"
        log = (self.folder / f"process-{len(self.started)}.log").open("wb")
        process = subprocess.Popen(  # noqa: S603 - this project's own entry point
            [sys.executable, "-m", "app", "--json", *arguments],
            cwd=self.folder,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.started.append(process)
        return process

    def serve(self, *, worker: bool = True) -> subprocess.Popen[bytes]:
        return self.start("serve", "--port", str(self.port), worker=worker)

    @staticmethod
    def kill(process: subprocess.Popen[bytes]) -> None:
        process.kill()
        process.wait(timeout=30)

    def stop_all(self) -> None:
        """SIGINT (the server) or SIGTERM (workers) to every live process, then -9 after 30 s."""
        for process in self.started:
            if process.poll() is None:
                process.send_signal(
                    signal.SIGINT if "serve" in str(process.args) else signal.SIGTERM
                )
        deadline = time.monotonic() + 30
        for process in self.started:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(process)


@contextlib.contextmanager
def fresh_folder(scenario: str) -> Iterator[Processes]:
    with tempfile.TemporaryDirectory(prefix=f"crash-run-{scenario}-") as name:
        processes = Processes(Path(name), free_port())
        try:
            yield processes
        finally:
            processes.stop_all()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def until_up(client: httpx.AsyncClient, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited early ({server.returncode})")
        with contextlib.suppress(httpx.TransportError):
            await client.get("/audit")
            return
        await asyncio.sleep(0.1)
    raise SystemExit("the server did not come up within 60 s")


@dataclass
class Progress:
    """Requests answered so far, and how many of them failed."""

    done: int = 0
    failed: int = 0


async def load(
    client: httpx.AsyncClient, employees: int, concurrency: int, progress: Progress
) -> set[int]:
    """``employees`` creates, then a status change of each employee created; the ids of the
    employees created. ``progress`` counts the requests as they are answered."""
    gate = asyncio.Semaphore(concurrency)

    async def send(path: str, body: dict[str, Any], wanted: int) -> Any:
        async with gate:
            try:
                response = await client.post(path, json=body)
            except httpx.TransportError:
                response = None
            progress.done += 1
            if response is None or response.status_code != wanted:
                progress.failed += 1
                return None
            return response.json()

    created = await asyncio.gather(
        *(
            send("/employees", {"name": f"Crash {i}", "department_id": 1, "created_by": 1}, 201)
            for i in range(employees)
        )
    )
    ids = [row["id"] for row in created if row is not None]
    await asyncio.gather(
        *(send(f"/employees/{i}/status", {"to_state": "active", "actor_id": 1}, 200) for i in ids)
    )
    return set(ids)


async def delivered(
    client: httpx.AsyncClient, employees: int
) -> tuple[collections.Counter[int], collections.Counter[int], float]:
    """Wait until every mail and audit row is there (at most ``DELIVERY_WAIT``), then wait a
    little more so a doubled delivery would show; return the counts per employee."""
    started = time.monotonic()
    while True:
        mails = collections.Counter(
            row["employee_id"] for row in (await client.get("/outbox")).json()
        )
        audit = collections.Counter(
            row["employee_id"] for row in (await client.get("/audit")).json()
        )
        complete = len(mails) >= employees and len(audit) >= employees
        if complete or time.monotonic() - started > DELIVERY_WAIT:
            took = time.monotonic() - started
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(3)
    mails = collections.Counter(row["employee_id"] for row in (await client.get("/outbox")).json())
    audit = collections.Counter(row["employee_id"] for row in (await client.get("/audit")).json())
    return mails, audit, took


async def with_embedded_worker(employees: int, concurrency: int) -> Outcome:
    with fresh_folder("serve") as processes:
        base = f"http://127.0.0.1:{processes.port}"
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            server = processes.serve()
            await until_up(client, server)
            progress = Progress()
            ids = await load(client, employees, concurrency, progress)
            processes.kill(server)
            server = processes.serve()
            await until_up(client, server)
            mails, audit, took = await delivered(client, len(ids))
    scenario = "serve, killed -9 after the last response"
    return Outcome(scenario, ids, progress.failed, mails, audit, took)


async def with_two_workers(employees: int, concurrency: int) -> Outcome:
    with fresh_folder("workers") as processes:
        base = f"http://127.0.0.1:{processes.port}"
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            server = processes.serve(worker=False)
            await until_up(client, server)
            steady = processes.start("worker")
            victim = processes.start("worker")
            progress = Progress()
            running = asyncio.create_task(load(client, employees, concurrency, progress))
            kills_at = [2 * employees * share // 4 for share in (1, 2, 3)]
            while kills_at and not running.done():
                await asyncio.sleep(0.02)
                if progress.done >= kills_at[0]:
                    kills_at.pop(0)
                    processes.kill(victim)
                    victim = processes.start("worker")
            ids = await running
            if kills_at:
                raise SystemExit(f"the load ended before {len(kills_at)} of the worker kills")
            processes.kill(server)
            server = processes.serve(worker=False)
            await until_up(client, server)
            mails, audit, took = await delivered(client, len(ids))
            if steady.poll() is not None or victim.poll() is not None:
                raise SystemExit("a worker exited by itself during the run")
    return Outcome(
        "APP_WORKER=off, two workers, one killed -9 three times; serve killed -9 after the last "
        "response",
        ids,
        progress.failed,
        mails,
        audit,
        took,
    )


def main() -> int:
    """Parse the options, run both scenarios, print the table and return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--employees", type=int, default=200, help="creates, and status changes")
    parser.add_argument("--concurrency", type=int, default=20, help="requests in flight")
    args = parser.parse_args()
    outcomes = [
        asyncio.run(with_embedded_worker(args.employees, args.concurrency)),
        asyncio.run(with_two_workers(args.employees, args.concurrency)),
    ]
    print(
        f"loopback, embedded PostgreSQL, concurrency {args.concurrency}, CPython "
        f"{platform.python_version()}"
    )
    print(
        "| scenario | requests failed | mails missing / doubled | audit rows missing / doubled "
        "| all delivered after restart (s) |"
    )
    print("|---|---:|---:|---:|---:|")
    for outcome in outcomes:
        mails = "{} / {}".format(*outcome.miscount(outcome.mails))
        audit = "{} / {}".format(*outcome.miscount(outcome.audit))
        print(
            f"| {outcome.scenario} | {outcome.failed_requests} | {mails} | {audit} | "
            f"{outcome.delivered_in:.1f} |"
        )
    return 0 if all(outcome.good for outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
