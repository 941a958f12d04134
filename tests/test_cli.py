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


def test_help_describes_every_command():
    """``--help`` names each command with what it does, and how to get more."""
    result = run_app("--help")
    assert result.returncode == 0
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    text = " ".join(lines)
    for command, what in [
        ("serve", "serve the reference HR service over HTTP with uvicorn"),
        ("demo", "run a short HR scenario on the service's database, one failing handler included"),
        ("events", "show, check or write the event catalogue and EVENTS.md"),
        ("worker", "run durable handlers from the database's queue until stopped"),
    ]:
        assert f"{command} {what}" in text
    assert "`python -m app COMMAND --help` describes a command and its options." in text
    assert "--json log JSON lines instead of console lines (or set APP_LOG_JSON=1)" in text


def test_events_help_describes_every_action():
    """``events --help`` describes show, check and write, and every option."""
    result = run_app("events", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert (
        "usage: python -m app events [-h] [--all] [--root ROOT] [--file FILE] [ACTION] [ID ...]"
        in text
    )
    for action, what in [
        ("show", "print the catalogue as a table"),
        ("check", "check the source and EVENTS.md, print each problem as path:line"),
        ("write", "regenerate EVENTS.md from the source"),
        ("jobs", "count the durable jobs by state"),
        ("dead", "list the dead letters: jobs whose last allowed run failed"),
        ("retry", "put dead letters back in the queue: `retry ID [ID ...]`, or `retry --all`"),
    ]:
        assert f"{action} {what}" in text
    assert "ACTION show (the default), check, write, jobs, dead or retry" in text
    assert "--root ROOT the package directory to scan" in text
    assert "--file FILE EVENTS.md to check or write" in text


def test_an_unknown_action_lists_the_choices():
    """A mistyped action exits 2 naming the choices."""
    result = run_app("events", "chek")
    assert result.returncode == 2
    assert (
        "invalid choice: 'chek' (choose from 'show', 'check', 'write', 'jobs', 'dead', 'retry')"
        in result.stderr
    )


def test_a_worker_concurrency_below_one_is_refused():
    """``serve --worker-concurrency`` and ``worker --concurrency`` take 1 or more."""
    for args in (("serve", "--worker-concurrency", "0"), ("worker", "--concurrency", "-2")):
        result = run_app(*args)
        assert result.returncode == 2, result
        assert "must be 1 or more" in result.stderr


def test_the_embedded_workers_concurrency_is_documented_with_its_variable():
    """``serve --help`` shows ``APP_WORKER_CONCURRENCY`` as the default it takes."""
    result = run_app("serve", "--help", env={"APP_WORKER_CONCURRENCY": "6"})
    assert result.returncode == 0
    assert "--worker-concurrency N" in result.stdout
    assert "default: 6, or APP_WORKER_CONCURRENCY" in " ".join(result.stdout.split())


def test_a_bad_worker_concurrency_variable_is_a_usage_error_of_serve_only():
    """``APP_WORKER_CONCURRENCY=0`` makes ``serve`` exit 2 naming the option; other commands
    do not read it."""
    refused = run_app("serve", env={"APP_WORKER_CONCURRENCY": "0"})
    assert refused.returncode == 2, refused
    assert "--worker-concurrency: must be 1 or more, not 0" in refused.stderr
    assert run_app("events", "show", env={"APP_WORKER_CONCURRENCY": "0"}).returncode == 0
