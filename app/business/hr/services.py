"""HR use cases; each runs in the caller's session and announces what it did with an event."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from app.business.hr.models import (
    ALLOWED_TRANSITIONS,
    Employee,
    EmployeeNotFoundError,
    EmployeeStatus,
    IllegalTransitionError,
)
from app.utils import emit

__all__ = ["change_status", "create_employee", "get_employee"]


async def create_employee(
    session: AsyncSession, *, name: str, department_id: int, created_by: int
) -> Employee:
    """Create an employee in status ``onboarding`` and emit ``employee.created``."""
    employee = Employee(
        name=name, department_id=department_id, status=EmployeeStatus.ONBOARDING.value
    )
    session.add(employee)
    await session.flush()
    await emit(
        "employee.created",
        employee_id=employee.id,
        department_id=employee.department_id,
        created_by=created_by,
    )
    return employee


async def get_employee(session: AsyncSession, employee_id: int) -> Employee:
    """Return the employee.

    Raises:
        EmployeeNotFoundError: no employee has this id.
    """
    employee = await session.get(Employee, employee_id)
    if employee is None:
        raise EmployeeNotFoundError(employee_id)
    return employee


async def change_status(
    session: AsyncSession, employee_id: int, *, to_state: EmployeeStatus, actor_id: int
) -> Employee:
    """Move an employee to ``to_state`` and emit ``employee.status_changed``.

    Raises:
        EmployeeNotFoundError: no employee has this id.
        IllegalTransitionError: the state machine does not allow the move; nothing changes.
    """
    employee = await get_employee(session, employee_id)
    from_state = EmployeeStatus(employee.status)
    if to_state not in ALLOWED_TRANSITIONS[from_state]:
        raise IllegalTransitionError(from_state, to_state)
    employee.status = to_state.value
    await session.flush()
    await emit(
        "employee.status_changed",
        employee_id=employee.id,
        from_state=from_state.value,
        to_state=to_state.value,
        actor_id=actor_id,
    )
    return employee
