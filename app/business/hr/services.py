"""HR use cases; each announces what it did through an event."""

from __future__ import annotations

from app.business.hr.models import (
    ALLOWED_TRANSITIONS,
    Employee,
    EmployeeStatus,
    IllegalTransitionError,
)
from app.business.hr.store import EmployeeStore
from app.utils import emit

__all__ = ["change_status", "create_employee"]


async def create_employee(
    store: EmployeeStore, *, name: str, department_id: int, created_by: int
) -> Employee:
    """Create an employee in status ``onboarding`` and emit ``employee.created``."""
    employee = store.add(name=name, department_id=department_id)
    await emit(
        "employee.created",
        employee_id=employee.id,
        department_id=employee.department_id,
        created_by=created_by,
    )
    return employee


async def change_status(
    store: EmployeeStore, employee_id: int, *, to_state: EmployeeStatus, actor_id: int
) -> Employee:
    """Move an employee to ``to_state`` and emit ``employee.status_changed``.

    Raises:
        EmployeeNotFoundError: no employee has this id.
        IllegalTransitionError: the state machine does not allow the move; nothing changes.
    """
    employee = store.get(employee_id)
    from_state = employee.status
    if to_state not in ALLOWED_TRANSITIONS[from_state]:
        raise IllegalTransitionError(from_state, to_state)
    employee.status = to_state
    await emit(
        "employee.status_changed",
        employee_id=employee.id,
        from_state=from_state.value,
        to_state=to_state.value,
        actor_id=actor_id,
    )
    return employee
