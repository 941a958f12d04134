"""The database: one SQLAlchemy async engine for the process, and transactions on it.

Business packages define their tables on ``Base``. Work that emits events runs in
``unit_of_work()``, so its events wait for the commit; event handlers write in a
``transaction()`` of their own. (An emit delivered inside an open write transaction would
make a writing handler wait for that transaction's lock: on SQLite, until it times out.)
The entry point opens the database once (``open_database``) and closes it at shutdown.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import StaticPool

from app.core.deferred import deferred_events

__all__ = [
    "DEFAULT_DATABASE_URL",
    "Base",
    "DatabaseNotOpenError",
    "close_database",
    "database_url",
    "open_database",
    "transaction",
    "unit_of_work",
]

DEFAULT_DATABASE_URL: Final = "sqlite+aiosqlite:///./app.db"
"""A SQLite file in the working directory: no set-up at all."""


class Base(DeclarativeBase):
    """The declarative base of every table."""


class DatabaseNotOpenError(RuntimeError):
    """A transaction was asked for before ``open_database`` (or after ``close_database``)."""


_engine: AsyncEngine | None = None
_sessions: async_sessionmaker[AsyncSession] | None = None


def database_url() -> str:
    """The URL from ``APP_DATABASE_URL``, or a SQLite file in the working directory."""
    return os.environ.get("APP_DATABASE_URL") or DEFAULT_DATABASE_URL


async def open_database(url: str) -> None:
    """Create the engine for ``url`` and every table the imported packages define.

    Import the business packages first: a table not yet defined is not created.
    """
    global _engine, _sessions
    await close_database()
    in_memory = url.startswith("sqlite") and (":memory:" in url or url.endswith("://"))
    engine = (
        create_async_engine(url, poolclass=StaticPool) if in_memory else create_async_engine(url)
    )
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    _engine = engine
    _sessions = async_sessionmaker(engine, expire_on_commit=False)


async def close_database() -> None:
    """Dispose of the engine, if one is open."""
    global _engine, _sessions
    engine, _engine, _sessions = _engine, None, None
    if engine is not None:
        await engine.dispose()


@asynccontextmanager
async def transaction() -> AsyncIterator[AsyncSession]:
    """A session in its own transaction: committed when the block ends, rolled back if it raises.

    Raises:
        DatabaseNotOpenError: the database is not open.
    """
    if _sessions is None:
        raise DatabaseNotOpenError("the database is not open; call app.db.open_database() first")
    async with _sessions.begin() as session:
        yield session


@asynccontextmanager
async def unit_of_work() -> AsyncIterator[AsyncSession]:
    """A transaction whose events are delivered only once it has committed.

    Events emitted inside are checked at once and queued (``deferred_events``): a rollback
    drops them; inside an enclosing deferral scope they go on to wait for that one.
    """
    async with deferred_events(), transaction() as session:
        yield session
