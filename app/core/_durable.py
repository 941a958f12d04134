"""Durable delivery's side of the core: the job a durable handler gets, the transport that
carries jobs, and the checks that a payload survives the trip (JSON).

The core never runs durable handlers itself: ``emit`` turns each durable registration of the
event into a ``DurableJob`` and hands them all to the installed transport at once
(``_pipeline.install_transport``); a worker gives each job back to ``app.core.durable.run_job``.
"""

from __future__ import annotations

import ast
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol

from app.core._checks import check_timeout
from app.core._errors import InvalidOptionError

__all__ = [
    "DEFAULT_DURABLE_TIMEOUT",
    "DEFAULT_MAX_ATTEMPTS",
    "JSON_FIELD_TYPES",
    "DurableJob",
    "DurableTransport",
    "check_durable_options",
    "json_friendly",
    "json_problem",
    "unfriendly_types",
]

DEFAULT_MAX_ATTEMPTS: Final = 5
"""Runs of a durable handler's job before it is a dead letter, unless ``on`` says otherwise."""

DEFAULT_DURABLE_TIMEOUT: Final = 60.0
"""Seconds a durable handler may run, unless ``on`` says otherwise."""

JSON_FIELD_TYPES: Final[frozenset[object]] = frozenset(
    {int, float, str, bool, type(None), list, dict, Any}
)
"""Declared field types whose values go into a durable job unchanged."""

_ID: Final = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
_MAX_ID_LENGTH: Final = 100


@dataclass(frozen=True, slots=True)
class DurableJob:
    """One durable handler's share of one emit: what a worker needs to run it later.

    Attributes:
        event_name: The event.
        payload: The emitter's keyword arguments (JSON values only).
        handler_id: The durable handler's stable ``id``.
        event_id: The emit's id; with ``handler_id``, the job's identity.
        correlation_id: The chain's id.
        causation_id: The id of the event whose work emitted this one, or None.
        depth: The emit's depth in its causal chain.
        occurred_at: When the emit started (aware UTC).
        max_attempts: Runs before the job is a dead letter.
        timeout: Seconds one run may take.
    """

    event_name: str
    payload: dict[str, Any]
    handler_id: str
    event_id: str
    correlation_id: str
    causation_id: str | None
    depth: int
    occurred_at: datetime
    max_attempts: int
    timeout: float

    def to_json(self) -> dict[str, Any]:
        """The job as a JSON object (``occurred_at`` in ISO 8601)."""
        return {
            "event_name": self.event_name,
            "payload": self.payload,
            "handler_id": self.handler_id,
            "event_id": self.event_id,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "depth": self.depth,
            "occurred_at": self.occurred_at.isoformat(),
            "max_attempts": self.max_attempts,
            "timeout": self.timeout,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DurableJob:
        """The job ``to_json`` gave.

        Raises:
            KeyError, TypeError, ValueError: ``data`` is not such an object.
        """
        fields = dict(data)
        fields["occurred_at"] = datetime.fromisoformat(fields["occurred_at"])
        return cls(**fields)


class DurableTransport(Protocol):
    """Carries the jobs of durable handlers to workers (``app.durable`` has procrastinate's).

    ``enqueue`` is async: it writes every job of one emit in one round trip, in the unit of
    work (database transaction) open in the calling context, so they commit or roll back with
    the business data.
    """

    async def enqueue(self, jobs: Sequence[DurableJob]) -> None:
        """Enqueue ``jobs`` (all of one emit) in the current transaction.

        Raises:
            DurableDeliveryError: no unit of work is open in this context.
        """


def check_durable_options(handler_id: object, max_attempts: object, timeout: object) -> None:
    """Check a durable handler's ``id``, ``max_attempts`` and ``timeout``.

    Raises:
        InvalidOptionError: one is out of range; the message gives the rule.
    """
    if (
        not isinstance(handler_id, str)
        or len(handler_id) > _MAX_ID_LENGTH
        or _ID.fullmatch(handler_id) is None
    ):
        raise InvalidOptionError(
            f"a durable handler's id must be dotted lowercase words ('notify.welcome_mail': "
            f"ASCII letters, digits and _, each word starting with a letter, at least one "
            f"dot, at most {_MAX_ID_LENGTH} characters), not {handler_id!r}. It names the "
            "handler's queued jobs, so it must survive renaming the function."
        )
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise InvalidOptionError(f"max_attempts must be an int >= 1, not {max_attempts!r}.")
    check_timeout(timeout)


def json_problem(value: object, where: str) -> str | None:
    """Why ``value`` (found at ``where``) would not come back from JSON as it is, or None.

    Accepted: str, int, float (finite), bool, None, and lists and dicts (with str keys) of
    them. Tuples are refused: they would come back as lists.
    """
    if value is None or isinstance(value, str | bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where} is {value!r}, which JSON cannot hold"
    if isinstance(value, list):
        for index, item in enumerate(value):
            problem = json_problem(item, f"{where}[{index}]")
            if problem is not None:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where} has the key {key!r}, not a str"
            problem = json_problem(item, f"{where}[{key!r}]")
            if problem is not None:
                return problem
        return None
    return f"{where} holds a {type(value).__qualname__}, which is not a JSON value"


def unfriendly_types(fields: Mapping[str, object]) -> list[str]:
    """The declared fields (name: type) whose type is not made of ``JSON_FIELD_TYPES``."""
    return [
        name
        for name, field_type in fields.items()
        if not all(part in JSON_FIELD_TYPES for part in _union_members(field_type))
    ]


_JSON_TYPE_NAMES: Final = frozenset(
    {"int", "float", "str", "bool", "None", "NoneType", "list", "dict", "Any", "typing.Any"}
)


def json_friendly(written: str) -> bool:
    """Whether a field type written as ``written`` in the source (``int | None``, ``Any``,
    ``Optional[str]``) is made of JSON types only; for the static check, which imports
    nothing."""
    try:
        expression = ast.parse(written, mode="eval").body
    except SyntaxError:
        return False
    return _json_expression(expression)


def _json_expression(node: ast.expr) -> bool:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _json_expression(node.left) and _json_expression(node.right)
    if isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("Optional", "Union"):
        parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        return all(_json_expression(part) for part in parts)
    return ast.unparse(node) in _JSON_TYPE_NAMES


def _union_members(field_type: object) -> tuple[object, ...]:
    if isinstance(field_type, types.UnionType) or typing.get_origin(field_type) is typing.Union:
        return typing.get_args(field_type)
    return (field_type,)
