"""The reference service: HR over a real database, with events delivered after commit.

``create_app()`` builds the FastAPI application. Its lifespan imports the business packages,
checks them against the event catalogue (start-up fails with the report if it does not hold),
opens the database (``APP_DATABASE_URL``, or by default the embedded PostgreSQL in
``./.app-postgres/``: see ``app.db``), turns tracing on (each handler's log lines carry its
event, chain and handler; the chain's correlation id is the request id) and owns the
``BackgroundEmitter`` that delivers each successful request's events after its response. It
also gives the process durable delivery (``app.durable.running``: procrastinate's tables, the
transport, and one embedded worker running ``worker_concurrency`` jobs at once unless
``APP_WORKER=off``), and keeps its procrastinate app in ``app.state.durable_queue``. With
``APP_CONSOLE_TOKEN`` set it mounts the events console (``app.console``) at ``/events``.

Each route commits its unit of work before it returns, so a 2xx is only sent for work that
is committed (its durable jobs included), and a commit that fails is a 500 that delivers
nothing. Input is refused with 422 before it reaches the database: integers beyond the 32-bit
columns that hold them, text with NUL or lone surrogates, JSON with ``NaN``, infinities or
absurd nesting.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, Final, TypeVar

import anyio
import structlog
from fastapi import FastAPI, Path, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app import db, durable
from app.bootstrap import load_business_packages
from app.business import audit, notify
from app.business.hr import (
    EmployeeNotFoundError,
    EmployeeStatus,
    IllegalTransitionError,
)
from app.business.hr import services as hr_services
from app.console import console_router
from app.core.deferred import DEFAULT_GRACE_PERIOD, BackgroundEmitter
from app.core.events import verify
from app.core.tracing import configure_tracing, restore_tracing
from app.web.middleware import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MAX_BODY_SIZE,
    RequestEventsMiddleware,
)

__all__ = [
    "DEFAULT_STATEMENT_TIMEOUT",
    "DEFAULT_WORKER_CONCURRENCY",
    "INT4_MAX",
    "SLOW_HANDLER_AFTER",
    "Shutdown",
    "create_app",
]

log = structlog.get_logger(__name__)

SLOW_HANDLER_AFTER: Final = 1.0
"""Seconds after which the service logs a handler run as slow, by default."""
DEFAULT_STATEMENT_TIMEOUT: Final = 5.0
"""Seconds a statement may run, or wait for a lock, on the service's sessions, by default."""
DEFAULT_WORKER_CONCURRENCY: Final = 4
"""Durable jobs the embedded worker runs at once, by default."""
INT4_MAX: Final = 2**31 - 1
"""The largest value of the 32-bit integer columns (ids, actors): the API accepts no more."""


def _storable(text: str) -> str:
    """Refuse text that PostgreSQL cannot store (NUL) or UTF-8 cannot encode (lone surrogates).

    Raises:
        ValueError: it holds NUL or a lone surrogate.
    """
    if "\x00" in text:
        raise ValueError("must not contain NUL (\\u0000)")
    if any("\ud800" <= char <= "\udfff" for char in text):
        raise ValueError("must not contain lone surrogates (\\ud800 to \\udfff)")
    return text


Id = Annotated[int, Field(ge=1, le=INT4_MAX)]
"""An id or actor: a positive integer that fits the 32-bit column holding it."""
Text = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_storable)]
"""A name: 1 to 200 characters, none of them NUL or a lone surrogate."""


class EmployeeIn(BaseModel):
    """A new employee."""

    name: Text
    department_id: Id
    created_by: Id


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
    actor_id: Id


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


class Problem(BaseModel):
    """Why a request was refused or failed."""

    detail: str


class Conflict(Problem):
    """A move the state machine forbids: where the employee is and where it was asked to go."""

    current: EmployeeStatus
    requested: EmployeeStatus


class ServerError(Problem):
    """The request failed; nothing it did was committed. Its log lines carry ``request_id``."""

    request_id: str


EmployeeId = Annotated[int, Path(ge=1, le=INT4_MAX)]
_NOT_FOUND: Final[dict[int | str, dict[str, Any]]] = {
    404: {"model": Problem, "description": "No employee has this id"}
}
_CONFLICT: Final[dict[int | str, dict[str, Any]]] = {
    409: {"model": Conflict, "description": "The state machine forbids this move"}
}
_EVERY_ROUTE: Final[dict[int | str, dict[str, Any]]] = {
    408: {"model": Problem, "description": "The request body was not sent in time"},
    413: {"model": Problem, "description": "The request body is larger than the limit"},
    500: {"model": ServerError, "description": "The request failed; nothing was committed"},
}


class Shutdown:
    """How long the service waits, at shutdown, for its in-process deliveries.

    The lifespan waits up to ``grace_period`` seconds; ``hurry()`` (a second signal) stops the
    wait at once. Either way, what is still running is then cancelled and logged once by the
    ``BackgroundEmitter`` (``"background deliveries cancelled"``, with event ids and
    correlation ids).
    """

    def __init__(self, grace_period: float) -> None:
        self.grace_period = grace_period
        self.hurried = False
        self._waiting: anyio.CancelScope | None = None
        self._on_stop: list[Callable[[], None]] = []

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the server stops accepting (``stop()``), before it waits for
        the requests in flight: to end those that would never end (the console's streams)."""
        self._on_stop.append(callback)

    def stop(self) -> None:
        """The server stopped accepting: call each ``on_stop`` callback once, in order, on the
        event loop's thread. A callback that raises is logged and the next one runs."""
        callbacks, self._on_stop = self._on_stop, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("shutdown callback failed")

    def hurry(self) -> None:
        """Stop waiting for deliveries (now, or as soon as shutdown starts). Call it on the
        event loop's thread."""
        self.hurried = True
        if self._waiting is not None:
            self._waiting.cancel()

    async def drain(self, emitter: BackgroundEmitter) -> None:
        """Wait for the emitter's deliveries, up to the grace period or until ``hurry()``; then
        leave the emitter nothing to wait for, so it cancels and logs what is left at once."""
        if not self.hurried:
            with anyio.CancelScope(shield=True) as self._waiting:
                self._waiting.deadline = anyio.current_time() + self.grace_period
                await emitter.join()
        emitter.grace_period = 0


class _StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = _strict_json(await self.body())
        return self._json


class _StrictJSONRoute(APIRoute):
    """Routes whose JSON bodies are parsed strictly: a body that is not UTF-8, holds an
    over-long integer or nests absurdly deep is answered 422 (a JSON decode error), not 400 or
    500. ``NaN`` and infinities parse, and the model refuses them naming the field."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_json_handler(request: Request) -> Response:
            return await handler(_StrictJSONRequest(request.scope, request.receive))

        return strict_json_handler


def _strict_json(body: bytes) -> Any:
    """Parse a JSON body.

    Raises:
        json.JSONDecodeError: not UTF-8, not JSON, an integer of 4,300 digits or more, or
            nesting deeper than the parser's recursion limit.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise json.JSONDecodeError("the body is not UTF-8", "", error.start) from error
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError as error:
        raise json.JSONDecodeError("nested too deeply", text, 0) from error
    except ValueError as error:  # int()'s limit on digits
        raise json.JSONDecodeError("a number is too long", text, 0) from error


def create_app(
    database_url: str | None = None,
    *,
    grace_period: float = DEFAULT_GRACE_PERIOD,
    slow_handler_after: float = SLOW_HANDLER_AFTER,
    trust_request_id: bool = False,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
    worker_concurrency: int = DEFAULT_WORKER_CONCURRENCY,
) -> FastAPI:
    """Build the service.

    Args:
        database_url: A PostgreSQL URL (``postgresql+psycopg://...``); by default
            ``APP_DATABASE_URL``, or the embedded server in ``./.app-postgres/``.
        grace_period: Seconds shutdown waits for pending event deliveries before cancelling
            them (each cancelled one is logged); ``app.state.shutdown.hurry()`` cuts it short.
        slow_handler_after: Seconds after which a handler run is logged as slow (0: never).
        trust_request_id: Take a client's ``X-Request-ID`` as the request id and correlation
            id; off, the service makes its own and logs the client's as ``client_request_id``.
        max_body_size: Bytes a request body may hold (413 above it).
        body_timeout: Seconds a client has to send a request body (408 after it).
        statement_timeout: Seconds a statement may run, and may wait for a lock, on the
            service's sessions (the handlers' included), so a blocked database cannot hold
            shutdown past its grace period.
        worker_concurrency: Durable jobs the embedded worker runs at once (it runs unless
            ``APP_WORKER=off``).

    Raises:
        ValueError: ``worker_concurrency`` is less than 1.
    """
    if worker_concurrency < 1:
        raise ValueError(f"worker_concurrency must be 1 or more, not {worker_concurrency}")
    shutdown = Shutdown(grace_period)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        load_business_packages()
        verify()
        await db.open_database(database_url, statement_timeout=statement_timeout)
        tracing_before = configure_tracing(slow_after=slow_handler_after)
        try:
            async with (
                durable.running(
                    worker=os.environ.get("APP_WORKER", "on") != "off",
                    concurrency=worker_concurrency,
                ) as queue,
                BackgroundEmitter(grace_period=grace_period) as emitter,
            ):
                app.state.emitter = emitter
                app.state.durable_queue = queue  # the console's Retry uses it
                yield
                await shutdown.drain(emitter)
        finally:
            restore_tracing(tracing_before)
            await db.close_database()

    app = FastAPI(title="HR reference service", lifespan=lifespan, responses=_EVERY_ROUTE)
    app.router.route_class = _StrictJSONRoute
    app.state.shutdown = shutdown
    app.add_middleware(
        RequestEventsMiddleware,
        trust_request_id=trust_request_id,
        max_body_size=max_body_size,
        body_timeout=body_timeout,
    )
    if os.environ.get("APP_CONSOLE_TOKEN"):
        console = console_router()
        app.include_router(console, prefix="/events")
        shutdown.on_stop(console.close)  # open pages must not hold the shutdown
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(EmployeeNotFoundError, _not_found)
    app.add_exception_handler(IllegalTransitionError, _conflict)

    # Each route commits before it returns: the response is only sent for committed work.
    @app.post("/employees", status_code=status.HTTP_201_CREATED)
    async def create_employee(body: EmployeeIn) -> EmployeeOut:
        async with db.unit_of_work() as session:
            employee = await hr_services.create_employee(
                session,
                name=body.name,
                department_id=body.department_id,
                created_by=body.created_by,
            )
        return EmployeeOut.model_validate(employee)

    @app.get("/employees/{employee_id}", responses=_NOT_FOUND)
    async def get_employee(employee_id: EmployeeId) -> EmployeeOut:
        async with db.transaction() as session:
            employee = await hr_services.get_employee(session, employee_id)
        return EmployeeOut.model_validate(employee)

    @app.post("/employees/{employee_id}/status", responses={**_NOT_FOUND, **_CONFLICT})
    async def change_status(employee_id: EmployeeId, body: StatusChangeIn) -> EmployeeOut:
        async with db.unit_of_work() as session:
            employee = await hr_services.change_status(
                session, employee_id, to_state=body.to_state, actor_id=body.actor_id
            )
        return EmployeeOut.model_validate(employee)

    @app.get("/audit")
    async def audit_trail() -> list[AuditEntryOut]:
        async with db.transaction() as session:
            return _all(AuditEntryOut, await audit.list_audit(session))

    @app.get("/outbox")
    async def outbox() -> list[MailOut]:
        async with db.transaction() as session:
            return _all(MailOut, await notify.list_outbox(session))

    return app


ModelT = TypeVar("ModelT", bound=BaseModel)


def _all(model: type[ModelT], rows: Sequence[object]) -> list[ModelT]:
    return [model.model_validate(row) for row in rows]


async def _invalid(request: Request, error: Exception) -> JSONResponse:
    """422 naming each field and what is wrong with it, without echoing the input (which may
    be what cannot be encoded: NaN, a lone surrogate, deep nesting)."""
    assert isinstance(error, RequestValidationError)  # noqa: S101 - registered for it only
    detail = []
    for problem in error.errors():
        message = problem["msg"]
        if problem["type"] == "json_invalid":
            message = f"{message}: {problem.get('ctx', {}).get('error', 'not JSON')}"
        detail.append({"loc": list(problem["loc"]), "msg": message, "type": problem["type"]})
    return JSONResponse({"detail": detail}, status_code=422)


async def _not_found(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=status.HTTP_404_NOT_FOUND)


async def _conflict(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, IllegalTransitionError)  # noqa: S101 - registered for it only
    return JSONResponse(
        {"detail": str(error), "current": error.current, "requested": error.requested},
        status_code=status.HTTP_409_CONFLICT,
    )
