"""Shared fixtures: one PostgreSQL, both anyio backends, a clean registry, captured log records,
the reference service."""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg
import pytest
import structlog
from fastapi import FastAPI
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app import db
from app.core import catalogue, events
from app.core.catalogue import EventSpec
from app.core.logging import add_event_context
from app.db import embedded
from app.web.service import create_app

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
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Run every anyio-marked test on asyncio and on trio; with ``APP_TEST_EAGER_TASKS=1``
    (Python 3.12+), asyncio's loop starts tasks eagerly (``asyncio.eager_task_factory``)."""
    if request.param == "asyncio" and os.environ.get("APP_TEST_EAGER_TASKS") == "1":
        return ("asyncio", {"loop_factory": _eager_loop})
    return request.param


def _eager_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    loop.set_task_factory(asyncio.eager_task_factory)
    return loop


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> collections.defaultdict[str, list[Any]]:
    """An empty registry and an empty catalogue for this test, swapped in the documented way."""
    fresh: collections.defaultdict[str, list[Any]] = collections.defaultdict(list)
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


@dataclass
class Service:
    app: FastAPI
    client: httpx.AsyncClient

    async def settle(self) -> None:
        """Wait until every event delivery started so far has finished, the durable jobs
        (run by the service's embedded worker) included."""
        with anyio.fail_after(10):
            await self.app.state.emitter.join()
            while await unfinished_jobs():  # noqa: ASYNC110 - polls the database
                await anyio.sleep(0.02)


async def unfinished_jobs() -> int:
    """How many durable jobs wait or run."""
    async with db.transaction() as session:
        count = await session.scalar(
            text("SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')")
        )
    return int(count or 0)


def client_for(app):
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://service")


@asynccontextmanager
async def running(database_url, **options):
    """The service built with ``options``, started (its lifespan entered), and its client."""
    app = create_app(database_url, **{"grace_period": 2, **options})
    async with app.router.lifespan_context(app), client_for(app) as client:
        yield Service(app, client)


@pytest.fixture
async def service(database_url):
    """The service, started (its lifespan entered) over an empty database."""
    async with running(database_url) as service:
        yield service


@pytest.fixture
async def trusting_service(database_url):
    """The service set to trust its clients' X-Request-ID, over an empty database."""
    async with running(database_url, trust_request_id=True) as service:
        yield service


@pytest.fixture
def log_records(restore_structlog):
    """Log records with the context variables merged in, as the service logs them."""
    capture = structlog.testing.LogCapture()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, add_event_context, capture]
    )
    return capture.entries


pytest_plugins = ["pytester"]
