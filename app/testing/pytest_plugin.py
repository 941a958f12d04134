"""The pytest plugin: every test isolated, recorded, and failed by swallowed handler failures.

For each test it restores the registrations and declarations as they were before the test,
records every emit, mutes the events a marker or ``events_mute`` names, and fails the test
when a handler failure that ``emit`` isolated (and only logged) was not expected. Once per
session, after collection, it runs the catalogue's ``verify()`` and turns payload type checks
on. Ini options: ``events_strict``, ``events_type_checks``, ``events_verify`` (all true by
default) and ``events_import`` (modules, or ``module:function``, to load before collection).
"""

from __future__ import annotations

import contextlib
import importlib
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.core import _pipeline, catalogue, events, tracing
from app.core._describe import plural
from app.core.events import CatalogueError, verify
from app.testing._state import EventRecorder, HandlerFailure, TestEvents

__all__ = [
    "events_isolated",
    "events_mute",
    "events_recorder",
    "expect_handler_failure",
]

_STATE = pytest.StashKey[TestEvents]()
_MARKERS = [
    "events_mute(*patterns): mute delivery of the events matching each pattern ('*', "
    "'employee.*' or a name; none means all); they are still recorded and checked",
    "events_expect_failure(name, error=Exception): a handler of event `name` is expected to "
    "fail with `error` during this test (the test fails if none does)",
    "events_lenient: do not fail this test for handler failures that emit swallowed",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Declare the plugin's ini options."""
    parser.addini(
        "events_strict",
        "fail a test when emit swallowed a handler failure it did not expect",
        type="bool",
        default=True,
    )
    parser.addini(
        "events_type_checks", "check payload value types at emit", type="bool", default=True
    )
    parser.addini(
        "events_verify",
        "run the catalogue's verify() once after collection",
        type="bool",
        default=True,
    )
    parser.addini(
        "events_import",
        "modules (or module:function to call) that register handlers, loaded before collection",
        type="linelist",
        default=[],
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers and load the modules of ``events_import``.

    Raises:
        pytest.UsageError: loading one failed (a handler that cannot be registered, a
            malformed event name, any import error); the message says where and why.
    """
    for line in _MARKERS:
        config.addinivalue_line("markers", line)
    for spec in config.getini("events_import"):
        module_name, _, function = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
            if function:
                getattr(module, function)()
        except Exception as error:
            raise pytest.UsageError(_load_failure(spec, error, config.rootpath)) from None


def _load_failure(spec: str, error: Exception, rootpath: Path) -> str:
    """One clean report of an ``events_import`` entry that failed: where, what, how to fix."""
    where = _where(error)
    if where is not None:
        path, line = where
        with contextlib.suppress(ValueError):
            path = str(Path(path).resolve().relative_to(rootpath))
        where_text = f" at {path}:{line}"
    else:
        where_text = ""
    return (
        f"events_import {spec!r} failed{where_text}:\n{type(error).__name__}: {error}\n"
        "Fix that code and run again: the tests cannot run until the modules that register "
        "handlers import cleanly."
    )


def _where(error: Exception) -> tuple[str, int] | None:
    """The place in the project's code that raised ``error``: the innermost frame outside the
    registry and this plugin (for a syntax error, the place it points at)."""
    if isinstance(error, SyntaxError) and error.filename and error.lineno:
        return error.filename, error.lineno
    skipped = (
        str(Path(events.__file__).parent),
        str(Path(importlib.__file__).parent),
        __file__,
        "<",
    )
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if not frame.filename.startswith(skipped) and frame.lineno is not None:
            return frame.filename, frame.lineno
    return None


def pytest_sessionstart(session: pytest.Session) -> None:
    """Turn payload type checks on for the session, as configured."""
    if session.config.getini("events_type_checks"):
        catalogue.check_payload_types(True)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Leave the catalogue as it was found."""
    catalogue.check_payload_types(False)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Check every handler registered by now against the catalogue, once.

    Raises:
        pytest.UsageError: ``verify()`` found problems; they are all listed.
    """
    if not session.config.getini("events_verify"):
        return
    try:
        verify()
    except CatalogueError as error:
        raise pytest.UsageError(
            f"event catalogue check failed after collection:\n{error}"
        ) from None


@pytest.fixture(autouse=True)
def events_isolated(request: pytest.FixtureRequest) -> Iterator[None]:
    """Undo every registration, declaration and tracing setting made by or during the test
    (autouse)."""
    saved_tracing = tracing.tracing_settings()
    handlers = events._handlers
    saved_handlers = dict(handlers)  # lists are replaced, never mutated: a snapshot
    declared = catalogue._declared
    saved_declared = dict(declared)
    state = _start_test(request.node)
    uninstall = _pipeline.install_hook(state)
    try:
        yield
    finally:
        uninstall()
        handlers.clear()
        handlers.update(saved_handlers)
        declared.clear()
        declared.update(saved_declared)
        tracing.restore_tracing(saved_tracing)
    _fail_on_failures(state, when="teardown")


@pytest.fixture
def events_recorder(request: pytest.FixtureRequest) -> EventRecorder:
    """Every emit of the test, in order, with ``assert_emitted`` and friends."""
    return _state(request).recorder


@pytest.fixture
def events_mute(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``events_mute("employee.*")`` mutes delivery of matching events for the rest of the test."""
    return _state(request).mute


@pytest.fixture
def expect_handler_failure(
    request: pytest.FixtureRequest,
) -> Callable[..., contextlib.AbstractContextManager[list[HandlerFailure]]]:
    """``with expect_handler_failure("a.b", ValueError):`` expects a handler of a.b to fail."""
    return _state(request).expect_failure


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Fail a passing test for handler failures nobody expected; show them beside a failing one."""
    state = item.stash.get(_STATE, None)
    try:
        result = yield
    except BaseException:
        if state is not None and state.failures:
            text = "\n\n".join(f.describe() for f in state.failures)
            item.add_report_section("call", "event handler failures", text)
            state.failures.clear()
        raise
    if state is not None:
        _fail_on_failures(state, when="call")
    return result


def _state(request: pytest.FixtureRequest) -> TestEvents:
    state: TestEvents = request.node.stash[_STATE]
    return state


def _start_test(item: pytest.Item) -> TestEvents:
    state = TestEvents(strict=item.config.getini("events_strict"))
    if item.get_closest_marker("events_lenient") is not None:
        state.strict = False
    for marker in item.iter_markers("events_mute"):
        state.mute(*marker.args)
    for marker in item.iter_markers("events_expect_failure"):
        state.expected.append(_expectation(marker))
    item.stash[_STATE] = state
    return state


def _expectation(marker: pytest.Mark) -> tuple[str, type[BaseException]]:
    name, *rest = marker.args
    error = marker.kwargs.get("error", rest[0] if rest else Exception)
    if not (isinstance(error, type) and issubclass(error, BaseException)):
        raise pytest.UsageError(f"events_expect_failure: {error!r} is not an exception class")
    return name, error


def _fail_on_failures(state: TestEvents, *, when: str) -> None:
    unexpected = state.unexpected_failures() if state.strict else []
    missing = state.missing_expectations() if when == "call" else []
    state.failures = [f for f in state.failures if f not in unexpected]
    if not (unexpected or missing):
        return
    lines = []
    if unexpected:
        lines.append(
            f"{plural(len(unexpected), 'event handler failure')} "
            f"{'was' if len(unexpected) == 1 else 'were'} swallowed by emit during the test {when}:"
        )
        lines += [failure.describe() for failure in unexpected]
        lines.append(
            "Expect a failure with `with expect_handler_failure(name, ErrorType):` or "
            "@pytest.mark.events_expect_failure(name, ErrorType); mute the event with "
            "@pytest.mark.events_mute(name) or the events_mute fixture when its handlers cannot "
            "run in this test (they need a database the test does not have, say); or mark the "
            "test @pytest.mark.events_lenient."
        )
    lines += [
        f"expected a handler of {name!r} to fail with {error.__name__}; none did"
        for name, error in missing
    ]
    state.expected = [e for e in state.expected if e not in missing]
    pytest.fail("\n".join(lines), pytrace=False)
