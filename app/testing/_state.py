"""What the pytest plugin keeps for one test: the emits it recorded, mutes, handler failures."""

from __future__ import annotations

import contextlib
import re
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from app.core import catalogue
from app.core._context import Event
from app.core._names import name_problem

__all__ = [
    "EventRecorder",
    "HandlerFailure",
    "RecordedEmit",
    "TestEvents",
    "check_mute_pattern",
]

_AGGREGATE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*", re.ASCII)


@dataclass(frozen=True, eq=False)
class RecordedEmit:
    """One emit seen during a test.

    Attributes:
        name: The event name.
        kwargs: The payload, as a read-only copy of the mapping (values are not copied).
        index: Its place among the test's emits, from 0.
        parent: The emit whose handler made this one, or None at the root.
        muted: Whether delivery was muted (it was still checked against the catalogue).
    """

    name: str
    kwargs: Mapping[str, Any]
    index: int
    parent: RecordedEmit | None
    muted: bool

    def __str__(self) -> str:
        fields = ", ".join(f"{key}={value!r}" for key, value in self.kwargs.items())
        return f"{self.name}({fields}){' [muted]' if self.muted else ''}"


@dataclass(frozen=True)
class HandlerFailure:
    """A handler failure that ``emit`` logged and isolated."""

    event_name: str
    handler: str
    error: Exception

    def describe(self) -> str:
        """The handler, the event, and the formatted traceback."""
        trace = "".join(traceback.format_exception(self.error)).rstrip()
        return f"handler {self.handler} failed on {self.event_name!r}:\n{trace}"


class EventRecorder:
    """Every emit made during the test, in order, with assertion helpers.

    Recording never stops delivery. Field matches are partial: the fields given must be in
    the payload with equal values; the others are not looked at.
    """

    def __init__(self) -> None:
        self.emits: list[RecordedEmit] = []
        self._by_event: dict[Event, RecordedEmit] = {}

    def record(self, name: str, kwargs: Mapping[str, Any], event: Event, muted: bool) -> None:
        """Record an emit; ``event.parent`` (the event whose work made it) links its record."""
        parent = None if event.parent is None else self._by_event.get(event.parent)
        recorded = RecordedEmit(
            name, MappingProxyType(dict(kwargs)), len(self.emits), parent, muted
        )
        self.emits.append(recorded)
        self._by_event[event] = recorded

    def names(self) -> list[str]:
        """The names emitted, in order."""
        return [e.name for e in self.emits]

    def filter(self, name: str, /, **fields: Any) -> list[RecordedEmit]:
        """The emits of ``name`` whose payload has ``fields``."""
        self._check_name(name)
        return [e for e in self.emits if e.name == name and _matches(e.kwargs, fields)]

    def count(self, name: str, /, **fields: Any) -> int:
        """How many emits of ``name`` had ``fields``."""
        return len(self.filter(name, **fields))

    def assert_emitted(self, name: str, /, **fields: Any) -> RecordedEmit:
        """Return the first emit of ``name`` with ``fields``.

        Raises:
            AssertionError: there is none; the message lists what was emitted.
        """
        found = self.filter(name, **fields)
        if not found:
            raise AssertionError(self._report(f"expected an emit of {_describe(name, fields)}"))
        return found[0]

    def assert_emitted_once(self, name: str, /, **fields: Any) -> RecordedEmit:
        """Return the only emit of ``name`` with ``fields``.

        Raises:
            AssertionError: there is none or more than one; the message lists the emits.
        """
        found = self.filter(name, **fields)
        if len(found) != 1:
            raise AssertionError(
                self._report(f"expected one emit of {_describe(name, fields)}, found {len(found)}")
            )
        return found[0]

    def assert_not_emitted(self, name: str, /, **fields: Any) -> None:
        """Raise AssertionError, listing the emits, if ``name`` was emitted with ``fields``."""
        if self.filter(name, **fields):
            raise AssertionError(self._report(f"expected no emit of {_describe(name, fields)}"))

    def clear(self) -> None:
        """Forget what was recorded so far."""
        self.emits.clear()
        self._by_event.clear()

    def _check_name(self, name: str) -> None:
        problem = name_problem(name) if isinstance(name, str) else "it is not a str"
        if problem is not None:
            raise AssertionError(f"cannot look for {name!r}: {problem}")
        if name in catalogue.declared():
            return
        hint = catalogue.did_you_mean(name)
        raise AssertionError(
            f"cannot look for {name!r}: it is not a declared event{'; ' + hint if hint else ''}"
        )

    def _report(self, expectation: str) -> str:
        if not self.emits:
            return f"{expectation}; nothing was emitted"
        listed = "\n".join(f"  {e.index}. {'  ' * _depth(e)}{e}" for e in self.emits)
        return f"{expectation}; emitted instead:\n{listed}"


@dataclass
class TestEvents:
    """The plugin's state for one test."""

    __test__ = False  # not a test class, despite the name

    recorder: EventRecorder = field(default_factory=EventRecorder)
    mutes: list[str] = field(default_factory=list)
    failures: list[HandlerFailure] = field(default_factory=list)
    expected: list[tuple[str, type[BaseException]]] = field(default_factory=list)
    strict: bool = True

    def emitted(self, name: str, kwargs: Mapping[str, Any], event: Event) -> bool:
        """The core's hook: record, and deliver unless muted."""
        muted = any(_mute_matches(pattern, name) for pattern in self.mutes)
        self.recorder.record(name, kwargs, event, muted)
        return not muted

    def handler_failed(self, name: str, handler: str, error: Exception) -> None:
        """The core's hook: keep the failure for the end of the test."""
        self.failures.append(HandlerFailure(name, handler, error))

    def mute(self, *patterns: str) -> None:
        """Mute delivery of events matching ``patterns`` (``"*"``, ``"employee.*"``, a name)."""
        for pattern in patterns:
            check_mute_pattern(pattern)
        self.mutes.extend(patterns or ["*"])

    @contextlib.contextmanager
    def expect_failure(
        self, name: str, error: type[BaseException] = Exception
    ) -> Iterator[list[HandlerFailure]]:
        """Within the block, failures of ``name``'s handlers raising ``error`` are expected.

        Yields the list of the failures it took, filled when the block ends.

        Raises:
            AssertionError: (at the end of the block) no such failure happened.
        """
        start = len(self.failures)
        taken: list[HandlerFailure] = []
        yield taken
        taken.extend(
            f for f in self.failures[start:] if f.event_name == name and isinstance(f.error, error)
        )
        if not taken:
            raise AssertionError(
                f"expected a handler of {name!r} to fail with {error.__name__}; none did"
                + self._failures_seen(self.failures[start:])
            )
        self.failures = [f for f in self.failures if f not in taken]

    def unexpected_failures(self) -> list[HandlerFailure]:
        """Failures no expectation marker covers."""
        return [
            f
            for f in self.failures
            if not any(f.event_name == n and isinstance(f.error, e) for n, e in self.expected)
        ]

    def missing_expectations(self) -> list[tuple[str, type[BaseException]]]:
        """Expectation markers that no failure met."""
        return [
            (n, e)
            for n, e in self.expected
            if not any(f.event_name == n and isinstance(f.error, e) for f in self.failures)
        ]

    @staticmethod
    def _failures_seen(failures: list[HandlerFailure]) -> str:
        if not failures:
            return ""
        return "; failures seen: " + ", ".join(
            f"{f.handler} on {f.event_name!r} ({type(f.error).__name__})" for f in failures
        )


def check_mute_pattern(pattern: str) -> None:
    """Raise ValueError unless ``pattern`` is ``"*"``, ``"<aggregate>.*"`` or an event name."""
    if pattern == "*":
        return
    if isinstance(pattern, str) and pattern.endswith(".*"):
        if _AGGREGATE.fullmatch(pattern[:-2]):
            return
    elif isinstance(pattern, str) and name_problem(pattern) is None:
        return
    raise ValueError(
        f"cannot mute {pattern!r}: use '*', '<aggregate>.*' (e.g. 'employee.*') or an event name"
    )


def _mute_matches(pattern: str, name: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return name.startswith(pattern[:-1])
    return name == pattern


def _matches(kwargs: Mapping[str, Any], fields: Mapping[str, Any]) -> bool:
    return all(key in kwargs and kwargs[key] == value for key, value in fields.items())


def _describe(name: str, fields: Mapping[str, Any]) -> str:
    if not fields:
        return repr(name)
    return f"{name!r} with " + ", ".join(f"{k}={v!r}" for k, v in fields.items())


def _depth(recorded: RecordedEmit) -> int:
    depth = 0
    parent = recorded.parent
    while parent is not None:
        depth += 1
        parent = parent.parent
    return depth
