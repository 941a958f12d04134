"""The core's shape: no import cycle, nothing read off the call stack, options that undo."""

from __future__ import annotations

import ast
import collections.abc
import re
from pathlib import Path

import pytest

from app.core import _pipeline, catalogue
from app.core.events import current_event, emit, on

ROOT = Path(__file__).resolve().parents[1] / "app"
CORE = ROOT / "core"


def runtime_imports(path: Path) -> set[str]:
    """The ``app.core`` modules ``path`` imports when it is imported (not under
    ``if TYPE_CHECKING``, not inside functions)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "app.core":
                found |= {f"app.core.{alias.name}" for alias in node.names}
            elif node.module.startswith("app.core."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("app.core.")}
    return found


def test_core_modules_import_each_other_without_a_cycle():
    """The graph of module-level imports between core modules has no cycle."""
    graph = {f"app.core.{p.stem}": runtime_imports(p) for p in CORE.glob("*.py")}
    graph = {module: deps & graph.keys() for module, deps in graph.items()}
    visiting, done = set(), set()

    def visit(module, path):
        assert module not in visiting, f"import cycle: {' -> '.join([*path, module])}"
        if module in done:
            return
        visiting.add(module)
        for dependency in sorted(graph[module]):
            visit(dependency, [*path, module])
        visiting.discard(module)
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


@pytest.mark.parametrize("folder", ["core", "testing"])
def test_nothing_is_read_off_the_call_stack(folder):
    """No frame or code-object tricks in the core or the test plugin."""
    pattern = re.compile(r"_getframe|f_locals|f_back|f_code|__code__ is|currentframe")
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / folder).glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


@pytest.mark.anyio
async def test_a_step_and_a_wrapper_apply_until_their_undo(registry, declare_event):
    """Installing a step or a delivery wrapper returns the undo that removes it again."""
    declare_event("order.placed")
    calls = []
    on("order.placed")(lambda **kwargs: calls.append("handler"))

    def wrapper(inner):
        async def around(name, kwargs, event, entries):
            calls.append("before")
            await inner(name, kwargs, event, entries)
            calls.append("after")

        return around

    undo_wrapper = _pipeline.wrap_delivery("test", wrapper)
    try:
        await emit("order.placed")
    finally:
        undo_wrapper()
    await emit("order.placed")
    assert calls == ["before", "handler", "after", "handler"]


@pytest.mark.anyio
async def test_only_an_every_emit_wrapper_sees_emits_with_only_durable_handlers(
    registry, declare_event
):
    """An emit whose handlers are all durable is not delivered in-process, unless a wrapper
    installed with ``every_emit=True`` asks for it; its undo puts that back."""
    declare_event("invoice.sent")
    on("invoice.sent", durable=True, id="tests.archive")(_archive)
    seen = []

    def wrapper(inner):
        async def around(name, kwargs, event, entries):
            seen.append((name, list(entries)))
            await inner(name, kwargs, event, entries)

        return around

    undo_transport = _pipeline.install_transport(_NoTransport())
    try:
        undo = _pipeline.wrap_delivery("test", wrapper)
        await emit("invoice.sent")
        undo()
        undo = _pipeline.wrap_delivery("test", wrapper, every_emit=True)
        await emit("invoice.sent")
        undo()
        assert not _pipeline.every_emit
        await emit("invoice.sent")
    finally:
        undo_transport()
    assert seen == [("invoice.sent", [])]


async def _archive(**_):
    """A durable handler the test never runs."""


class _NoTransport:
    """A durable transport that enqueues nowhere."""

    async def enqueue(self, jobs):
        pass


def test_wrap_each_makes_a_lists_wrappers_once_and_keeps_a_bounded_number_of_lists():
    """``wrap_each`` calls ``make`` once per registration of a list it has not seen, returns
    the same wrappers for the same list, and starts again past ``MADE_LIMIT`` lists."""
    made = []

    def make(registration):
        made.append(registration)
        return _Wrapped(registration)

    wrapped = _pipeline.wrap_each(make)
    first, second = ["a", "b"], ["a", "b"]
    assert [w.label for w in wrapped(first)] == ["a", "b"]
    assert wrapped(first) is wrapped(first)
    assert wrapped(first).async_calls == tuple(w.call for w in wrapped(first))
    assert made == ["a", "b"]
    assert wrapped(second) is not wrapped(first)
    assert made == ["a", "b", "a", "b"]
    others = [[n] for n in range(_pipeline.MADE_LIMIT)]
    for other in others:
        wrapped(other)
    made.clear()
    wrapped(first)
    assert made == ["a", "b"]


@pytest.mark.anyio
async def test_a_wrapper_may_hand_the_loop_any_sequence(registry, declare_event):
    """A wrapper passing its own kind of sequence still has each handler named while it runs."""
    declare_event("order.placed")
    seen = []

    async def first(**kwargs):
        seen.append(current_event().handler)

    def second(**kwargs):
        seen.append(current_event().handler)

    on("order.placed")(first)
    on("order.placed")(second)

    class Own(collections.abc.Sequence):
        def __init__(self, items):
            self.items = list(items)

        def __getitem__(self, index):
            return self.items[index]

        def __len__(self):
            return len(self.items)

    def wrapper(inner):
        return lambda name, kwargs, event, entries: inner(name, kwargs, event, Own(entries))

    undo = _pipeline.wrap_delivery("test", wrapper)
    try:
        await emit("order.placed")
    finally:
        undo()
    assert seen == [f"{__name__}.{f.__qualname__}" for f in (first, second)]


class _Wrapped:
    """A handler made by a wrapper, for ``wrap_each``."""

    awaits = True

    def __init__(self, label):
        self.label = label

    async def call(self, **kwargs):
        pass


def test_type_checks_install_and_remove_one_step():
    """``check_payload_types`` installs its step once and takes it out again."""
    before = catalogue.payload_types_checked()
    try:
        catalogue.check_payload_types(False)
        assert "types" not in _pipeline._steps
        catalogue.check_payload_types(True)
        catalogue.check_payload_types(True)
        assert "types" in _pipeline._steps
        catalogue.check_payload_types(False)
        assert "types" not in _pipeline._steps
    finally:
        catalogue.check_payload_types(before)
