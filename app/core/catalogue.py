"""The catalogue of published events: each event's name, owner, payload and purpose.

A publishing package declares every event it emits, in its own ``events`` module::

    declare(
        "employee.created",
        source="hr",
        payload={"employee_id": int, "department_id": int, "created_by": int},
        optional={"note": str | None},
        purpose="a new employee exists",
    )

``emit`` then refuses undeclared names and payloads that do not match (see
``check_payload``); ``verify`` checks the registered handlers against the catalogue once every
package is imported. Payload value types are checked only while ``check_payload_types(True)``
is in force (the test fixtures turn it on); key checks are always on.
"""

from __future__ import annotations

import difflib
import sys
import threading
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, cast

from app.core import _pipeline
from app.core._errors import CatalogueError, EventsError, PayloadError, UnknownEventError
from app.core._names import check_name, name_error
from app.core._source import BOOTSTRAP_MODULE, find_declaration

if TYPE_CHECKING:
    from app.core._context import Event

__all__ = [
    "EventSpec",
    "check_emit",
    "check_payload",
    "check_payload_types",
    "declare",
    "declared",
    "did_you_mean",
    "parameter_problems",
    "payload_types_checked",
    "suggest",
    "unknown_event_error",
]

FieldType = type | types.UnionType | Any
"""What a payload field may be declared as: a class, a union of classes, or ``typing.Any``."""


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One declared event: its public contract.

    Attributes:
        name: The event name.
        source: The package that owns and emits it.
        payload: Required fields and their types, in declaration order.
        optional: Fields an emitter may leave out, and their types.
        purpose: Why the event exists, in a phrase.
        replaced_by: For a deprecated event, the name to use instead.
    """

    name: str
    source: str
    payload: Mapping[str, FieldType]
    purpose: str
    optional: Mapping[str, FieldType] = field(default_factory=dict)
    replaced_by: str | None = None

    @property
    def fields(self) -> dict[str, FieldType]:
        """Every field, required first, each with its type."""
        return {**self.payload, **self.optional}


class _Entry:
    """A spec with what ``emit`` needs precomputed for its key check: a payload of ``size``
    keys, all of them required, holds exactly the required fields; any other payload goes
    through ``check_payload``."""

    __slots__ = ("allowed", "required", "size", "spec")

    def __init__(self, spec: EventSpec) -> None:
        self.spec = spec
        self.required = frozenset(spec.payload)
        self.allowed = frozenset(spec.fields)
        self.size = len(self.required)


_declared: dict[str, _Entry] = {}
"""The catalogue: every declared event by name. Tests may swap it like ``_handlers``."""

_type_checks = False
_undo_type_checks: Callable[[], None] | None = None
_type_checks_lock = threading.Lock()
_SUGGESTION_CUTOFF: Final = 0.6


def declare(
    name: str,
    *,
    source: str,
    payload: Mapping[str, FieldType],
    purpose: str,
    optional: Mapping[str, FieldType] | None = None,
    replaced_by: str | None = None,
) -> EventSpec:
    """Declare an event; declaring the same contract again returns the existing spec.

    Args:
        name: The event name, ``<aggregate>.<verb>``.
        source: The owning package (``hr``).
        payload: Required fields and their types.
        purpose: Why the event exists.
        optional: Fields an emitter may leave out, and their types.
        replaced_by: Marks the event deprecated in favour of this name.

    Raises:
        EventNameTypeError, EventNameError: ``name`` or ``replaced_by`` is malformed.
        CatalogueError: a field is malformed or in both mappings, a type is not a class, a
            union of classes or ``Any``, or ``name`` is declared already with another contract.
    """
    check_name(name)
    if replaced_by is not None:
        check_name(replaced_by)
    optional = dict(optional or {})
    problems = [
        *_field_problems(payload, "payload"),
        *_field_problems(optional, "optional"),
        *(f"field {key!r} is both required and optional" for key in payload if key in optional),
    ]
    if not isinstance(source, str) or not source:
        problems.append("source must be a non-empty str naming the owning package")
    if not isinstance(purpose, str) or not purpose.strip():
        problems.append("purpose must be a non-empty str")
    if problems:
        raise _declaration_error(name, problems)
    spec = EventSpec(
        name=name,
        source=source,
        payload=dict(payload),
        purpose=purpose,
        optional=optional,
        replaced_by=replaced_by,
    )
    existing = _declared.get(name)
    if existing is not None:
        if existing.spec != spec:
            raise _declaration_error(
                name, [f"it is declared already, differently: {existing.spec!r}"]
            )
        return existing.spec
    _declared[name] = _Entry(spec)
    return spec


def declared() -> dict[str, EventSpec]:
    """Return every declared event by name, in declaration order."""
    return {name: entry.spec for name, entry in _declared.items()}


def check_payload_types(enabled: bool) -> None:
    """Turn checking of payload value types at ``emit`` on or off (off by default): a step
    before delivery (``app.core._pipeline``), so emit pays nothing for it while it is off."""
    global _type_checks, _undo_type_checks
    with _type_checks_lock:
        if enabled and _undo_type_checks is None:
            _undo_type_checks = _pipeline.install_step("types", _check_types)
        elif not enabled and _undo_type_checks is not None:
            _undo_type_checks()
            _undo_type_checks = None
        _type_checks = bool(enabled)


def _check_types(name: str, kwargs: Mapping[str, Any], event: Event) -> bool:
    """The step ``check_payload_types`` installs: check the payload, types included."""
    entry = _declared.get(name)
    if entry is not None:
        check_payload(entry, kwargs)
    return True


def payload_types_checked() -> bool:
    """Whether ``emit`` checks payload value types."""
    return _type_checks


def check_payload(entry: _Entry, kwargs: Mapping[str, Any]) -> None:
    """Raise PayloadError unless ``kwargs`` fits the declared payload of ``entry``.

    Raises:
        PayloadError: a required field is missing, a field is not declared, or (with type
            checks on) a value is not of its declared type; every such field is named.
    """
    keys = kwargs.keys()
    missing = sorted(entry.required - keys)
    unexpected = sorted(keys - entry.allowed)
    wrong_types = []
    if _type_checks:
        fields = entry.spec.fields
        wrong_types = [
            f"{key}={type(value).__qualname__} (declared {type_name(fields[key])})"
            for key, value in kwargs.items()
            if key in fields and not _is_instance(value, fields[key])
        ]
    if not (missing or unexpected or wrong_types):
        return
    parts = []
    if missing:
        parts.append(f"missing required field(s) {', '.join(missing)}")
    if unexpected:
        parts.append(f"undeclared field(s) {', '.join(unexpected)}")
    if wrong_types:
        parts.append(f"wrong type(s) {', '.join(wrong_types)}")
    name = entry.spec.name
    raise PayloadError(
        f"emit({name!r}): {'; '.join(parts)}; declared fields: {_describe_fields(entry.spec)}",
        event_name=name,
        missing=missing,
        unexpected=unexpected,
        wrong_types=wrong_types,
    )


def check_emit(name: object, kwargs: Mapping[str, Any]) -> None:
    """Check an emit as ``emit`` does, without delivering it.

    Raises:
        EventNameTypeError, EventNameError, UnknownEventError: the name is not declared.
        PayloadError: the payload does not fit the declaration.
    """
    try:
        entry = _declared[name]  # type: ignore[index]
    except (KeyError, TypeError):
        raise unknown_event_error(name) from None
    check_payload(entry, kwargs)


def unknown_event_error(name: object) -> EventsError:
    """Return the error for an ``emit`` of a name the catalogue does not have.

    That is EventNameTypeError or EventNameError for a malformed name, else UnknownEventError
    with the closest declared names as suggestions; when the application's source declares the
    name in a module nobody imported, the message says where, and what to import.
    """
    error = name_error(name)
    if error is not None:
        return error
    name = cast(str, name)  # name_error returned an error for anything else
    suggestions = suggest(name)
    hint = _hint(suggestions)
    return UnknownEventError(
        f"event {name!r} is not declared{'; ' + hint if hint else '.'} {_how_to_declare(name)}",
        event_name=name,
        suggestions=suggestions,
    )


def _how_to_declare(name: str) -> str:
    """Where the application's source declares ``name`` in a module nobody imported, and how
    to import it; else how to declare it."""
    found = find_declaration(name)
    if found is None or found[0].module in sys.modules:
        return (
            "Declare it with app.core.events.declare() in the events module of the package "
            "that emits it."
        )
    declaration, source = found
    where = f"It is declared at {declaration.site}, in {declaration.module}, which is not imported"
    if declaration.module not in source.startup:
        return f"{where}, and {source.never_imported(declaration.module)}"
    package = source.business_package_of(declaration.module) or declaration.module
    return (
        f"{where}. Import {package}, or call "
        f"{source.package}.{BOOTSTRAP_MODULE}.load_business_packages() first, as start-up does."
    )


def did_you_mean(name: str, names: list[str] | None = None) -> str:
    """``"did you mean 'a' or 'b'?"`` for the declared names (or ``names``) closest to
    ``name``, or ``""`` when none is close."""
    return _hint(suggest(name, names))


def _hint(suggestions: list[str]) -> str:
    return f"did you mean {' or '.join(map(repr, suggestions))}?" if suggestions else ""


def parameter_problems(
    event: str, parameters: Mapping[str, bool], payload: Iterable[str], optional: Iterable[str]
) -> list[str]:
    """What is wrong with a handler of ``event`` whose keyword-fillable parameters are
    ``parameters`` (name -> whether it has a default): each one that is not a field (the
    payload arrives as keyword arguments, so it would never be filled), and each one without a
    default for a field that is only optional. Shared by ``verify`` and the static scan."""
    optional = list(optional)
    fields = [*payload, *optional]
    problems = []
    for parameter, has_default in parameters.items():
        if parameter not in fields:
            problems.append(
                f"takes {parameter!r}, which is not a field of {event!r} "
                f"(fields: {', '.join(fields) or 'none'})"
            )
        elif parameter in optional and not has_default:
            problems.append(
                f"requires {parameter!r}, which is optional in {event!r}; "
                "give the parameter a default"
            )
    return problems


def suggest(name: str, names: list[str] | None = None) -> list[str]:
    """Return the declared names (or ``names``) closest to ``name``, best first."""
    pool = list(_declared) if names is None else names
    return difflib.get_close_matches(name, pool, n=3, cutoff=_SUGGESTION_CUTOFF)


def type_name(annotation: FieldType) -> str:
    """Render a field type the way it is written: ``int``, ``str | None``, ``Any``."""
    if annotation is Any:
        return "Any"
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type):
        return annotation.__qualname__
    return " | ".join(type_name(arg) for arg in annotation.__args__)


def _describe_fields(spec: EventSpec) -> str:
    required = [f"{key}: {type_name(kind)}" for key, kind in spec.payload.items()]
    optional = [f"{key}: {type_name(kind)} (optional)" for key, kind in spec.optional.items()]
    return ", ".join([*required, *optional]) or "none"


def _is_instance(value: object, annotation: FieldType) -> bool:
    if annotation is Any:
        return True
    if annotation is int and isinstance(value, bool):
        return False  # a bool is an int to Python, never to a payload contract
    return isinstance(value, annotation)


def _field_problems(fields: object, label: str) -> list[str]:
    if not isinstance(fields, Mapping):
        return [f"{label} must be a mapping of field name to type, not {type(fields).__name__}"]
    problems = []
    for key, annotation in fields.items():
        if not isinstance(key, str) or not key.isidentifier():
            problems.append(f"{label} field {key!r} is not a valid keyword argument name")
        if not _is_field_type(annotation):
            problems.append(
                f"{label} field {key!r} has type {annotation!r}; use a class, a union of "
                "classes (int | None) or typing.Any"
            )
    return problems


def _is_field_type(annotation: object) -> bool:
    if annotation is Any or isinstance(annotation, type):
        return True
    return isinstance(annotation, types.UnionType) and all(
        isinstance(arg, type) for arg in annotation.__args__
    )


def _declaration_error(name: str, problems: list[str]) -> CatalogueError:
    listed = "; ".join(problems)
    return CatalogueError(f"cannot declare {name!r}: {listed}", problems=problems, event_name=name)
