"""The database: PostgreSQL through psycopg 3, one engine, transactions and units of work."""

from __future__ import annotations

import re
import time

import psycopg
import pytest
from conftest import libpq
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app import db
from app.db import liveness

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    """psycopg's async connections run on asyncio."""
    return "asyncio"


async def test_a_transaction_before_the_database_is_open_is_refused():
    """transaction() before open_database() raises DatabaseNotOpenError, saying what to call."""
    with pytest.raises(db.DatabaseNotOpenError, match=r"call app\.db\.open_database\(\) first"):
        async with db.transaction():
            pass


@pytest.mark.parametrize(
    "url", ["sqlite+aiosqlite:///app.db", "postgresql+asyncpg://localhost/app", "mysql://db/app"]
)
async def test_a_url_that_is_not_postgresql_through_psycopg_is_refused(url):
    """One dialect, one driver: any other URL fails before connecting, naming what it got."""
    drivername = make_url(url).drivername
    with pytest.raises(ValueError, match=rf"psycopg 3 .*, not {re.escape(drivername)}$"):
        await db.open_database(url)


async def test_a_plain_postgresql_url_means_psycopg(database_url):
    """postgresql://... opens through psycopg, as postgresql+psycopg://... does."""
    plain = make_url(database_url).set(drivername="postgresql")
    await db.open_database(plain.render_as_string(hide_password=False))
    try:
        async with db.transaction() as session:
            assert await session.scalar(text("SELECT 1")) == 1
            bind = session.get_bind()
    finally:
        await db.close_database()
    assert bind.dialect.driver == "psycopg"


async def test_the_engine_pings_and_hides_parameters(database_url):
    """A dead pooled connection is replaced on checkout, and errors do not show bound values."""
    await db.open_database(database_url)
    try:
        async with db.transaction() as session:
            pid = await session.scalar(text("SELECT pg_backend_pid()"))
        libpq = make_url(database_url).set(drivername="postgresql")
        with psycopg.connect(libpq.render_as_string(hide_password=False)) as other:
            other.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])  # until it exits
        async with db.transaction() as session:  # the server ended it: pinged, replaced
            assert await session.scalar(text("SELECT pg_backend_pid()")) != pid
            with pytest.raises(Exception, match="hidden due to hide_parameters") as caught:
                await session.execute(text("SELECT 1 / :zero"), {"zero": 0})
            assert "'zero': 0" not in str(caught.value)
    finally:
        await db.close_database()


async def test_a_pooled_connection_is_pinged_only_after_a_second_idle(database_url, monkeypatch):
    """A connection taken again at once costs no ping (a round trip); one that sat idle for
    ``CHECK_IDLE_AFTER`` seconds gets one."""
    await db.open_database(database_url)
    try:
        async with db.transaction() as session:
            dialect = session.get_bind().dialect
        pings = []
        ping = dialect.do_ping
        monkeypatch.setattr(
            dialect, "do_ping", lambda connection: pings.append(1) or ping(connection)
        )
        for _ in range(3):
            async with db.transaction() as session:
                assert await session.scalar(text("SELECT 1")) == 1
        assert pings == []
        monkeypatch.setattr(liveness, "CHECK_IDLE_AFTER", 0.0)
        async with db.transaction() as session:
            assert await session.scalar(text("SELECT 1")) == 1
        assert pings == [1]
    finally:
        await db.close_database()


async def test_a_connection_the_server_ended_needs_a_check_at_once(database_url):
    """``needs_check``: never for a new connection, not for one returned just now, and yes for
    one whose server ended it (its socket turns readable), without waiting for the idle time."""
    url = libpq(database_url)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        pid = connection.info.backend_pid
        returned = time.monotonic()
        assert not liveness.needs_check(None, connection)
        assert not liveness.needs_check(returned, connection)
        with psycopg.connect(url, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])
        assert liveness.needs_check(returned, connection)
