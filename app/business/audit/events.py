"""The audit package's side of the event catalogue: the events it handles."""

from __future__ import annotations

from typing import Any

import structlog

from app import db
from app.business.audit.trail import AuditEntry
from app.utils import current_event, on

log = structlog.get_logger(__name__)


@on("employee.status_changed", durable=True, id="audit.status_change", timeout=30.0)
async def record_status_change(
    *, employee_id: int, from_state: str, to_state: str, actor_id: int, **_: Any
) -> None:
    """Record a status change in the audit trail. Durable: an audit trail must not lose an
    entry, and the entry commits with the job's inbox row, so it is written exactly once."""
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
