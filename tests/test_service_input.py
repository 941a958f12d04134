"""Bad input is refused with 422 naming the field, before it reaches the database."""

from __future__ import annotations

import pytest
from test_service import NEW_EMPLOYEE

pytestmark = pytest.mark.anyio

INT4_MAX = 2**31 - 1


@pytest.fixture
def anyio_backend():
    """The service runs on asyncio."""
    return "asyncio"


def raw(text: str) -> dict:
    return {"content": text.encode("utf-8", "surrogatepass"), "headers": JSON}


JSON = {"content-type": "application/json"}
CREATE = '{"name": %s, "department_id": %s, "created_by": 1}'


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (raw(CREATE % ('"Ada"', "NaN")), ["body", "department_id"]),
        (raw(CREATE % ('"Ada"', "Infinity")), ["body", "department_id"]),
        (raw(CREATE % ('"Ada"', "1e400")), ["body", "department_id"]),
        (raw(CREATE % ('"Ada"', str(2**31))), ["body", "department_id"]),
        (raw(CREATE % ('"Ada"', str(2**63))), ["body", "department_id"]),
        (raw(CREATE % ('"Ada"', str(-(2**63)))), ["body", "department_id"]),
        (raw(CREATE % ('"\\ud800"', "7")), ["body", "name"]),
        (raw(CREATE % ('"Ada\\u0000"', "7")), ["body", "name"]),
        (raw(CREATE % ('"Ada"', "[" * 100_000 + "]" * 100_000)), ["body", 0]),
        (raw(CREATE % ('"Ada"', "9" * 5000)), ["body", 0]),
        ({"content": b'{"name": "\xff"}', "headers": JSON}, ["body", 10]),
        (raw(CREATE % ("[" * 500 + "]" * 500, "7")), ["body", "name"]),
    ],
    ids=[
        "nan",
        "infinity",
        "overflowing-float",
        "int4-overflow",
        "int8-overflow",
        "int8-underflow",
        "lone-surrogate",
        "nul",
        "absurd-nesting",
        "5000-digits",
        "not-utf8",
        "nested-name",
    ],
)
async def test_bad_creations_are_refused_naming_the_field(service, body, loc):
    """Each is 422 with the field's location, carries X-Request-ID, and creates nothing."""
    response = await service.client.post("/employees", **body)
    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["loc"] == loc
    assert set(problem) == {"loc", "msg", "type"}  # the input is never echoed
    assert len(response.headers["x-request-id"]) == 32
    assert (await service.client.get("/employees/1")).status_code == 404


@pytest.mark.parametrize("employee_id", [0, 2**31, 2**63, -(2**63)])
async def test_ids_beyond_the_column_are_refused(service, employee_id):
    """A path id that no row can have is 422 naming employee_id, on reads and on moves."""
    read = await service.client.get(f"/employees/{employee_id}")
    moved = await service.client.post(
        f"/employees/{employee_id}/status", json={"to_state": "active", "actor_id": 1}
    )
    for response in (read, moved):
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["path", "employee_id"]


async def test_an_actor_the_audit_cannot_store_changes_nothing(service):
    """actor_id 2**31 is refused before the status changes, so no change goes unaudited; the
    largest id the column holds is accepted and audited."""
    await service.client.post("/employees", json=NEW_EMPLOYEE)
    refused = await service.client.post(
        "/employees/1/status", json={"to_state": "active", "actor_id": INT4_MAX + 1}
    )
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "actor_id"]
    assert (await service.client.get("/employees/1")).json()["status"] == "onboarding"

    moved = await service.client.post(
        "/employees/1/status", json={"to_state": "active", "actor_id": INT4_MAX}
    )
    assert moved.status_code == 200
    await service.settle()
    (entry,) = (await service.client.get("/audit")).json()
    assert (entry["to_state"], entry["actor_id"]) == ("active", INT4_MAX)


async def test_the_largest_ids_the_columns_hold_are_stored(service):
    """department_id and created_by at 2**31 - 1 are accepted, stored and mailed."""
    response = await service.client.post(
        "/employees", json={**NEW_EMPLOYEE, "department_id": INT4_MAX, "created_by": INT4_MAX}
    )
    assert response.status_code == 201
    await service.settle()
    (mail,) = (await service.client.get("/outbox")).json()
    assert mail["body"] == f"Welcome to department {INT4_MAX}!"
