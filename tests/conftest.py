"""Shared fixtures: both anyio backends, a clean registry, captured log records."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from app.core import events


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every anyio-marked test on asyncio and on trio."""
    return request.param


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> collections.defaultdict[str, list[Any]]:
    """An empty registry for this test, swapped in the documented way."""
    fresh: collections.defaultdict[str, list[Any]] = collections.defaultdict(list)
    monkeypatch.setattr(events, "_handlers", fresh)
    return fresh


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
