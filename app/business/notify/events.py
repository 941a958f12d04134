"""The notify package's side of the event catalogue: the events it handles."""

from __future__ import annotations

from typing import Any

import structlog

from app import db
from app.business.notify.outbox import Mail
from app.utils import current_event, on

log = structlog.get_logger(__name__)


@on("employee.created")
async def send_welcome_mail(*, employee_id: int, department_id: int, **_: Any) -> None:
    """Queue the welcome mail of a new employee, in a transaction of its own."""
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
