"""Employees and the status state machine they move through."""

from __future__ import annotations

import enum

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base

__all__ = [
    "ALLOWED_TRANSITIONS",
    "Employee",
    "EmployeeNotFoundError",
    "EmployeeStatus",
    "IllegalTransitionError",
]


class EmployeeStatus(enum.StrEnum):
    """Where an employee stands; ``ALLOWED_TRANSITIONS`` says where each may go next."""

    ONBOARDING = "onboarding"
    ACTIVE = "active"
    ON_LEAVE = "on_leave"
    TERMINATED = "terminated"


ALLOWED_TRANSITIONS: dict[EmployeeStatus, frozenset[EmployeeStatus]] = {
    EmployeeStatus.ONBOARDING: frozenset({EmployeeStatus.ACTIVE, EmployeeStatus.TERMINATED}),
    EmployeeStatus.ACTIVE: frozenset({EmployeeStatus.ON_LEAVE, EmployeeStatus.TERMINATED}),
    EmployeeStatus.ON_LEAVE: frozenset({EmployeeStatus.ACTIVE, EmployeeStatus.TERMINATED}),
    EmployeeStatus.TERMINATED: frozenset(),
}


class Employee(Base):
    """One employee of one department."""

    __tablename__ = "hr_employees"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    department_id: Mapped[int]
    status: Mapped[str] = mapped_column(String(20), default=EmployeeStatus.ONBOARDING.value)


class EmployeeNotFoundError(LookupError):
    """No employee has the given id."""

    def __init__(self, employee_id: int) -> None:
        super().__init__(f"no employee with id {employee_id}")
        self.employee_id = employee_id


class IllegalTransitionError(ValueError):
    """A status change the state machine does not allow."""

    def __init__(self, current: EmployeeStatus, requested: EmployeeStatus) -> None:
        allowed = ", ".join(sorted(ALLOWED_TRANSITIONS[current])) or "none"
        super().__init__(
            f"cannot move an employee from {current} to {requested}; allowed from {current}: "
            f"{allowed}"
        )
        self.current = current
        self.requested = requested
