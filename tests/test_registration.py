"""Registration: ``on``, ``off`` and ``handlers``, and what may be a handler."""

from __future__ import annotations

import functools
import gc
import threading
from typing import Any
from unittest import mock

import pytest

from app.core import events
from app.core.events import (
    EventsError,
    HandlerNotRegisteredError,
    InvalidHandlerError,
    InvalidOptionError,
    emit,
    handlers,
    off,
    on,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def events_of_this_file(declare_event):
    """Declare the events these tests emit."""
    declare_event("employee.created", optional=("employee_id", "n"))
    declare_event("employee.status_changed", "n")


async def noop(**kwargs):
    return None


class Service:
    def __init__(self):
        self.calls = []

    async def handle(self, **kwargs):
        self.calls.append(kwargs)


class AsyncCallable:
    def __init__(self):
        self.calls = []

    async def __call__(self, **kwargs):
        self.calls.append(kwargs)


async def test_decorator_returns_the_function_unchanged(registry):
    """``@on`` returns the very function, still directly callable."""

    async def handler(**kwargs):
        return kwargs

    assert on("employee.created")(handler) is handler
    assert await handler(employee_id=1) == {"employee_id": 1}


async def test_every_kind_of_handler_is_called_with_the_payload(registry):
    """async def, def, lambda, partial, bound method, async __call__ and AsyncMock all work."""
    calls: list[tuple[str, Any]] = []

    async def async_handler(**kwargs):
        calls.append(("async", kwargs))

    def sync_handler(**kwargs):
        calls.append(("sync", kwargs))

    async def with_prefix(prefix, **kwargs):
        calls.append((prefix, kwargs))

    service = Service()
    callable_object = AsyncCallable()
    async_mock = mock.AsyncMock()
    on("employee.created")(async_handler)
    on("employee.created")(sync_handler)
    on("employee.created")(lambda **kwargs: calls.append(("lambda", kwargs)))
    on("employee.created")(functools.partial(with_prefix, "partial"))
    on("employee.created")(service.handle)
    on("employee.created")(callable_object)
    on("employee.created")(async_mock)

    await emit("employee.created", employee_id=1)

    payload = {"employee_id": 1}
    assert calls == [
        ("async", payload),
        ("sync", payload),
        ("lambda", payload),
        ("partial", payload),
    ]
    assert service.calls == [payload]
    assert callable_object.calls == [payload]
    async_mock.assert_awaited_once_with(employee_id=1)


async def test_sync_handler_returning_an_awaitable_has_it_awaited(registry):
    """A plain def that returns an awaitable has that awaitable awaited before the next runs."""
    order = []

    async def work(**kwargs):
        order.append("awaited")

    on("employee.created")(lambda **kwargs: work(**kwargs))
    on("employee.created")(lambda **kwargs: order.append("next"))
    await emit("employee.created")
    assert order == ["awaited", "next"]


async def test_stacked_decorators_register_for_both_names(registry):
    """Two stacked ``@on`` register one function for both names."""
    seen = []

    @on("employee.created")
    @on("employee.status_changed")
    async def handler(**kwargs):
        seen.append(kwargs["n"])

    await emit("employee.created", n=1)
    await emit("employee.status_changed", n=2)
    assert seen == [1, 2]
    assert handlers("employee.created") == (handler,)
    assert handlers("employee.status_changed") == (handler,)


async def test_registering_twice_is_a_no_op(registry):
    """The same callable registered twice for one name runs once; a bound method too."""
    calls = []

    async def handler(**kwargs):
        calls.append(1)

    service = Service()
    on("employee.created")(handler)
    on("employee.created")(handler)
    on("employee.created")(service.handle)
    on("employee.created")(service.handle)  # a new bound-method object, same registration
    await emit("employee.created")
    assert calls == [1]
    assert len(service.calls) == 1
    assert handlers("employee.created") == (handler, service.handle)


async def test_registering_again_with_another_timeout_is_an_error(registry):
    """Re-registering with different options raises instead of silently keeping one."""
    on("employee.created", timeout=1)(noop)
    with pytest.raises(InvalidHandlerError, match=r"already registered .* timeout=1") as caught:
        on("employee.created", timeout=2)(noop)
    assert caught.value.event_name == "employee.created"
    assert caught.value.handler is noop
    on("employee.created", timeout=1)(noop)  # the same options again are a no-op
    assert handlers("employee.created") == (noop,)


def test_handlers_are_held_strongly(registry):
    """A registered lambda is not dropped when nothing else refers to it."""
    calls = []
    on("employee.created")(lambda **kwargs: calls.append(kwargs))
    gc.collect()
    assert len(handlers("employee.created")) == 1


def test_the_registry_holds_registrations_in_order(registry):
    """``_handlers`` holds one registration per handler, in registration order."""

    async def second(**kwargs):
        return None

    on("employee.created")(noop)
    on("employee.created")(second)
    assert [entry.handler for entry in registry["employee.created"]] == [noop, second]


def test_off_removes_a_registration(registry):
    """``off`` removes one registration and drops the name once it has none."""

    async def second(**kwargs):
        return None

    on("employee.created")(noop)
    on("employee.created", timeout=5)(second)
    off("employee.created", second)
    assert handlers("employee.created") == (noop,)
    off("employee.created", noop)
    assert handlers("employee.created") == ()
    assert "employee.created" not in registry


def test_off_of_an_unregistered_handler_raises_lookup_error(registry):
    """``off`` of a handler that is not registered raises, naming it and the event."""
    with pytest.raises(HandlerNotRegisteredError) as caught:
        off("employee.created", noop)
    assert isinstance(caught.value, LookupError)
    assert isinstance(caught.value, EventsError)
    assert str(caught.value) == (
        f"handler {noop.__module__}.noop is not registered for 'employee.created'"
    )
    assert caught.value.event_name == "employee.created"
    assert caught.value.handler is noop
    assert not registry


def test_lookups_do_not_create_entries(registry):
    """``handlers`` and a failed ``off`` leave ``_handlers`` without empty entries."""
    assert handlers("employee.created") == ()
    with pytest.raises(HandlerNotRegisteredError):
        off("employee.created", noop)
    assert dict(registry) == {}


def test_off_of_a_bound_method_uses_a_fresh_bound_method(registry):
    """``off(name, obj.method)`` finds the registration made with another ``obj.method``."""
    service = Service()
    on("employee.created")(service.handle)
    off("employee.created", service.handle)
    assert handlers("employee.created") == ()


def test_registration_is_thread_safe(registry):
    """Handlers registered from many threads at once are all kept."""
    per_thread = 200
    barrier = threading.Barrier(8)

    def register_many():
        barrier.wait()
        for _ in range(per_thread):

            async def handler(**kwargs):
                return None

            on("employee.created")(handler)

    threads = [threading.Thread(target=register_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(handlers("employee.created")) == 8 * per_thread


async def test_monkeypatching_the_registry_isolates_a_test(monkeypatch):
    """The documented fixture: a fresh ``_handlers`` hides every registered handler."""
    import collections
    import importlib

    importlib.import_module("app.business.notify")  # registers its handlers on import

    calls = []
    monkeypatch.setattr(events, "_handlers", collections.defaultdict(events.Entries))
    on("employee.created")(lambda **kwargs: calls.append(1))
    await emit("employee.created")
    assert calls == [1]
    monkeypatch.undo()
    assert handlers("employee.created") != ()  # the business packages' handlers are back


def _rejection(handler):
    with pytest.raises(InvalidHandlerError) as caught:
        on("employee.created")(handler)
    assert caught.value.event_name == "employee.created"
    assert caught.value.handler is handler
    assert isinstance(caught.value, TypeError)
    return str(caught.value)


def test_non_callables_are_rejected(registry):
    """A non-callable is rejected, and the message says what it is."""
    message = _rejection(42)
    assert message == (
        "cannot register 42 for 'employee.created': it is not callable. Register a function, "
        "or an object with a __call__ method."
    )
    assert not registry


def test_coroutine_objects_are_rejected(registry):
    """A coroutine object (a handler called by mistake) is rejected with a hint."""
    coroutine = noop()
    try:
        message = _rejection(coroutine)
    finally:
        coroutine.close()
    assert "it is an awaitable (a coroutine object?)" in message
    assert "without calling it" in message


def test_classes_are_rejected(registry):
    """A class is rejected: calling it would build an object, not handle an event."""
    assert "it is a class" in _rejection(Service)


def test_generator_functions_are_rejected(registry):
    """Generator and async generator functions are rejected."""

    def gen(**kwargs):
        yield

    async def agen(**kwargs):
        yield

    class GeneratorCallable:
        def __call__(self, **kwargs):
            yield

    assert "it is a generator function" in _rejection(gen)
    assert "it is a generator function" in _rejection(agen)
    assert "it is a generator function" in _rejection(GeneratorCallable())


def test_handlers_without_var_keyword_are_rejected(registry):
    """A handler that cannot take arbitrary keyword arguments is rejected, named."""

    async def strict(*, employee_id):
        return None

    message = _rejection(strict)
    assert message.startswith(f"cannot register {strict.__module__}.{strict.__qualname__} ")
    assert "it does not take **kwargs" in message


def test_required_positional_only_parameters_are_rejected(registry):
    """A required positional-only parameter can never be filled by emit: rejected."""

    async def positional(event, /, **kwargs):
        return None

    async def optional_positional(event=None, /, **kwargs):
        return None

    assert "it has the required positional-only parameter event. Give it a default" in (
        _rejection(positional)
    )
    on("employee.created")(optional_positional)


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), "5", True])
def test_bad_timeouts_are_rejected(registry, timeout):
    """``timeout`` must be a positive, finite number of seconds."""
    with pytest.raises(InvalidOptionError, match="timeout must be None or a positive") as caught:
        on("employee.created", timeout=timeout)
    assert isinstance(caught.value, ValueError)


def test_a_handler_whose_repr_and_qualname_raise_can_be_registered(registry):
    """Registration never calls repr, and survives a broken ``__qualname__``."""

    class Hostile:
        def __getattribute__(self, name):
            if name == "__qualname__":
                raise RuntimeError("no qualname")
            return object.__getattribute__(self, name)

        def __repr__(self):
            raise RuntimeError("no repr")

        async def __call__(self, **kwargs):
            return None

    hostile = Hostile()
    on("employee.created")(hostile)
    assert handlers("employee.created") == (hostile,)
