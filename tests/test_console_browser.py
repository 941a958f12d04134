"""The events console in a real browser: Debian's headless Chromium driven by Playwright, on
the real service (``python -m app serve`` with the console on), with a screenshot per step in
``$APP_TEST_ARTIFACTS`` (``.test-artifacts/`` by default)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from test_serve import free_port, wait_until_up

CHROMIUM = Path("/usr/bin/chromium")
TESTS = Path(__file__).resolve().parent
TOKEN = "browser-test-token"  # noqa: S105 - the test's own token, not a secret

if not CHROMIUM.exists():
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} is missing: CI installs Debian's chromium (.ci/run)")
    pytest.skip(
        f"{CHROMIUM} is missing: `apt-get install chromium` to run the browser test",
        allow_module_level=True,
    )

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402 - needs chromium


@pytest.fixture
def artifacts():
    """The folder this test's screenshots go to."""
    folder = Path(os.environ.get("APP_TEST_ARTIFACTS") or ".test-artifacts") / "console"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def failing(tmp_path):
    """A file whose presence makes the tests' durable handler fail (its cause, to fix)."""
    path = tmp_path / "mark-server-down"
    path.touch()
    return path


@pytest.fixture
def console_url(database_url, failing, tmp_path):
    """The real service on a free port with the console on; its /events URL."""
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    env = {
        **os.environ,
        "APP_CONSOLE_TOKEN": TOKEN,
        "TEST_FAIL_FILE": str(failing),
        "APP_DURABLE_BACKOFF": "0",
    }
    server = subprocess.Popen(
        [sys.executable, str(TESTS / "console_server.py"), str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/audit", server)
        yield f"http://127.0.0.1:{port}/events"
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()


@pytest.fixture
def page():
    """A page of headless Chromium at 1280 px wide."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()


def test_the_console_in_a_browser(page: Page, console_url, failing, artifacts):
    """Log in with the token; the catalogue lists employee.created with its handlers; an
    employee created through the API appears in the live feed within 2 s with its handlers
    (and its status change, whose only handler is durable); a durable handler failing every
    run becomes a dead letter, listed with its error; once its cause is fixed, Retry delivers
    it."""
    page.goto(f"{console_url}/catalogue")
    expect(page.get_by_label("Token")).to_be_visible()
    page.screenshot(path=artifacts / "1-login.png")
    page.get_by_label("Token").fill(TOKEN)
    page.get_by_role("button", name="Log in").click()

    created = page.locator('article[data-event="employee.created"]')
    handlers = created.locator("ol.handlers > li")
    expect(handlers).to_have_count(3)
    # console_server.py registers the tests' handler before start-up imports the packages.
    expect(handlers.nth(0)).to_contain_text("durable tests.mark")
    expect(handlers.nth(1)).to_contain_text("app.business.notify.events.send_welcome_mail")
    expect(handlers.nth(1)).to_contain_text("durable notify.welcome_mail")
    expect(handlers.nth(2)).to_contain_text("app.business.notify.events.announce_new_employee")
    page.screenshot(path=artifacts / "2-catalogue.png", full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.screenshot(path=artifacts / "2-catalogue-phone.png", full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})

    page.get_by_role("link", name="Live").click()
    expect(page.locator("#status")).to_have_text("live")
    employee = httpx.post(
        console_url.removesuffix("/events") + "/employees",
        json={"name": "Ada Lovelace", "department_id": 7, "created_by": 1},
    )
    assert employee.status_code == 201
    emitted = page.locator('#feed li[data-event="employee.created"]')
    expect(emitted).to_have_count(1, timeout=2_000)
    expect(emitted.locator(".run.ok")).to_contain_text("announce_new_employee")
    expect(emitted.locator(".run.queued")).to_have_text(
        [re.compile("tests.mark"), re.compile("notify.welcome_mail")]
    )
    moved = httpx.post(
        console_url.removesuffix("/events") + f"/employees/{employee.json()['id']}/status",
        json={"to_state": "active", "actor_id": 1},
    )
    assert moved.status_code == 200
    changed = page.locator('#feed li[data-event="employee.status_changed"]')  # durable only
    expect(changed.locator(".run.queued")).to_have_text(re.compile("audit.status_change"))
    page.screenshot(path=artifacts / "3-live-feed.png", full_page=True)

    page.get_by_role("link", name="Durable queue").click()
    letter = page.locator("article.letter")
    for _ in range(60):  # the handler runs twice, about a second apart, then is a dead letter
        if letter.count():
            break
        page.wait_for_timeout(250)
        page.reload()
    expect(letter).to_have_count(1)
    expect(letter).to_contain_text("tests.mark")
    expect(letter).to_contain_text("ConnectionError: mark server down")
    expect(letter).to_contain_text("2 attempts")
    page.screenshot(path=artifacts / "4-dead-letter.png", full_page=True)

    failing.unlink()  # the mark server is back
    letter.get_by_role("button", name="Retry").click()
    expect(page.get_by_role("status")).to_have_text("Retried 1 dead letter.")
    succeeded = page.locator('tr[data-state="succeeded"] td').nth(1)
    for _ in range(60):
        if succeeded.count() and succeeded.inner_text() == "2":
            break
        page.wait_for_timeout(250)
        page.reload()
    expect(succeeded).to_have_text("2")  # the welcome mail and the retried mark
    expect(page.get_by_text("No dead letters.")).to_be_visible()
    page.screenshot(path=artifacts / "5-retried.png", full_page=True)
