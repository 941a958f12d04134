"""Shared fixtures: one PostgreSQL, both anyio backends, a clean registry, captured log records."""

from __future__ import annotations

import collections
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog
from psycopg import sql
from sqlalchemy.engine import make_url

from app.core import catalogue, events
from app.core.catalogue import EventSpec
from app.db import embedded

FAST_AND_UNSAFE = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
"""Settings for the test server: a crash may lose its data, which the tests throw away anyway."""


def libpq(url):
    """A SQLAlchemy URL as the libpq connection string psycopg takes."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session", autouse=True)
def session_database_url():
    """One PostgreSQL database for the session, named in APP_DATABASE_URL for it.

    The server is APP_DATABASE_URL's when that is set (its role must be allowed to create
    databases), else an embedded one in a temporary folder. Either way the tests get a database
    of their own on it, ``app_test_<hex>``, dropped at the end: they never touch the database
    the URL names. Subprocesses (the CLI tests) inherit the variable.
    """
    given = os.environ.get("APP_DATABASE_URL")
    folder = None if given else Path(tempfile.mkdtemp(prefix="app-tests-"))
    server = (
        None
        if folder is None
        else embedded.start(folder / ".app-postgres", settings=FAST_AND_UNSAFE)
    )
    try:
        server_url = given or server.url
        name = f"app_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(libpq(server_url), autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
        try:
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("APP_DATABASE_URL", url)
                yield url
        finally:
            with psycopg.connect(libpq(server_url), autocommit=True) as connection:
                drop = sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
                connection.execute(drop)
    finally:
        if server is not None:
            server.release()
        if folder is not None:
            shutil.rmtree(folder)


@pytest.fixture
def database_url(session_database_url):
    """The session's database, emptied: every table truncated and its identities restarted."""
    with psycopg.connect(libpq(session_database_url), autocommit=True) as connection:
        tables = connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        ).fetchall()
        if tables:
            names = sql.SQL(", ").join(sql.Identifier(table) for (table,) in tables)
            connection.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(names))
    return session_database_url


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every anyio-marked test on asyncio and on trio."""
    return request.param


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> collections.defaultdict[str, list[Any]]:
    """An empty registry and an empty catalogue for this test, swapped in the documented way."""
    fresh: collections.defaultdict[str, Any] = collections.defaultdict(events.Entries)
    monkeypatch.setattr(events, "_handlers", fresh)
    monkeypatch.setattr(catalogue, "_declared", {})
    return fresh


@pytest.fixture
def declare_event(registry: object) -> Callable[..., EventSpec]:
    """Declare an event for this test: ``declare_event("a.b", "x", y=int, optional=("z",))``.

    Fields given by name only take any value; fields given with a type are checked as declared;
    ``optional`` names fields that may be left out.
    """

    def declare_event(
        name: str, *fields: str, optional: tuple[str, ...] = (), **typed: Any
    ) -> EventSpec:
        return catalogue.declare(
            name,
            source="tests",
            payload={**dict.fromkeys(fields, Any), **typed},
            optional=dict.fromkeys(optional, Any),
            purpose="a test event",
        )

    return declare_event


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    """The structlog records emitted during the test, as dicts."""
    with structlog.testing.capture_logs() as records:
        yield records


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    """Restore structlog's configuration after a test that changes it."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


pytest_plugins = ["pytester"]
