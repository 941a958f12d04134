"""Requests are bounded: bodies by size and by time, over a real uvicorn on loopback; and a
database restart costs no failed request."""

from __future__ import annotations

import anyio
import psycopg
import pytest
from conftest import libpq, running
from test_service import NEW_EMPLOYEE
from test_service_commit import over_loopback

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    """The service runs on asyncio."""
    return "asyncio"


@pytest.fixture
async def small_service(database_url):
    """The service with 1,000-byte bodies and 0.5 s to send them."""
    async with running(database_url, max_body_size=1000, body_timeout=0.5) as service:
        yield service


async def test_a_body_over_the_limit_is_413(small_service):
    """Declared by Content-Length or streamed in chunks, a body over the limit is 413 with
    X-Request-ID, and creates nothing; one at the limit is read."""
    async with over_loopback(small_service.app) as client:
        declared = await client.post(
            "/employees", content=b" " * 1001, headers={"content-type": "application/json"}
        )

        async def chunks():
            for _ in range(11):
                yield b" " * 100

        streamed = await client.post(
            "/employees", content=chunks(), headers={"content-type": "application/json"}
        )
        padded = b'{"name": "Ada", "department_id": 7, "created_by": 1}'.ljust(1000)
        at_limit = await client.post(
            "/employees", content=padded, headers={"content-type": "application/json"}
        )
    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.json() == {"detail": "the request body is larger than 1000 bytes"}
        assert len(response.headers["x-request-id"]) == 32
    assert at_limit.status_code == 201
    assert at_limit.json()["id"] == 1


async def test_a_stalled_body_is_cut_off(small_service):
    """A client that declares 100 bytes and sends 2 is answered 408 after the body timeout
    (0.5 s) and its connection is closed."""
    async with over_loopback(small_service.app) as client:
        port = client.base_url.port
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(
                b"POST /employees HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"content-length: 100\r\n\r\n{}"
            )
            started = anyio.current_time()
            received = b""
            with anyio.fail_after(5):
                try:
                    while chunk := await stream.receive():
                        received += chunk
                except anyio.EndOfStream:
                    pass
            waited = anyio.current_time() - started
    assert received.startswith(b"HTTP/1.1 408 ")
    assert b"x-request-id: " in received
    assert b"the request body was not sent within 0.5 s" in received
    assert 0.4 < waited < 2


async def test_a_database_restart_costs_no_request(service, database_url):
    """Every server connection of the pool is terminated (as a restart does): the next
    requests all succeed, the pool reconnecting after its ping."""
    assert (await service.client.post("/employees", json=NEW_EMPLOYEE)).status_code == 201
    await service.settle()
    with psycopg.connect(libpq(database_url), autocommit=True) as connection:
        (terminated,) = connection.execute(
            # Waiting until each has exited, as a restart does before it answers again.
            "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert terminated >= 1
    assert (await service.client.get("/employees/1")).status_code == 200
    assert (await service.client.post("/employees", json=NEW_EMPLOYEE)).status_code == 201
