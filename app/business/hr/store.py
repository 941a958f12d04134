"""In-memory employee storage (the reference service moves it to a database)."""

from __future__ import annotations

import itertools

from app.business.hr.models import Employee, EmployeeNotFoundError

__all__ = ["EmployeeStore"]


class EmployeeStore:
    """Employees by id; ids start at 1 and are never reused."""

    def __init__(self) -> None:
        self._employees: dict[int, Employee] = {}
        self._ids = itertools.count(1)

    def add(self, *, name: str, department_id: int) -> Employee:
        """Store a new employee in the initial status and return it."""
        employee = Employee(id=next(self._ids), name=name, department_id=department_id)
        self._employees[employee.id] = employee
        return employee

    def get(self, employee_id: int) -> Employee:
        """Return the employee.

        Raises:
            EmployeeNotFoundError: no employee has this id.
        """
        try:
            return self._employees[employee_id]
        except KeyError:
            raise EmployeeNotFoundError(employee_id) from None
