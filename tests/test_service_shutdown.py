"""``python -m app serve`` stops within its grace period, even while the database blocks its
handlers, and logs once, with their ids, the deliveries it cannot finish."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import psycopg
import pytest
from conftest import libpq
from test_serve import free_port, wait_until_up
from test_service import NEW_EMPLOYEE


def serve(tmp_path, *options):
    """The service in a subprocess on the session's database; (process, base URL)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "--json", "serve", "--port", str(port), *options],
        cwd=tmp_path,
        env=os.environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    wait_until_up(f"{base}/audit", process)
    return process, base


def records(output):
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("signals", [1, 2], ids=["one-signal", "two-signals"])
def test_shutdown_is_bounded_while_the_database_blocks(database_url, tmp_path, signals):
    """The welcome mail's INSERT (a durable handler, run by serve's embedded worker) waits for
    a lock held forever. One SIGINT: the process exits within the grace period (0.5 s) and the
    statement timeout (2 s) after it; two: within the statement timeout, however long the
    grace period. Either way the job is still in the queue, to run again: nothing is lost.
    The bound leaves room for a loaded machine (CI runs suites side by side); unbounded, the
    process would wait for the lock until ``communicate`` gives up after 20 s."""
    grace = "0.5" if signals == 1 else "30"
    process, base = serve(tmp_path, "--grace-period", grace, "--statement-timeout", "2")
    try:
        with psycopg.connect(libpq(database_url)) as blocker:
            blocker.execute("LOCK TABLE notify_outbox IN ACCESS EXCLUSIVE MODE")
            created = httpx.post(f"{base}/employees", json=NEW_EMPLOYEE)
            assert created.status_code == 201
            time.sleep(0.3)  # the handler now waits for the lock
            started = time.monotonic()
            process.send_signal(signal.SIGINT)
            if signals == 2:
                time.sleep(0.3)
                process.send_signal(signal.SIGINT)
            output, _ = process.communicate(timeout=20)
            elapsed = time.monotonic() - started
            blocker.rollback()
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert elapsed < 6, output
    with psycopg.connect(libpq(database_url)) as connection:
        statuses = connection.execute(
            "SELECT status::text FROM procrastinate_jobs WHERE args->'job'->>'handler_id' = "
            "'notify.welcome_mail'"
        ).fetchall()
    ((status,),) = statuses
    assert status in ("todo", "doing"), output
    assert "Application shutdown complete." in output
