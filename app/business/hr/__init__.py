"""Human resources: employees and their status; publishes ``employee.*`` events."""

from __future__ import annotations

from app.business.hr import events as events  # declares the events hr publishes
from app.business.hr.models import (
    Employee,
    EmployeeNotFoundError,
    EmployeeStatus,
    IllegalTransitionError,
)
from app.business.hr.services import change_status, create_employee, get_employee

__all__ = [
    "Employee",
    "EmployeeNotFoundError",
    "EmployeeStatus",
    "IllegalTransitionError",
    "change_status",
    "create_employee",
    "get_employee",
]
