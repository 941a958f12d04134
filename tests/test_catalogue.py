"""The catalogue at run time: declarations, the checks at emit, and ``verify``."""

from __future__ import annotations

from typing import Any

import pytest

from app.core.catalogue import check_payload_types, declared, payload_types_checked
from app.core.events import (
    CatalogueError,
    EventNameError,
    EventSpec,
    PayloadError,
    UnknownEventError,
    declare,
    emit,
    on,
    verify,
)

CREATED = {"employee_id": int, "department_id": int, "created_by": int}


@pytest.fixture
def created(registry):
    """``employee.created`` declared as hr declares it."""
    return declare("employee.created", source="hr", payload=CREATED, purpose="a new employee")


@pytest.fixture
def type_checks():
    """Payload type checks on for this test (the plugin turns them on for the session)."""
    check_payload_types(True)
    yield
    check_payload_types(True)


@pytest.fixture
def no_type_checks():
    """Payload type checks off for this test, as outside the test suite."""
    check_payload_types(False)
    yield
    check_payload_types(True)


def test_declare_returns_the_spec(created):
    """A declaration is a frozen spec listing required fields before optional ones."""
    assert created == EventSpec(
        name="employee.created", source="hr", payload=CREATED, purpose="a new employee"
    )
    assert declared() == {"employee.created": created}
    spec = declare(
        "employee.hired",
        source="hr",
        payload={"employee_id": int},
        optional={"note": str | None},
        purpose="old name",
        replaced_by="employee.created",
    )
    assert list(spec.fields) == ["employee_id", "note"]
    assert spec.replaced_by == "employee.created"


def test_declaring_the_same_contract_again_is_a_no_op(created):
    """The same declaration twice (a module imported twice, say) changes nothing."""
    again = declare(
        "employee.created", source="hr", payload=dict(CREATED), purpose="a new employee"
    )
    assert again == created
    assert list(declared()) == ["employee.created"]


def test_declaring_a_different_contract_is_an_error(created):
    """A second, different declaration of a name raises, naming the name."""
    with pytest.raises(CatalogueError, match=r"cannot declare 'employee\.created': it is declared"):
        declare("employee.created", source="hr", payload={"employee_id": int}, purpose="other")
    assert declared()["employee.created"] == created


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"payload": {"not valid": int}}, "payload field 'not valid' is not a valid keyword"),
        ({"payload": {"x": "int"}}, "payload field 'x' has type 'int'; use a class"),
        ({"payload": {"x": list[int]}}, "payload field 'x' has type list[int]"),
        (
            {"payload": {"x": int}, "optional": {"x": int}},
            "field 'x' is both required and optional",
        ),
        ({"purpose": " "}, "purpose must be a non-empty str"),
        ({"source": ""}, "source must be a non-empty str"),
    ],
)
def test_malformed_declarations_are_rejected(registry, kwargs, problem):
    """Each malformed part of a declaration is named in the error."""
    arguments: dict[str, Any] = {"source": "hr", "payload": {}, "purpose": "p", **kwargs}
    with pytest.raises(CatalogueError) as caught:
        declare("employee.created", **arguments)
    assert problem in str(caught.value)
    assert declared() == {}


def test_malformed_names_are_rejected_by_declare(registry):
    """Names and replacement names follow the naming convention."""
    with pytest.raises(EventNameError):
        declare("Employee.created", source="hr", payload={}, purpose="p")
    with pytest.raises(EventNameError):
        declare("employee.created", source="hr", payload={}, purpose="p", replaced_by="x")


@pytest.mark.anyio
async def test_emit_of_an_undeclared_name_raises_with_a_suggestion(created):
    """An undeclared name is a LookupError suggesting the near declared name."""
    ran = []
    on("employee.craeted")(lambda **kwargs: ran.append(1))
    with pytest.raises(UnknownEventError) as caught:
        await emit("employee.craeted", employee_id=1)
    error = caught.value
    assert isinstance(error, LookupError)
    assert error.suggestions == ["employee.created"]
    assert str(error).startswith(
        "event 'employee.craeted' is not declared; did you mean 'employee.created'?"
    )
    assert error.__suppress_context__
    assert ran == []


@pytest.mark.anyio
async def test_emit_of_a_name_with_nothing_close_has_no_suggestion(created):
    """Without a near name the message offers no guess."""
    with pytest.raises(UnknownEventError) as caught:
        await emit("invoice.paid")
    assert str(caught.value) == (
        "event 'invoice.paid' is not declared. Declare it with app.core.events.declare() in the "
        "events module of the package that emits it."
    )


@pytest.mark.anyio
async def test_missing_and_undeclared_fields_raise_before_any_handler(created):
    """A payload missing a field or adding one raises PayloadError naming them."""
    ran = []
    on("employee.created")(lambda **kwargs: ran.append(1))
    with pytest.raises(PayloadError) as caught:
        await emit("employee.created", employee_id=1, department=2, created_by=3)
    error = caught.value
    assert isinstance(error, TypeError)
    assert error.missing == ["department_id"]
    assert error.unexpected == ["department"]
    assert str(error) == (
        "emit('employee.created'): missing required field(s) department_id; undeclared "
        "field(s) department; declared fields: employee_id: int, department_id: int, "
        "created_by: int"
    )
    assert ran == []


@pytest.mark.anyio
async def test_optional_fields_may_be_left_out_or_given(registry):
    """Optional fields are accepted either way; unknown ones still are not."""
    declare(
        "employee.created",
        source="hr",
        payload={"employee_id": int},
        optional={"note": str | None},
        purpose="p",
    )
    received = []
    on("employee.created")(lambda **kwargs: received.append(kwargs))
    await emit("employee.created", employee_id=1)
    await emit("employee.created", employee_id=2, note="hi")
    with pytest.raises(PayloadError, match=r"undeclared field\(s\) other"):
        await emit("employee.created", employee_id=3, other=1)
    with pytest.raises(PayloadError, match=r"missing required field\(s\) employee_id"):
        await emit("employee.created", note="hi")
    assert received == [{"employee_id": 1}, {"employee_id": 2, "note": "hi"}]


@pytest.mark.anyio
async def test_value_types_are_not_checked_when_disabled(created, no_type_checks):
    """Without type checks (the default outside tests) a wrong value type passes."""
    assert not payload_types_checked()
    await emit("employee.created", employee_id="1", department_id=2, created_by=3)


@pytest.mark.anyio
async def test_value_types_are_checked_when_enabled(created, type_checks):
    """With type checks on, a wrong type (a bool for an int included) raises, named."""
    await emit("employee.created", employee_id=1, department_id=2, created_by=3)
    with pytest.raises(PayloadError) as caught:
        await emit("employee.created", employee_id="1", department_id=True, created_by=3)
    assert caught.value.wrong_types == [
        "employee_id=str (declared int)",
        "department_id=bool (declared int)",
    ]
    assert "wrong type(s) employee_id=str (declared int)" in str(caught.value)


@pytest.mark.anyio
async def test_unions_and_any_are_checked_as_declared(registry, type_checks):
    """``X | None`` accepts None and X; ``Any`` accepts anything."""
    declare(
        "employee.noted",
        source="hr",
        payload={"note": str | None, "extra": Any},
        purpose="p",
    )
    await emit("employee.noted", note=None, extra=object())
    await emit("employee.noted", note="x", extra=1)
    with pytest.raises(PayloadError, match=r"note=int \(declared str \| None\)"):
        await emit("employee.noted", note=1, extra=1)


@pytest.mark.anyio
async def test_toggling_type_checks_applies_to_existing_declarations(created, no_type_checks):
    """Turning type checks on after declaring still checks that declaration."""
    await emit("employee.created", employee_id="1", department_id=2, created_by=3)
    check_payload_types(True)
    with pytest.raises(PayloadError, match=r"employee_id=str \(declared int\)"):
        await emit("employee.created", employee_id="1", department_id=2, created_by=3)


def test_verify_passes_when_handlers_match(created):
    """Handlers of declared events taking declared fields pass verification."""

    @on("employee.created")
    async def handler(*, employee_id, department_id=None, **kwargs):
        return None

    verify()


def test_verify_reports_every_problem_at_once(registry):
    """Undeclared names, unknown parameters and required optional fields, all in one error."""
    declare(
        "employee.created",
        source="hr",
        payload={"employee_id": int},
        optional={"note": str},
        purpose="p",
    )

    @on("employee.craeted")
    async def typo(**kwargs):
        return None

    @on("employee.created")
    def wrong_parameter(*, employee, note, **kwargs):
        return None

    with pytest.raises(CatalogueError) as caught:
        verify()
    where_typo = (
        f"{typo.__module__}.{typo.__qualname__} ({__file__}:{typo.__code__.co_firstlineno})"
    )
    where_wrong = (
        f"{wrong_parameter.__module__}.{wrong_parameter.__qualname__} "
        f"({__file__}:{wrong_parameter.__code__.co_firstlineno})"
    )
    assert caught.value.problems == [
        f"{where_typo} handles 'employee.craeted', which is not declared "
        "(did you mean 'employee.created'?). Fix the name, or declare the event with declare() "
        "in the events module of the package that emits it.",
        f"{where_wrong} takes 'employee', which is not a field of 'employee.created' "
        "(fields: employee_id, note).",
        f"{where_wrong} requires 'note', which is optional in 'employee.created'; give the "
        "parameter a default.",
    ]
    assert str(caught.value).startswith(
        "3 problems between the handlers and the event catalogue:\n- "
    )


def test_the_reference_packages_verify():
    """The business packages' handlers match their declarations."""
    import app.business.audit
    import app.business.hr
    import app.business.notify  # noqa: F401

    verify()
