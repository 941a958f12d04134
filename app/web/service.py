"""The reference service: HR over a real database, with events delivered after commit.

``create_app()`` builds the FastAPI application. Its lifespan imports the business packages,
checks them against the event catalogue (start-up fails with the report if it does not hold),
opens the database (``APP_DATABASE_URL``, or by default the embedded PostgreSQL in
``./.app-postgres/``: see ``app.db``), turns tracing on (each handler's log lines carry its
event, chain and handler; the chain's correlation id is the request id) and owns the
``BackgroundEmitter`` that delivers each successful request's events after its response. It
also gives the process durable delivery (``app.durable.running``: procrastinate's tables, the
transport, and one embedded worker unless ``APP_WORKER=off``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Final, TypeVar

from fastapi import Depends, FastAPI, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncSession

from app import db, durable
from app.bootstrap import load_business_packages
from app.business import audit, notify
from app.business.hr import (
    EmployeeNotFoundError,
    EmployeeStatus,
    IllegalTransitionError,
)
from app.business.hr import services as hr_services
from app.core.deferred import DEFAULT_GRACE_PERIOD, BackgroundEmitter
from app.core.events import verify
from app.core.tracing import configure_tracing, restore_tracing
from app.web.middleware import RequestEventsMiddleware

__all__ = ["SLOW_HANDLER_AFTER", "create_app"]

SLOW_HANDLER_AFTER: Final = 1.0
"""Seconds after which the service logs a handler run as slow, by default."""


class EmployeeIn(BaseModel):
    """A new employee."""

    name: str = Field(min_length=1, max_length=200)
    department_id: int = Field(ge=1)
    created_by: int = Field(ge=1)


class EmployeeOut(BaseModel):
    """An employee as stored."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    department_id: int
    status: EmployeeStatus


class StatusChangeIn(BaseModel):
    """A requested move in the status state machine."""

    to_state: EmployeeStatus
    actor_id: int = Field(ge=1)


class MailOut(BaseModel):
    """A mail in the outbox."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    employee_id: int
    subject: str
    body: str
    correlation_id: str | None


class AuditEntryOut(BaseModel):
    """A recorded status change."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    employee_id: int
    from_state: str
    to_state: str
    actor_id: int
    correlation_id: str | None


async def request_session() -> AsyncIterator[AsyncSession]:
    """One unit of work per request: its events wait for the commit, then for the response."""
    async with db.unit_of_work() as session:
        yield session


# scope="function": the unit of work commits before the response is sent, so a response
# means the work (and its durable jobs) committed, even if the process dies right after.
Session = Annotated[AsyncSession, Depends(request_session, scope="function")]


def create_app(
    database_url: str | None = None,
    *,
    grace_period: float = DEFAULT_GRACE_PERIOD,
    slow_handler_after: float = SLOW_HANDLER_AFTER,
) -> FastAPI:
    """Build the service.

    Args:
        database_url: A PostgreSQL URL (``postgresql+psycopg://...``); by default
            ``APP_DATABASE_URL``, or the embedded server in ``./.app-postgres/``.
        grace_period: Seconds shutdown waits for pending event deliveries before cancelling
            them (each cancelled one is logged).
        slow_handler_after: Seconds after which a handler run is logged as slow (0: never).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        load_business_packages()
        verify()
        await db.open_database(database_url)
        tracing_before = configure_tracing(slow_after=slow_handler_after)
        try:
            async with (
                durable.running(worker=os.environ.get("APP_WORKER", "on") != "off"),
                BackgroundEmitter(grace_period=grace_period) as emitter,
            ):
                app.state.emitter = emitter
                yield
        finally:
            restore_tracing(tracing_before)
            await db.close_database()

    app = FastAPI(title="HR reference service", lifespan=lifespan)
    app.add_middleware(RequestEventsMiddleware)
    app.add_exception_handler(EmployeeNotFoundError, _not_found)
    app.add_exception_handler(IllegalTransitionError, _conflict)

    @app.post("/employees", status_code=status.HTTP_201_CREATED)
    async def create_employee(body: EmployeeIn, session: Session) -> EmployeeOut:
        employee = await hr_services.create_employee(
            session, name=body.name, department_id=body.department_id, created_by=body.created_by
        )
        return EmployeeOut.model_validate(employee)

    @app.get("/employees/{employee_id}")
    async def get_employee(employee_id: int, session: Session) -> EmployeeOut:
        return EmployeeOut.model_validate(await hr_services.get_employee(session, employee_id))

    @app.post("/employees/{employee_id}/status")
    async def change_status(
        employee_id: int, body: StatusChangeIn, session: Session
    ) -> EmployeeOut:
        employee = await hr_services.change_status(
            session, employee_id, to_state=body.to_state, actor_id=body.actor_id
        )
        return EmployeeOut.model_validate(employee)

    @app.get("/audit")
    async def audit_trail(session: Session) -> list[AuditEntryOut]:
        return _all(AuditEntryOut, await audit.list_audit(session))

    @app.get("/outbox")
    async def outbox(session: Session) -> list[MailOut]:
        return _all(MailOut, await notify.list_outbox(session))

    return app


ModelT = TypeVar("ModelT", bound=BaseModel)


def _all(model: type[ModelT], rows: Sequence[object]) -> list[ModelT]:
    return [model.model_validate(row) for row in rows]


async def _not_found(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=status.HTTP_404_NOT_FOUND)


async def _conflict(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, IllegalTransitionError)  # noqa: S101 - registered for it only
    return JSONResponse(
        {"detail": str(error), "current": error.current, "requested": error.requested},
        status_code=status.HTTP_409_CONFLICT,
    )
