"""A 2xx means committed: the service answers only for work that its database has kept."""

from __future__ import annotations

import io
import json
import logging
import socket
from contextlib import asynccontextmanager

import anyio
import httpx
import psycopg
import pytest
import uvicorn
from conftest import libpq
from test_service import NEW_EMPLOYEE

from app.core.logging import configure_logging

pytestmark = pytest.mark.anyio

REFUSE_AT_COMMIT = """
CREATE OR REPLACE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.name LIKE 'uncommittable%' OR NEW.name LIKE 'boom%' THEN
        RAISE EXCEPTION 'refused by the test';
    END IF;
    IF NEW.name LIKE 'slow%' THEN
        PERFORM pg_sleep(0.15);
    END IF;
    RETURN NEW;
END $$;
CREATE CONSTRAINT TRIGGER test_refuse_at_commit AFTER INSERT OR UPDATE ON hr_employees
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.name NOT LIKE 'boom%') EXECUTE FUNCTION test_refuse();
CREATE TRIGGER test_refuse_at_insert BEFORE INSERT ON hr_employees
    FOR EACH ROW WHEN (NEW.name LIKE 'boom%') EXECUTE FUNCTION test_refuse();
"""


@pytest.fixture
def anyio_backend():
    """The service runs on asyncio."""
    return "asyncio"


@pytest.fixture
def refusing_database(service, database_url):
    """Triggers on the employees table: a name starting with "uncommittable" fails at COMMIT,
    "boom" fails its INSERT, "slow" makes the commit take 0.15 s. Dropped afterwards."""
    with psycopg.connect(libpq(database_url), autocommit=True) as connection:
        connection.execute(REFUSE_AT_COMMIT)
    yield
    with psycopg.connect(libpq(database_url), autocommit=True) as connection:
        connection.execute("DROP TRIGGER test_refuse_at_commit ON hr_employees")
        connection.execute("DROP TRIGGER test_refuse_at_insert ON hr_employees")
        connection.execute("DROP FUNCTION test_refuse()")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def over_loopback(app):
    """``app`` served by a real uvicorn on a free loopback port, and a client for it."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None, lifespan="off")
    )
    server.capture_signals = lambda: _nothing()  # the test runner keeps its own signals
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn has a flag, not an event
                await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                yield client
        finally:
            server.should_exit = True


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


async def test_a_failed_commit_is_a_500_that_delivers_nothing(
    service, refusing_database, log_records
):
    """The commit fails after the work and its emit: 500 with X-Request-ID, no employee, no
    mail, and one "request failed" record with the request id."""
    response = await service.client.post(
        "/employees", json={**NEW_EMPLOYEE, "name": "uncommittable Ada"}
    )
    await service.settle()
    assert response.status_code == 500
    request_id = response.headers["x-request-id"]
    assert response.json() == {"detail": "internal server error", "request_id": request_id}
    assert (await service.client.get("/employees/1")).status_code == 404
    assert (await service.client.get("/outbox")).json() == []
    (failed,) = [r for r in log_records if r["event"] == "request failed"]
    assert (failed["request_id"], failed["log_level"]) == (request_id, "error")
    assert (failed["http_method"], failed["http_path"]) == ("POST", "/employees")
    assert service.app.state.emitter.pending == []


async def test_a_sequential_client_reads_each_write(service, refusing_database):
    """Over real HTTP, a read right after each create and each status change sees it, also
    when the commit is slow."""
    async with over_loopback(service.app) as client:
        for round_ in range(3):
            created = await client.post(
                "/employees", json={**NEW_EMPLOYEE, "name": f"slow {round_}"}
            )
            assert created.status_code == 201
            employee_id = created.json()["id"]
            read = await client.get(f"/employees/{employee_id}")
            assert (read.status_code, read.json()["status"]) == (200, "onboarding")
            moved = await client.post(
                f"/employees/{employee_id}/status", json={"to_state": "active", "actor_id": 1}
            )
            assert moved.status_code == 200
            read = await client.get(f"/employees/{employee_id}")
            assert read.json()["status"] == "active"


@pytest.fixture
def rendered_logs(restore_structlog):
    """Configure logging as ``serve`` does, into a buffer: (buffer, configure(json=...))."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    buffer = io.StringIO()
    yield buffer, lambda json: configure_logging(json=json, stream=buffer)
    root.handlers[:], level = saved
    root.setLevel(level)


@pytest.mark.parametrize("as_json", [False, True], ids=["console", "json"])
async def test_a_500_logs_its_request_id_and_no_sql_parameters(
    service, refusing_database, rendered_logs, as_json
):
    """An INSERT that fails: the rendered record names the request and the error, and
    neither the bound values (the employee's name) nor a frame's locals appear."""
    buffer, configure = rendered_logs
    configure(as_json)
    response = await service.client.post(
        "/employees", json={**NEW_EMPLOYEE, "name": "boom Secret Sauce"}
    )
    assert response.status_code == 500
    output = buffer.getvalue()
    assert response.headers["x-request-id"] in output
    assert "request failed" in output
    assert "refused by the test" in output  # the database's error is there...
    assert "Secret Sauce" not in output  # ...but not the values bound to the statement
    assert "SQL parameters hidden" in output
    if as_json:
        (record,) = [json.loads(line) for line in output.splitlines() if "request failed" in line]
        assert record["request_id"] == response.headers["x-request-id"]
        assert all("locals" not in frame for frame in record["exception"][0]["frames"])
