"""The events hr publishes: its public contract, checked at every emit."""

from __future__ import annotations

from app.core.events import declare

__all__ = ["EMPLOYEE_CREATED", "EMPLOYEE_STATUS_CHANGED"]

EMPLOYEE_CREATED = declare(
    "employee.created",
    source="hr",
    payload={"employee_id": int, "department_id": int, "created_by": int},
    purpose="a new employee exists: post-create notification and statistics",
)

EMPLOYEE_STATUS_CHANGED = declare(
    "employee.status_changed",
    source="hr",
    payload={"employee_id": int, "from_state": str, "to_state": str, "actor_id": int},
    purpose="an employee moved in the status state machine: audit trail",
)
