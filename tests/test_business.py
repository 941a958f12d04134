"""The reference business packages, tested the way business code tests itself: pytest-asyncio."""

from __future__ import annotations

import collections

import pytest

from app.business import audit, notify
from app.business.hr import (
    EmployeeNotFoundError,
    EmployeeStatus,
    EmployeeStore,
    IllegalTransitionError,
    change_status,
    create_employee,
)
from app.core import events
from app.core.events import handlers, on


@pytest.fixture
def outbox(monkeypatch):
    """An empty outbox for this test."""
    fresh = notify.Outbox()
    monkeypatch.setattr("app.business.notify.events.outbox", fresh)
    return fresh


@pytest.fixture
def trail(monkeypatch):
    """An empty audit trail for this test."""
    fresh = audit.AuditTrail()
    monkeypatch.setattr("app.business.audit.events.trail", fresh)
    return fresh


def test_importing_the_packages_registers_their_handlers():
    """notify and audit register on import; hr only emits."""
    assert notify.events.send_welcome_mail in handlers("employee.created")
    assert audit.events.record_status_change in handlers("employee.status_changed")


@pytest.mark.asyncio
async def test_creating_an_employee_queues_the_welcome_mail(outbox):
    """employee.created reaches notify, which queues one mail."""
    employee = await create_employee(EmployeeStore(), name="Ada", department_id=7, created_by=1)
    assert outbox.mails == [
        notify.Mail(
            employee_id=employee.id, subject="Welcome aboard", body="Welcome to department 7!"
        )
    ]


@pytest.mark.asyncio
async def test_status_changes_are_audited(trail):
    """employee.status_changed reaches audit with both states and the actor."""
    store = EmployeeStore()
    employee = await create_employee(store, name="Ada", department_id=7, created_by=1)
    await change_status(store, employee.id, to_state=EmployeeStatus.ACTIVE, actor_id=3)
    assert trail.entries == [
        audit.AuditEntry(
            employee_id=employee.id, from_state="onboarding", to_state="active", actor_id=3
        )
    ]


@pytest.mark.asyncio
async def test_an_illegal_transition_changes_nothing_and_emits_nothing(monkeypatch):
    """A move the state machine forbids raises and emits no event."""
    monkeypatch.setattr(events, "_handlers", collections.defaultdict(list))
    emitted = []
    on("employee.status_changed")(lambda **kwargs: emitted.append(kwargs))
    store = EmployeeStore()
    employee = await create_employee(store, name="Ada", department_id=7, created_by=1)
    with pytest.raises(
        IllegalTransitionError,
        match="cannot move an employee from onboarding "
        "to on_leave; allowed from onboarding: active, terminated",
    ):
        await change_status(store, employee.id, to_state=EmployeeStatus.ON_LEAVE, actor_id=1)
    assert employee.status is EmployeeStatus.ONBOARDING
    assert emitted == []


@pytest.mark.asyncio
async def test_an_unknown_employee_is_a_lookup_error():
    """Changing an employee that does not exist raises EmployeeNotFoundError."""
    with pytest.raises(EmployeeNotFoundError, match="no employee with id 99"):
        await change_status(EmployeeStore(), 99, to_state=EmployeeStatus.ACTIVE, actor_id=1)
