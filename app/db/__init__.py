"""The database: PostgreSQL through one SQLAlchemy async engine for the process, and transactions.

Business packages define their tables on ``Base``. Work that emits events runs in
``unit_of_work()``, so its events wait for the commit; event handlers write in a
``transaction()`` of their own. (An emit delivered inside an open write transaction would make
a writing handler wait for that transaction's row locks, which it holds until it commits.)
The entry point opens the database once (``open_database``) and closes it at shutdown.

The connection of the transaction open in this context is ``current_connection()``: the
durable transport enqueues jobs on it, so they commit or roll back with the business data. A
worker runs a durable handler in ``handler_unit_of_work()``, a transaction on one connection
with no session until the handler asks for one: ``transaction()`` inside is then a savepoint of
that transaction, whose commit also records the job in the inbox.

The database is ``APP_DATABASE_URL`` or, when that is unset, the embedded server whose data
lives in ``./.app-postgres/`` (``app.db.embedded``): the first process to open it starts it,
others in the same folder join it, and the last to close it stops it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Final

import anyio
import anyio.to_thread
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

from app.core.deferred import deferred_events
from app.db.liveness import check_on_checkout

if TYPE_CHECKING:
    from app.db.embedded import EmbeddedServer

__all__ = [
    "Base",
    "DatabaseNotOpenError",
    "RunRolledBackError",
    "close_database",
    "conninfo",
    "current_connection",
    "current_session",
    "database_url",
    "handler_unit_of_work",
    "open_database",
    "transaction",
    "unit_of_work",
]

_SCHEMA_LOCK: Final = 0x6170705F736368  # advisory lock: concurrent start-ups create tables in turn
_DRIVERNAMES: Final = frozenset({"postgresql", "postgres", "postgresql+psycopg"})


class Base(DeclarativeBase):
    """The declarative base of every table."""


class DatabaseNotOpenError(RuntimeError):
    """A transaction was asked for before ``open_database`` (or after ``close_database``)."""


class RunRolledBackError(RuntimeError):
    """A durable handler's run lost its transaction before its end (its session was rolled
    back), or work that outlived the run asked for it: nothing of the run is kept."""


_engine: AsyncEngine | None = None
_sessions: async_sessionmaker[AsyncSession] | None = None
_server: EmbeddedServer | None = None

_session: ContextVar[AsyncSession | None] = ContextVar("app.db.session", default=None)
"""The session of the innermost transaction open in this context."""


def database_url() -> str | None:
    """The URL in ``APP_DATABASE_URL``, or None when it is unset: the embedded server."""
    return os.environ.get("APP_DATABASE_URL") or None


async def open_database(url: str | None = None, *, statement_timeout: float | None = None) -> None:
    """Create the engine and every table the imported packages define (existing ones are kept).

    Import the business packages first: a table not yet defined is not created.

    Args:
        url: A PostgreSQL URL, ``postgresql+psycopg://user:password@host:port/name``
            (``postgresql://`` means the same). None: ``APP_DATABASE_URL``, or when that is
            unset the embedded server in ``./.app-postgres/``, started or joined.
        statement_timeout: Seconds a statement may run, and may wait for a lock, on every
            session (PostgreSQL's ``statement_timeout`` and ``lock_timeout``); a statement
            past it fails (``sqlalchemy.exc.OperationalError``). None: no limit.

    Raises:
        ValueError: ``url`` is not a PostgreSQL URL.
        app.db.embedded.EmbeddedPostgresError: the embedded server could not start; the message
            says how to set ``APP_DATABASE_URL`` instead.
        sqlalchemy.exc.OperationalError: the server cannot be reached.
    """
    global _engine, _sessions, _server
    await close_database()
    url = url or database_url()
    server = None
    if url is None:
        from app.db import embedded  # POSIX only, and only needed without a URL

        server = await anyio.to_thread.run_sync(embedded.start)
        url = server.url
    engine = None
    opened = False
    try:
        engine = create_async_engine(
            _postgresql(url),
            hide_parameters=True,
            connect_args=_timeouts(statement_timeout),
        )
        check_on_checkout(engine)  # instead of pool_pre_ping's round trip at every checkout
        async with engine.begin() as connection:
            await connection.execute(text(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})"))
            await connection.run_sync(Base.metadata.create_all)
        opened = True
    finally:
        if not opened:
            with anyio.CancelScope(shield=True):
                if engine is not None:
                    await engine.dispose()
                if server is not None:
                    await anyio.to_thread.run_sync(server.release)
    _engine, _server = engine, server
    _sessions = async_sessionmaker(engine, expire_on_commit=False)


async def close_database() -> None:
    """Dispose of the engine, if one is open, and leave the embedded server if it used one.

    The last process to leave the embedded server stops it; that step runs even when the
    caller is being cancelled.
    """
    global _engine, _sessions, _server
    engine, _engine, _sessions = _engine, None, None
    server, _server = _server, None
    try:
        if engine is not None:
            await engine.dispose()
    finally:
        if server is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(server.release)


def _timeouts(seconds: float | None) -> dict[str, str]:
    """psycopg's connection arguments that bound every statement and lock wait to ``seconds``."""
    if seconds is None:
        return {}
    milliseconds = max(1, round(seconds * 1000))
    return {"options": f"-c statement_timeout={milliseconds} -c lock_timeout={milliseconds}"}


def _postgresql(url: str) -> URL:
    """``url`` as the engine takes it: PostgreSQL through psycopg 3.

    Raises:
        ValueError: it is not a PostgreSQL URL.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as error:
        raise ValueError(f"not a database URL: {error}") from error
    if parsed.drivername not in _DRIVERNAMES:
        raise ValueError(
            f"the database must be PostgreSQL through psycopg 3 "
            f"(postgresql+psycopg://user:password@host:port/name), not {parsed.drivername}"
        )
    return parsed.set(drivername="postgresql+psycopg")


def conninfo() -> str:
    """The open database as a libpq connection URI (``postgresql://...``), for other clients
    (procrastinate's pool).

    Raises:
        DatabaseNotOpenError: the database is not open.
    """
    if _engine is None:
        raise DatabaseNotOpenError("the database is not open; call app.db.open_database() first")
    return _engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def current_session() -> AsyncSession | None:
    """The session of the transaction open in this context (``transaction()``,
    ``unit_of_work()``, and in a durable handler the run's), or None when none is open.

    Raises:
        RunRolledBackError: asked by work a durable handler started, once its run has ended.
    """
    run = _run.get()
    if run is not None:
        return run.session()
    session = _session.get()
    return session if session is not None and session.in_transaction() else None


async def current_connection() -> AsyncConnection | None:
    """The connection of the transaction open in this context (``transaction()``,
    ``unit_of_work()``, ``handler_unit_of_work()``), or None when none is open.

    Raises:
        RunRolledBackError: asked by work a durable handler started, once its run has ended.
    """
    run = _run.get()
    if run is not None:
        return run.open_connection()
    session = current_session()
    return None if session is None else await session.connection()


class _HandlerRun:
    """A ``handler_unit_of_work()``: its connection, and the session made on it when first
    asked for (``join_transaction_mode="rollback_only"``: the session never commits the
    run's transaction; its blocks are savepoints of it)."""

    __slots__ = ("_ended", "_session", "connection")

    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection
        self._session: AsyncSession | None = None
        self._ended = False

    def open_connection(self) -> AsyncConnection:
        """The run's connection.

        Raises:
            RunRolledBackError: the run has ended (asked by work that outlived it).
        """
        if self._ended:
            raise RunRolledBackError(
                "the durable run this work was started in has ended: a task that outlives its "
                "handler cannot write in the handler's transaction"
            )
        return self.connection

    def session(self) -> AsyncSession:
        """The run's session, made on first use (see ``open_connection`` for what it raises)."""
        if self._session is None:
            self._session = AsyncSession(
                bind=self.open_connection(),
                join_transaction_mode="rollback_only",
                expire_on_commit=False,
            )
        return self._session

    def check_kept(self) -> None:
        """Raise ``RunRolledBackError`` if the run's transaction is no longer open: the session
        rolled it back (``session.rollback()``, or a flush that failed outside a
        ``transaction()`` block), which would otherwise end the run as if it had succeeded."""
        if not self.connection.in_transaction():
            raise RunRolledBackError(
                "the durable handler's session rolled back the run's transaction (a "
                "session.rollback(), or a flush that failed outside a db.transaction() "
                "block): nothing it wrote is kept, so the run fails and the job runs again"
            )

    async def flush(self) -> None:
        """Write what the handler left pending in its session, if it made one."""
        if self._session is not None:
            await self._session.flush()

    async def close(self) -> None:
        """Close the session, if one was made (the run's transaction is not touched)."""
        session, self._session, self._ended = self._session, None, True
        if session is not None:
            await session.close()


_run: ContextVar[_HandlerRun | None] = ContextVar("app.db.run", default=None)
"""The ``handler_unit_of_work()`` open in this context, whose transaction ``transaction()``
joins (as a savepoint) instead of opening its own."""


@asynccontextmanager
async def handler_unit_of_work() -> AsyncIterator[AsyncConnection]:
    """A unit of work on one pooled connection, its session made only when first asked for: a
    worker runs a durable handler in it, and commits the job's inbox row with whatever the
    handler wrote.

    Inside, ``current_session()`` is the run's session, and ``transaction()`` a savepoint in
    it: released when its block ends, rolled back alone if it raises, committed with the
    rest; objects carry from block to block as in one session. A handler that asks for no
    session costs none. Events emitted inside wait for the commit, as in ``unit_of_work()``.
    Committed (the session flushed first) when the block ends, rolled back if it raises.
    The session's own ``commit()`` and ``rollback()`` are not the handler's to call: the
    blocks commit themselves, and the run commits the rest.

    Raises:
        DatabaseNotOpenError: the database is not open.
        RunRolledBackError: the session rolled back the run's transaction before its end.
    """
    if _engine is None:
        raise DatabaseNotOpenError("the database is not open; call app.db.open_database() first")
    async with deferred_events(), _engine.begin() as connection:
        run = _HandlerRun(connection)
        token = _run.set(run)
        try:
            try:
                yield connection
                await run.flush()  # still the run's: what a flush listener emits joins it
                run.check_kept()
            finally:
                await run.close()
        finally:
            _run.reset(token)


@asynccontextmanager
async def transaction() -> AsyncIterator[AsyncSession]:
    """A session in its own transaction: committed when the block ends, rolled back if it raises.

    Inside a durable handler (``handler_unit_of_work()``) it is a savepoint in the run's
    session: released when the block ends, rolled back if it raises, committed with the
    job's inbox row.

    Raises:
        DatabaseNotOpenError: the database is not open.
        RunRolledBackError: opened by work a durable handler started, once its run has ended.
    """
    run = _run.get()
    if run is not None:
        session = run.session()
        async with session.begin_nested():
            yield session
        return
    if _sessions is None:
        raise DatabaseNotOpenError("the database is not open; call app.db.open_database() first")
    async with _sessions.begin() as session:
        token = _session.set(session)
        try:
            yield session
        finally:
            _session.reset(token)


@asynccontextmanager
async def unit_of_work() -> AsyncIterator[AsyncSession]:
    """A transaction whose events are delivered only once it has committed.

    Events emitted inside are checked at once and queued (``deferred_events``): a rollback
    drops them; inside an enclosing deferral scope they go on to wait for that one.
    """
    async with deferred_events(), transaction() as session:
        yield session
