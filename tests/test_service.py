"""The reference service end to end: its real HTTP interface over a real PostgreSQL."""

from __future__ import annotations

import uuid

import anyio
import httpx
import pytest
from conftest import client_for

from app.business.hr import services as hr_services
from app.core import catalogue
from app.core.events import on
from app.web.service import create_app

# SQLAlchemy's async engine and uvicorn run on asyncio only. anyio's runner keeps a fixture's
# set-up and tear-down in one task, which the lifespan's task group needs.
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    """The service runs on asyncio."""
    return "asyncio"


NEW_EMPLOYEE = {"name": "Ada Lovelace", "department_id": 7, "created_by": 1}


@pytest.fixture
def failing_creations(monkeypatch):
    """Make creating an employee whose name starts with "fail" raise after its emit."""
    original = hr_services.create_employee

    async def create_then_maybe_fail(session, **fields):
        employee = await original(session, **fields)
        if fields["name"].startswith("fail"):
            raise RuntimeError("the request fails after emitting")
        return employee

    monkeypatch.setattr(hr_services, "create_employee", create_then_maybe_fail)


async def test_the_happy_path_delivers_after_the_response(service):
    """201 comes back while the handlers have not run; then the mail and audit rows appear."""
    gate = anyio.Event()

    @on("employee.created")
    async def wait_for_the_test(**kwargs):
        await gate.wait()

    with anyio.fail_after(5):  # delivery before the response would hang here
        response = await service.client.post("/employees", json=NEW_EMPLOYEE)
    assert response.status_code == 201
    employee = response.json()
    assert employee == {"id": 1, "name": "Ada Lovelace", "department_id": 7, "status": "onboarding"}
    assert len(response.headers["x-request-id"]) == 32
    assert service.app.state.emitter.pending == ["employee.created"]  # delivery still going
    gate.set()
    await service.settle()

    assert (await service.client.get("/outbox")).json() == [
        {
            "id": 1,
            "employee_id": 1,
            "subject": "Welcome aboard",
            "body": "Welcome to department 7!",
            "correlation_id": response.headers["x-request-id"],
        }
    ]
    moved = await service.client.post(
        "/employees/1/status", json={"to_state": "active", "actor_id": 2}
    )
    assert moved.status_code == 200
    assert moved.json()["status"] == "active"
    await service.settle()
    assert (await service.client.get("/audit")).json() == [
        {
            "id": 1,
            "employee_id": 1,
            "from_state": "onboarding",
            "to_state": "active",
            "actor_id": 2,
            "correlation_id": moved.headers["x-request-id"],
        }
    ]
    assert (await service.client.get("/employees/1")).json()["status"] == "active"


async def test_a_rolled_back_request_delivers_nothing(service, failing_creations, events_recorder):
    """The request emitted, then failed: 500, no employee, no mail, nothing delivered."""
    response = await service.client.post("/employees", json={**NEW_EMPLOYEE, "name": "fail"})
    assert response.status_code == 500
    await service.settle()
    events_recorder.assert_emitted_once("employee.created")  # emitted and checked...
    assert service.app.state.emitter.pending == []
    assert (await service.client.get("/outbox")).json() == []  # ...but never delivered
    assert (await service.client.get("/employees/1")).status_code == 404


async def test_client_errors_deliver_nothing_and_name_the_problem(service):
    """422 names the field, 404 the id, 409 the states; no handler runs for any of them."""
    invalid = await service.client.post("/employees", json={**NEW_EMPLOYEE, "department_id": 0})
    assert invalid.status_code == 422
    assert invalid.json()["detail"][0]["loc"] == ["body", "department_id"]
    missing = await service.client.post(
        "/employees/5/status", json={"to_state": "active", "actor_id": 1}
    )
    assert missing.status_code == 404
    assert missing.json() == {"detail": "no employee with id 5"}

    await service.client.post("/employees", json=NEW_EMPLOYEE)
    conflict = await service.client.post(
        "/employees/1/status", json={"to_state": "on_leave", "actor_id": 1}
    )
    assert conflict.status_code == 409
    assert conflict.json() == {
        "detail": "cannot move an employee from onboarding to on_leave; allowed from "
        "onboarding: active, terminated",
        "current": "onboarding",
        "requested": "on_leave",
    }
    await service.settle()
    assert (await service.client.get("/audit")).json() == []


async def test_a_failing_handler_changes_nothing_for_the_request(
    trusting_service, log_records, expect_handler_failure
):
    """201 as usual, the durable handler's mail is written; the failure's log line names the
    request, the event, the chain and the handler, like the lines the handlers log."""

    @on("employee.created")
    async def broken(**kwargs):
        raise ValueError("dashboard down")

    with expect_handler_failure("employee.created", ValueError):
        response = await trusting_service.client.post(
            "/employees", json=NEW_EMPLOYEE, headers={"x-request-id": "req-3am"}
        )
        await trusting_service.settle()
    assert response.status_code == 201
    (mail,) = (await trusting_service.client.get("/outbox")).json()
    assert mail["correlation_id"] == "req-3am"
    (failure,) = [r for r in log_records if r["event"] == "event handler failed"]
    (announced,) = [r for r in log_records if r["event"] == "new employee announced"]
    (queued,) = [r for r in log_records if r["event"] == "welcome mail queued"]
    event_id = queued["event_id"]
    assert uuid.UUID(event_id).version == 7
    assert {key: failure[key] for key in KEYS} == {
        "request_id": "req-3am",
        "event_name": "employee.created",
        "event_id": event_id,
        "correlation_id": "req-3am",
        "handler": f"{__name__}.{broken.__qualname__}",
    }
    assert "causation_id" not in failure  # the request's emit starts the chain
    assert {key: announced[key] for key in KEYS} == {
        **{key: failure[key] for key in KEYS},
        "handler": "app.business.notify.events.announce_new_employee",
    }
    # The durable handler ran in the embedded worker: the event's keys, not the request's.
    assert {key: queued.get(key) for key in KEYS} == {
        **{key: failure[key] for key in KEYS},
        "request_id": None,
        "handler": "app.business.notify.events.send_welcome_mail",
    }


KEYS = ("request_id", "event_name", "event_id", "correlation_id", "handler")


async def test_a_trusted_request_id_is_kept(trusting_service):
    """Trusted, a sane X-Request-ID from the client is echoed back; an unsafe one is replaced."""
    kept = await trusting_service.client.get("/audit", headers={"x-request-id": "req-42"})
    assert kept.headers["x-request-id"] == "req-42"
    replaced = await trusting_service.client.get("/audit", headers={"x-request-id": "a b\\c"})
    assert replaced.headers["x-request-id"] != "a b\\c"
    assert len(replaced.headers["x-request-id"]) == 32


async def test_an_untrusted_request_id_is_only_logged(service, log_records):
    """By default a client's X-Request-ID is not the request's: the service makes its own,
    stores it as the correlation id of the request's events, and logs the client's as
    client_request_id."""
    response = await service.client.post(
        "/employees/1/status",
        json={"to_state": "active", "actor_id": 1},
        headers={"x-request-id": "someone-elses-request"},
    )
    assert response.status_code == 404
    created = await service.client.post(
        "/employees", json=NEW_EMPLOYEE, headers={"x-request-id": "someone-elses-request"}
    )
    await service.settle()
    own = created.headers["x-request-id"]
    assert own != "someone-elses-request"
    assert len(own) == 32
    (mail,) = (await service.client.get("/outbox")).json()
    assert mail["correlation_id"] == own
    (announced,) = [r for r in log_records if r["event"] == "new employee announced"]
    assert (announced["request_id"], announced["client_request_id"]) == (
        own,
        "someone-elses-request",
    )
    (queued,) = [r for r in log_records if r["event"] == "welcome mail queued"]
    assert queued["correlation_id"] == own  # a durable handler's line, logged by the worker


async def test_concurrent_requests_keep_their_events_apart(service, failing_creations):
    """Each request's events follow its own outcome, however the requests interleave."""

    async def create(name, results):
        response = await service.client.post("/employees", json={**NEW_EMPLOYEE, "name": name})
        results.append(response)

    results: list[httpx.Response] = []
    async with anyio.create_task_group() as group:
        for index in range(12):
            group.start_soon(create, f"{'fail' if index % 3 == 0 else 'ok'}-{index}", results)
    await service.settle()
    created = sorted(r.json()["id"] for r in results if r.status_code == 201)
    assert len(created) == 8
    assert sorted(r.status_code for r in results).count(500) == 4
    mails = (await service.client.get("/outbox")).json()
    assert sorted(m["employee_id"] for m in mails) == created


async def test_shutdown_waits_for_pending_deliveries(database_url):
    """Leaving the lifespan right after a request still delivers its in-process events."""
    app = create_app(database_url, grace_period=5)
    done = []

    @on("employee.created")
    async def slow(**kwargs):
        await anyio.sleep(0.2)
        done.append(kwargs["employee_id"])

    async with app.router.lifespan_context(app), client_for(app) as client:
        assert (await client.post("/employees", json=NEW_EMPLOYEE)).status_code == 201
        assert app.state.emitter.pending == ["employee.created"]
    assert done == [1]


async def test_shutdown_past_the_grace_period_logs_what_it_cancels(database_url, logs):
    """A delivery still running after the grace period is cancelled with a warning naming it."""
    app = create_app(database_url, grace_period=0.1)

    @on("employee.created")
    async def stuck(**kwargs):
        await anyio.sleep(30)

    with anyio.fail_after(5):
        async with app.router.lifespan_context(app), client_for(app) as client:
            response = await client.post("/employees", json=NEW_EMPLOYEE)
            assert response.status_code == 201
    (warning,) = [r for r in logs if r["event"] == "background deliveries cancelled"]
    assert warning["event_names"] == ["employee.created"]
    assert len(warning["event_ids"]) == 1
    assert warning["correlation_ids"] == [response.headers["x-request-id"]]
    assert warning["log_level"] == "warning"


async def test_start_up_fails_fast_when_the_catalogue_does_not_hold(database_url):
    """A handler of an undeclared event stops the lifespan with the catalogue report."""
    from app.core.events import CatalogueError

    @on("employee.craeted")
    async def typo(**kwargs):
        return None

    app = create_app(database_url)
    with pytest.raises(CatalogueError, match=r"did you mean 'employee\.created'"):
        async with app.router.lifespan_context(app):
            pass


@pytest.fixture
def poked_event(monkeypatch):
    """A test event with no durable handler (emit_soon refuses those), declared for the test."""
    monkeypatch.setattr(catalogue, "_declared", dict(catalogue._declared))
    catalogue.declare(
        "employee.poked", source="tests", payload={"employee_id": int}, purpose="a test event"
    )


async def test_a_route_emitting_soon_inside_its_unit_of_work_delivers_after_the_commit(
    poked_event, service
):
    """A route calling ``app.state.emitter.emit_soon`` inside the request's scope answers, and
    the handler runs once the request's work committed."""
    ran = []

    @on("employee.poked")
    async def record(**kwargs):
        ran.append(kwargs["employee_id"])

    @service.app.post("/poke")
    async def poke() -> dict[str, bool]:
        service.app.state.emitter.emit_soon("employee.poked", employee_id=99)
        return {"queued": True}

    response = await service.client.post("/poke")
    assert response.status_code == 200
    await service.settle()
    assert ran == [99]
