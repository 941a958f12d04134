"""A durable handler for the tests that run real workers: it writes a mark in the database
and a line in a file (outside the database) per run, and can be made slow or failing.

Both sides register it (``register()``): the test, whose emits enqueue its jobs, and the
worker subprocess (``durable_worker.py``), which runs them. Environment:

- ``TEST_RUNS_FILE``: the file each run appends ``start <event_id> <pid>`` to;
- ``TEST_SLOW``: seconds each run sleeps after writing its mark, before its commit;
- ``TEST_FAIL_FILE``: while this file exists, each run raises ``ConnectionError``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from app import db
from app.core.events import current_event, on

HANDLER_ID = "tests.mark"


class Mark(db.Base):
    """One committed run of the handler."""

    __tablename__ = "test_durable_marks"

    id: Mapped[int] = mapped_column(primary_key=True)
    employee_id: Mapped[int]
    event_id: Mapped[str] = mapped_column(String(36))
    pid: Mapped[int]


async def mark(*, employee_id: int, **_: Any) -> None:
    """Record this run in the runs file, then write a mark in the handler's transaction."""
    event = current_event()
    assert event is not None
    runs = os.environ.get("TEST_RUNS_FILE")
    if runs:
        with Path(runs).open("a") as file:  # noqa: ASYNC230 - one short line
            file.write(f"start {event.event_id} {os.getpid()}\n")
    failing = os.environ.get("TEST_FAIL_FILE")
    if failing and Path(failing).exists():  # noqa: ASYNC240 - one stat
        raise ConnectionError("mark server down")
    async with db.transaction() as session:
        session.add(Mark(employee_id=employee_id, event_id=event.event_id, pid=os.getpid()))
        await anyio.sleep(float(os.environ.get("TEST_SLOW") or 0))


def register(max_attempts: int = 3) -> None:
    """Register ``mark`` as a durable handler of employee.created."""
    on("employee.created", durable=True, id=HANDLER_ID, max_attempts=max_attempts, timeout=30)(mark)
