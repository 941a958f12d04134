"""The reference business packages, tested the way business code tests itself: pytest-asyncio."""

from __future__ import annotations

import pytest
import pytest_asyncio

from app import db, durable
from app.business import audit, notify
from app.business.hr import (
    EmployeeNotFoundError,
    EmployeeStatus,
    IllegalTransitionError,
    change_status,
    create_employee,
    get_employee,
)
from app.business.hr import services as hr_services
from app.core import events
from app.core.events import handlers


@pytest_asyncio.fixture
async def database(database_url):
    """The database, open and empty, with every table and durable delivery (no worker): the
    procrastinate app, for running the queued jobs with ``durable.work(app, wait=False)``."""
    await db.open_database(database_url)
    try:
        async with durable.running() as queue:
            yield queue
    finally:
        await db.close_database()


def test_patching_app_utils_emit_misses_modules_that_imported_it(monkeypatch):
    """``from app.utils import emit`` bound the real emit: patching app.utils does not reach it."""

    async def fake_emit(name, /, **kwargs):
        return None

    monkeypatch.setattr("app.utils.emit", fake_emit)
    assert hr_services.emit is events.emit


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.events_mute("employee.created")
async def test_muting_reaches_every_emit(events_recorder):
    """Muted, an emit is checked and recorded, but notify's handler (it needs a database) does
    not run."""
    await hr_services.emit("employee.created", employee_id=1, department_id=7, created_by=1)
    assert events_recorder.assert_emitted_once("employee.created", employee_id=1).muted


def test_importing_the_packages_registers_their_handlers():
    """notify and audit register on import; hr only emits."""
    assert notify.events.send_welcome_mail in handlers("employee.created")
    assert audit.events.record_status_change in handlers("employee.status_changed")


@pytest.mark.asyncio
async def test_creating_an_employee_queues_the_welcome_mail(database, events_recorder):
    """employee.created reaches notify's durable handler through a job; it writes the mail."""
    async with db.unit_of_work() as session:
        employee = await create_employee(session, name="Ada", department_id=7, created_by=1)
    events_recorder.assert_emitted_once("employee.created", employee_id=employee.id)
    await durable.work(database, wait=False)
    async with db.transaction() as session:
        mails = await notify.list_outbox(session)
    assert [(m.employee_id, m.subject, m.body) for m in mails] == [
        (employee.id, "Welcome aboard", "Welcome to department 7!")
    ]


@pytest.mark.asyncio
async def test_status_changes_are_audited(database):
    """employee.status_changed reaches audit with both states and the actor."""
    async with db.unit_of_work() as session:
        employee = await create_employee(session, name="Ada", department_id=7, created_by=1)
    async with db.unit_of_work() as session:
        await change_status(session, employee.id, to_state=EmployeeStatus.ACTIVE, actor_id=3)
    await durable.work(database, wait=False)
    async with db.transaction() as session:
        entries = await audit.list_audit(session)
        stored = await get_employee(session, employee.id)
    assert [(e.employee_id, e.from_state, e.to_state, e.actor_id) for e in entries] == [
        (employee.id, "onboarding", "active", 3)
    ]
    assert stored.status == "active"


@pytest.mark.asyncio
@pytest.mark.events_mute
async def test_an_illegal_transition_changes_nothing_and_emits_nothing(database, events_recorder):
    """A move the state machine forbids raises, rolls back and emits no event."""
    async with db.unit_of_work() as session:
        employee = await create_employee(session, name="Ada", department_id=7, created_by=1)
    with pytest.raises(
        IllegalTransitionError,
        match="cannot move an employee from onboarding to on_leave; "
        "allowed from onboarding: active, terminated",
    ):
        async with db.unit_of_work() as session:
            await change_status(session, employee.id, to_state=EmployeeStatus.ON_LEAVE, actor_id=1)
    events_recorder.assert_not_emitted("employee.status_changed")
    async with db.transaction() as session:
        assert (await get_employee(session, employee.id)).status == "onboarding"


@pytest.mark.asyncio
async def test_an_unknown_employee_is_a_lookup_error(database):
    """Changing an employee that does not exist raises EmployeeNotFoundError."""
    with pytest.raises(EmployeeNotFoundError, match="no employee with id 99"):
        async with db.transaction() as session:
            await change_status(session, 99, to_state=EmployeeStatus.ACTIVE, actor_id=1)
