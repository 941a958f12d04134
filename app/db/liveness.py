"""When a pooled connection is worth a ping before it is used.

A ping is a round trip before every query; checking every connection taken from a pool
that way (SQLAlchemy's ``pool_pre_ping``, psycopg_pool's ``check``) was about a seventh of a
durable run's CPU. A connection needs one only when something may have happened to it while
it sat in the pool: it sat there for ``CHECK_IDLE_AFTER`` seconds, or the server sent it
something. A connection idle in a pool is sent nothing, except by a server ending it (a
restart, a ``pg_terminate_backend``, an idle timeout): its message and the closed socket make
it readable, which a zero-timeout ``poll`` tells without a round trip. (A connection left
listening for notifications is sent those too: it only gets pinged more than needed.) What
neither catches fails its first statement, as it could right after a ping: a connection cut
silently less than a second ago, or one whose server is ending it at that very moment (the
termination not yet on the socket).
"""

from __future__ import annotations

import select
import time
from typing import Any, Final, cast

import psycopg
from sqlalchemy import event
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry

__all__ = ["CHECK_IDLE_AFTER", "check_on_checkout", "needs_check"]

CHECK_IDLE_AFTER: Final = 1.0
"""Seconds a pooled connection may sit idle before it is pinged when taken."""

_RETURNED: Final = "app.db.returned"


def needs_check(returned: float | None, connection: psycopg.AsyncConnection[Any]) -> bool:
    """Whether ``connection``, given back to its pool at ``returned`` (``time.monotonic()``;
    None: never, it is new), should be pinged before it is used."""
    if returned is None:
        return False
    if time.monotonic() - returned > CHECK_IDLE_AFTER:
        return True
    try:
        socket = connection.pgconn.socket
    except psycopg.Error:  # already known to be bad: the ping fails and says why
        return True
    poller = select.poll()
    poller.register(socket, select.POLLIN)
    return bool(poller.poll(0))


def check_on_checkout(engine: AsyncEngine) -> None:
    """Make ``engine``'s pool ping a connection when it is taken only if ``needs_check``
    (create the engine without ``pool_pre_ping``). A ping that finds the connection gone
    invalidates every pooled connection, as ``pool_pre_ping`` does, and the pool connects
    again; any other error of the ping fails the checkout."""
    dialect = engine.sync_engine.dialect
    pool = engine.sync_engine.pool

    def returned(_: Any, record: ConnectionPoolEntry) -> None:
        record.info[_RETURNED] = time.monotonic()

    def taken(dbapi_connection: Any, record: ConnectionPoolEntry, _: Any) -> None:
        connection = cast("psycopg.AsyncConnection[Any]", record.driver_connection)
        if not needs_check(record.info.get(_RETURNED), connection):
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as error:
            if not dialect.is_disconnect(error, dbapi_connection, None):
                raise
            raise InvalidatePoolError(f"the pooled connection failed its ping: {error}") from error

    event.listen(pool, "checkin", returned)
    event.listen(pool, "checkout", taken)
