"""``python -m app serve``: the real server on a free loopback port, spoken to over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from http.client import HTTPConnection

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_up(url: str, server: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited early:\n{server.communicate()[0]}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("the server did not come up within 30 s")


def idle_connection_outlives_five_seconds(port: int) -> bool:
    """Whether a connection idle for 5.5 s still serves a request. Clients keep idle
    connections for 5 s (httpx's default); a server closing them as early loses the request a
    client sends just as it closes (the load run lost 2 to 7 of 2,000 so)."""
    connection = HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/audit")
        connection.getresponse().read()
        first = connection.sock
        time.sleep(5.5)
        connection.request("GET", "/audit")
        answered = connection.getresponse().status == 200
        return answered and connection.sock is first
    finally:
        connection.close()


def test_the_real_server_serves_and_delivers(tmp_path):
    """With no APP_DATABASE_URL, in an empty folder: the embedded PostgreSQL starts with the
    service, an employee created over HTTP gets its mail and audit row, and SIGINT stops both."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {key: value for key, value in os.environ.items() if key != "APP_DATABASE_URL"}
    server = subprocess.Popen(
        [sys.executable, "-m", "app", "--json", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_up(f"{base}/audit", server)
        created = httpx.post(
            f"{base}/employees", json={"name": "Ada", "department_id": 7, "created_by": 1}
        )
        assert created.status_code == 201
        employee_id = created.json()["id"]
        moved = httpx.post(
            f"{base}/employees/{employee_id}/status", json={"to_state": "active", "actor_id": 1}
        )
        assert moved.status_code == 200
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            outbox = httpx.get(f"{base}/outbox").json()
            audit = httpx.get(f"{base}/audit").json()
            if outbox and audit:
                break
            time.sleep(0.05)
        assert [m["employee_id"] for m in outbox] == [employee_id]
        assert [(a["from_state"], a["to_state"]) for a in audit] == [("onboarding", "active")]
        assert idle_connection_outlives_five_seconds(port)
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=30)
    assert server.returncode == 0, output
    data = tmp_path / ".app-postgres" / "data"
    assert (data / "PG_VERSION").exists()
    assert not (data / "postmaster.pid").exists()  # PostgreSQL removes it when it stops
    assert not (tmp_path / ".app-postgres" / "state.json").exists()
    assert '"event": "embedded postgres started"' in output
    assert '"event": "embedded postgres stopped"' in output
    assert '"event": "welcome mail queued"' in output
    assert '"request_id": ' in output
    assert "Application shutdown complete." in output  # the lifespan ran its shutdown
