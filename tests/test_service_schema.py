"""The OpenAPI document against the real server: a property-based run (schemathesis) finds
no server error and no status the document does not list."""

from __future__ import annotations

import signal

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance
from test_service_shutdown import serve


@pytest.fixture(scope="module")
def live_schema(session_database_url, tmp_path_factory):
    """The service in a subprocess on the session's database, and its OpenAPI document."""
    process, base = serve(tmp_path_factory.mktemp("schema"))
    try:
        yield schemathesis.openapi.from_url(f"{base}/openapi.json")
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)


def test_no_server_error_and_no_undocumented_status(live_schema):
    """Generated requests, valid and not, to every route: never a 5xx, never a status the
    document leaves out (25 examples a route, derandomized, so CI runs the same ones)."""
    operations = [result.ok() for result in live_schema.get_all_operations()]
    assert len(operations) == 5
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def call(case):
            case.call_and_validate(checks=[not_a_server_error, status_code_conformance], timeout=10)

        call()


def test_every_status_a_route_returns_is_documented(live_schema):
    """The document lists 404 and 409 where a route answers them, and 408, 413, 422 and 500
    on every route that takes input."""
    paths = live_schema.raw_schema["paths"]
    statuses = {
        (method.upper(), path): sorted(operation["responses"])
        for path, operations in paths.items()
        for method, operation in operations.items()
    }
    common = ["408", "413", "500"]
    assert statuses == {
        ("POST", "/employees"): sorted(["201", "422", *common]),
        ("GET", "/employees/{employee_id}"): sorted(["200", "404", "422", *common]),
        ("POST", "/employees/{employee_id}/status"): sorted(["200", "404", "409", "422", *common]),
        ("GET", "/audit"): sorted(["200", *common]),
        ("GET", "/outbox"): sorted(["200", *common]),
    }
