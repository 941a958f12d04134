"""The main job, ``python -m app``, run as a user would: as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_app(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_the_demo_shows_handlers_running_and_one_failure_isolated():
    """The scenario exits 0, shows the handlers' work, and the failure with its traceback."""
    result = run_app()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any("welcome mail queued" in line for line in lines)
    assert sum("status change audited" in line for line in lines) == 2
    failure = [line for line in lines if "event handler failed" in line]
    assert len(failure) == 1
    assert "event_name=employee.created" in failure[0]
    assert "handler=app.demo.refresh_headcount_dashboard" in failure[0]
    assert "ConnectionError: headcount dashboard is unreachable" in result.stdout
    assert result.stderr == ""


def test_the_demo_logs_json_lines():
    """With --json every line is a JSON object; the failure record has its exact keys."""
    result = run_app("--json")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    (failure,) = [r for r in records if r["event"] == "event handler failed"]
    assert set(failure) == {
        "event",
        "event_name",
        "event_id",
        "correlation_id",
        "handler",
        "level",
        "timestamp",
        "exception",
    }
    assert failure["event_name"] == "employee.created"
    assert failure["handler"] == "app.demo.refresh_headcount_dashboard"
    assert failure["level"] == "error"
    assert failure["exception"][0]["exc_type"] == "ConnectionError"
    assert all("locals" not in frame for frame in failure["exception"][0]["frames"])
    audited = [r for r in records if r["event"] == "audit trail"]
    assert [(r["from_state"], r["to_state"]) for r in audited] == [
        ("onboarding", "active"),
        ("active", "on_leave"),
    ]


def test_json_logs_can_be_chosen_by_environment():
    """APP_LOG_JSON=1 selects JSON lines without the flag."""
    result = run_app(env={"APP_LOG_JSON": "1"})
    assert result.returncode == 0, result.stderr
    assert all(line.startswith("{") for line in result.stdout.splitlines())
