"""``python -m app demo``: a short scenario showing the registry at work, with no server.

The command imports the business packages (their ``@on`` handlers register on import), then
``register_handlers()`` registers the demo's own handler, one that always fails: at run time,
so it is the demo's and not the service's (EVENTS.md lists only the service's handlers).
``run_demo()`` runs an HR scenario over the service's database (``APP_DATABASE_URL``, or the
embedded PostgreSQL in ``./.app-postgres/``). Each unit of work commits before its events are
delivered (``app.db.unit_of_work``); the welcome mail and the audit trail are written by
durable handlers in other packages, which a worker runs once the scenario is done; the failing
handler is in-process, logged and isolated. It shows the mail and
audit rows of the employee it made, whatever else is stored.
"""

from __future__ import annotations

from typing import Any

import structlog

from app import db, durable
from app.business import audit, notify
from app.business.hr import EmployeeStatus, change_status, create_employee
from app.utils import on

__all__ = ["refresh_headcount_dashboard", "register_handlers", "run_demo"]

log = structlog.get_logger(__name__)


def refresh_headcount_dashboard(**_: Any) -> None:
    """Stand for an integration that is down: it always raises, and emit isolates it."""
    raise ConnectionError("headcount dashboard is unreachable")


def register_handlers() -> None:
    """Register the demo's handler of ``employee.created``; registering it again is a no-op."""
    on("employee.created")(refresh_headcount_dashboard)


async def run_demo() -> None:
    """Create an employee, move it through two statuses, and log what the handlers did."""
    await db.open_database()
    try:
        async with durable.running() as queue:
            employee_id = await _scenario()
            await durable.work(queue, wait=False)  # run the durable jobs, then stop
        await _show(employee_id)
    finally:
        await db.close_database()


async def _scenario() -> int:
    async with db.unit_of_work() as session:
        employee = await create_employee(
            session, name="Ada Lovelace", department_id=7, created_by=1
        )
        log.info("employee created", employee_id=employee.id, status=employee.status)
    for to_state, actor_id in [(EmployeeStatus.ACTIVE, 1), (EmployeeStatus.ON_LEAVE, 2)]:
        async with db.unit_of_work() as session:
            await change_status(session, employee.id, to_state=to_state, actor_id=actor_id)
    return employee.id


async def _show(employee_id: int) -> None:
    async with db.transaction() as session:
        mails = [m for m in await notify.list_outbox(session) if m.employee_id == employee_id]
        entries = [e for e in await audit.list_audit(session) if e.employee_id == employee_id]
    for mail in mails:
        log.info("outbox", employee_id=mail.employee_id, subject=mail.subject, body=mail.body)
    for entry in entries:
        log.info(
            "audit trail",
            employee_id=entry.employee_id,
            from_state=entry.from_state,
            to_state=entry.to_state,
            actor_id=entry.actor_id,
        )
