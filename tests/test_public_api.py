"""The public face: each public module's ``__all__`` and the exception hierarchy."""

from __future__ import annotations

import importlib

import pytest

from app.core import events

PUBLIC_MODULES = [
    "app.utils",
    "app.core.events",
    "app.core.logging",
    "app.core.catalogue",
    "app.bootstrap",
    "app.core.deferred",
    "app.core.durable",
    "app.core.tracing",
    "app.core.logging",
    "app.db",
    "app.db.embedded",
    "app.web.service",
    "app.web.middleware",
    "app.console",
    "app.console.router",
    "app.testing",
    "app.testing.pytest_plugin",
    "app.cli",
    "app.demo",
    "app.business.hr",
    "app.business.notify",
    "app.business.audit",
]


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_name_in_all_exists(module_name):
    """Each public module declares ``__all__`` without repeats, and every name in it resolves."""
    module = importlib.import_module(module_name)
    assert len(set(module.__all__)) == len(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name), f"{module_name}.__all__ names missing {name!r}"


def test_utils_reexports_the_registry():
    """Business code's ``from app.utils import current_event, emit, on`` is the registry."""
    from app import utils

    assert utils.__all__ == ["current_event", "emit", "on"]
    assert utils.current_event is events.current_event
    assert utils.emit is events.emit
    assert utils.on is events.on


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (events.EventNameError, ValueError),
        (events.EventNameTypeError, TypeError),
        (events.InvalidHandlerError, TypeError),
        (events.InvalidOptionError, ValueError),
        (events.HandlerNotRegisteredError, LookupError),
        (events.EventRecursionError, RecursionError),
        (events.HandlerTimeoutError, TimeoutError),
        (events.UnknownEventError, LookupError),
        (events.PayloadError, TypeError),
        (events.CatalogueError, ValueError),
    ],
)
def test_every_error_has_one_root_and_its_builtin(error, builtin):
    """Each error subclasses EventsError and the builtin a caller would catch."""
    assert issubclass(error, events.EventsError)
    assert issubclass(error, builtin)
    assert error.__name__ in events.__all__


def test_the_root_error_is_an_exception():
    """EventsError is an Exception, so generic handlers catch it."""
    assert issubclass(events.EventsError, Exception)
    assert "EventsError" in events.__all__


def test_emit_takes_the_name_positionally_only():
    """``emit``'s name is positional-only; the payload is keyword-only."""
    import inspect

    parameters = list(inspect.signature(events.emit).parameters.values())
    assert [(p.name, p.kind) for p in parameters] == [
        ("name", inspect.Parameter.POSITIONAL_ONLY),
        ("kwargs", inspect.Parameter.VAR_KEYWORD),
    ]
    assert inspect.iscoroutinefunction(events.emit)
