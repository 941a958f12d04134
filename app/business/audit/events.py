"""The audit package's side of the event catalogue: the events it handles."""

from __future__ import annotations

from typing import Any

import structlog

from app import db
from app.business.audit.trail import AuditEntry
from app.utils import current_event, on

log = structlog.get_logger(__name__)


@on("employee.status_changed")
async def record_status_change(
    *, employee_id: int, from_state: str, to_state: str, actor_id: int, **_: Any
) -> None:
    """Record a status change in the audit trail, in a transaction of its own."""
    event = current_event()
    async with db.transaction() as session:
        session.add(
            AuditEntry(
                employee_id=employee_id,
                from_state=from_state,
                to_state=to_state,
                actor_id=actor_id,
                correlation_id=event.correlation_id if event else None,
            )
        )
    log.info("status change audited", employee_id=employee_id, to_state=to_state)
