"""The notify package's side of the event catalogue: the events it handles."""

from __future__ import annotations

from typing import Any

import structlog

from app import db
from app.business.notify.outbox import Mail
from app.utils import current_event, on

log = structlog.get_logger(__name__)


@on("employee.created", durable=True, id="notify.welcome_mail", max_attempts=5, timeout=30.0)
async def send_welcome_mail(*, employee_id: int, department_id: int, **_: Any) -> None:
    """Queue the welcome mail of a new employee. Durable: a worker runs it, and its
    transaction commits with the job's inbox row, so the mail is written exactly once."""
    event = current_event()
    async with db.transaction() as session:
        session.add(
            Mail(
                employee_id=employee_id,
                subject="Welcome aboard",
                body=f"Welcome to department {department_id}!",
                correlation_id=event.correlation_id if event else None,
            )
        )
    log.info("welcome mail queued", employee_id=employee_id)


@on("employee.created")
def announce_new_employee(*, department_id: int, **_: Any) -> None:
    """Log the new employee, in-process and after the commit: cheap and losable, so it need
    not be durable."""
    log.info("new employee announced", department_id=department_id)
