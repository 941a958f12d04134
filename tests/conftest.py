"""Shared fixtures: both anyio backends, a clean registry, captured log records."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from app.core import catalogue, events
from app.core.catalogue import EventSpec


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every anyio-marked test on asyncio and on trio."""
    return request.param


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


pytest_plugins = ["pytester"]
