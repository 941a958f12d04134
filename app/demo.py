"""The main job until the web service exists: a short scenario that shows the registry at work.

It imports the business packages (their ``@on`` handlers register on import), registers one
handler that always fails, and runs an HR scenario: the welcome mail and the audit trail are
written by handlers in other packages, and the failing handler is logged without stopping them.
"""

from __future__ import annotations

from typing import Any

import structlog

from app.business import audit, notify
from app.business.hr import EmployeeStatus, EmployeeStore, change_status, create_employee
from app.utils import on

__all__ = ["run_demo"]

log = structlog.get_logger(__name__)


@on("employee.created")
def refresh_headcount_dashboard(**_: Any) -> None:
    """Stand for an integration that is down: it always raises, and emit isolates it."""
    raise ConnectionError("headcount dashboard is unreachable")


async def run_demo() -> None:
    """Create an employee, move it through two statuses, and log what the handlers did."""
    store = EmployeeStore()
    employee = await create_employee(store, name="Ada Lovelace", department_id=7, created_by=1)
    log.info("employee created", employee_id=employee.id, status=employee.status)
    await change_status(store, employee.id, to_state=EmployeeStatus.ACTIVE, actor_id=1)
    await change_status(store, employee.id, to_state=EmployeeStatus.ON_LEAVE, actor_id=2)
    for mail in notify.outbox.mails:
        log.info("outbox", employee_id=mail.employee_id, subject=mail.subject, body=mail.body)
    for entry in audit.trail.entries:
        log.info(
            "audit trail",
            employee_id=entry.employee_id,
            from_state=entry.from_state,
            to_state=entry.to_state,
            actor_id=entry.actor_id,
        )
