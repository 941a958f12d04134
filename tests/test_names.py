"""Event names: the ``<aggregate>.<verb>`` convention, checked by ``on`` and ``emit``."""

from __future__ import annotations

import pytest

from app.core.events import (
    MAX_NAME_LENGTH,
    EventNameError,
    EventNameTypeError,
    EventsError,
    emit,
    handlers,
    off,
    on,
)

VALID = [
    "employee.created",
    "employee.status_changed",
    "order.refunded",
    "a.b",
    "a1.b2",
    "line_item2.added_v2",
]
INVALID = [
    "EmployeeCreated",
    "employee",
    "employee.",
    ".created",
    "employee..created",
    "hr.employee.created",
    "employee.created\n",
    "\nemployee.created",
    " employee.created",
    "employee.created ",
    "employee.сreated",  # noqa: RUF001 - a Cyrillic es, on purpose
    "employee.\u212aill",  # Kelvin sign, lowercases to k
    "employee.Created",
    "employee._x",
    "employee.x_",
    "employee.a__b",
    "1employee.created",
    "employee.1created",
    "employee-x.created",
    "employee.created!",
    "",
]


async def noop(**kwargs):
    return None


@pytest.mark.parametrize("name", VALID)
def test_valid_names_register(registry, name):
    """A name that follows the convention is accepted by ``on``."""
    on(name)(noop)
    assert handlers(name) == (noop,)


@pytest.mark.parametrize("name", INVALID)
def test_malformed_names_are_rejected_by_on(registry, name):
    """``on`` rejects a malformed name with EventNameError quoting it."""
    with pytest.raises(EventNameError) as caught:
        on(name)
    assert repr(name) in str(caught.value)
    assert "'<aggregate>.<verb>'" in str(caught.value)
    assert caught.value.event_name == name
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, EventsError)
    assert not registry


@pytest.mark.anyio
@pytest.mark.parametrize("name", INVALID)
async def test_malformed_names_are_rejected_by_emit(registry, name):
    """``emit`` rejects a malformed name before doing anything else."""
    with pytest.raises(EventNameError, match="invalid event name"):
        await emit(name, employee_id=1)
    assert not registry


@pytest.mark.anyio
@pytest.mark.parametrize("name", [None, 42, b"employee.created", ["employee.created"]])
async def test_non_str_names_raise_type_error(registry, name):
    """A name that is not a str is a TypeError, from ``on``, ``emit``, ``off`` and ``handlers``."""
    expected = f"event name must be a str, not {type(name).__qualname__}"
    with pytest.raises(EventNameTypeError, match=expected) as caught:
        on(name)
    assert isinstance(caught.value, TypeError)
    with pytest.raises(EventNameTypeError, match=expected):
        await emit(name)
    with pytest.raises(EventNameTypeError, match=expected):
        off(name, noop)
    with pytest.raises(EventNameTypeError, match=expected):
        handlers(name)


def test_name_length_is_checked_before_the_pattern(registry):
    """A name over the length limit says so, and the quoted name is truncated."""
    name = "a." + "b" * (MAX_NAME_LENGTH - 1)
    with pytest.raises(EventNameError) as caught:
        on(name)
    message = str(caught.value)
    assert f"it is {MAX_NAME_LENGTH + 1} characters long" in message
    assert name not in message
    assert "...'" in message
    on(name[:-1])(noop)  # exactly the limit is fine


@pytest.mark.anyio
async def test_str_subclass_names_work(declare_event):
    """A str subclass (a StrEnum member, say) is a valid name like its value."""
    import enum

    class Names(enum.StrEnum):
        CREATED = "employee.created"
        UNHANDLED = "employee.deleted"

    declare_event(Names.CREATED, "employee_id")
    declare_event(Names.UNHANDLED)
    calls = []

    @on(Names.CREATED)
    async def handler(**kwargs):
        calls.append(kwargs)

    await emit(Names.CREATED, employee_id=1)
    await emit("employee.created", employee_id=2)
    await emit(Names.UNHANDLED)
    assert calls == [{"employee_id": 1}, {"employee_id": 2}]


def test_the_message_states_the_rule_and_the_name_written_by_it(registry):
    """A malformed name's error says the rule, and what the name would be by it when plain."""
    with pytest.raises(EventNameError) as caught:
        on("Employee.StatusChanged")
    assert str(caught.value) == (
        "invalid event name 'Employee.StatusChanged'. Rename it to follow the convention: an "
        "event name is '<aggregate>.<verb>': two lowercase ASCII snake_case words joined by one "
        "dot, each starting with a letter, at most 100 characters (e.g. 'employee.created'). "
        "Did you mean 'employee.status_changed'?"
    )


def test_a_name_that_is_not_a_str_is_named_by_its_value(registry):
    """The type error shows the value given, and how to fix it."""
    with pytest.raises(EventNameTypeError) as caught:
        on(42)
    assert str(caught.value).startswith(
        "event name must be a str, not int (42). Pass the name as a str: an event name is "
    )
