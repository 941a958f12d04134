"""The events console: its routes and permissions through HTTP, and its feed of emits."""

from __future__ import annotations

import re
import signal
import time

import anyio
import httpx
import pytest
from conftest import running
from durable_helpers import HANDLER_ID, register
from test_service_shutdown import serve

from app.console import console_router
from app.console._auth import COOKIE
from app.console._feed import Feed
from app.core import _pipeline
from app.core.events import emit, on

pytestmark = pytest.mark.anyio

TOKEN = "console-test-token"  # noqa: S105 - the tests' own token, not a secret
NEW_EMPLOYEE = {"name": "Ada Lovelace", "department_id": 7, "created_by": 1}
SAME_ORIGIN = {"origin": "http://service"}


@pytest.fixture
def anyio_backend():
    """The service runs on asyncio."""
    return "asyncio"


@pytest.fixture
async def console(database_url, monkeypatch):
    """The service with the console mounted (APP_CONSOLE_TOKEN set), started."""
    monkeypatch.setenv("APP_CONSOLE_TOKEN", TOKEN)
    async with running(database_url) as service:
        yield service


def console_routes():
    """(method, path) of every console route but the login form's POST, mounted at /events,
    with sample ids."""
    routes = []
    for route in console_router(TOKEN).routes:
        if route.name == "console_login":
            continue
        path = "/events" + route.path
        sample = path.replace("{job_id}", "1").replace("{correlation_id}", "abc")
        routes += [(method, sample) for method in sorted(route.methods)]
    return routes


BEARER = {"authorization": f"Bearer {TOKEN}"}


async def login(client, token=TOKEN):
    return await client.post(
        "/events/login", data={"token": token, "next": "/events/catalogue"}, headers=SAME_ORIGIN
    )


async def test_every_console_route_refuses_a_missing_or_wrong_token(console):
    """Without the token, with a wrong bearer or a forged cookie: 401 on every route, the
    stream and the retries included; the pages show the login form."""
    routes = console_routes()
    assert ("GET", "/events/stream") in routes
    assert ("POST", "/events/dead/1/retry") in routes
    assert ("POST", "/events/dead/retry") in routes
    wrong = [
        {},
        {"authorization": "Bearer not-the-token"},
        {"authorization": f"Basic {TOKEN}"},
        {"cookie": f"{COOKIE}={TOKEN}"},
    ]
    for method, path in routes:
        for headers in wrong:
            response = await console.client.request(
                method, path, headers={**SAME_ORIGIN, **headers}
            )
            assert response.status_code == 401, (method, path, headers)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert TOKEN not in response.text
    page = await console.client.get("/events/catalogue")
    assert 'name="token"' in page.text
    assert page.headers["content-type"].startswith("text/html")
    stream = await console.client.get("/events/stream")
    assert stream.json() == {"detail": "the console needs its token"}


async def test_the_console_is_off_without_a_token(database_url, monkeypatch):
    """APP_CONSOLE_TOKEN unset: the service has no /events routes at all."""
    monkeypatch.delenv("APP_CONSOLE_TOKEN", raising=False)
    async with running(database_url) as service:
        for path in ("/events", "/events/catalogue", "/events/stream"):
            assert (await service.client.get(path, headers=BEARER)).status_code == 404


async def test_the_login_form_sets_a_strict_http_only_cookie(console):
    """The right token sets an HttpOnly, SameSite=Strict cookie (not holding the token) and
    goes where the form said; the cookie then opens every page. A wrong one is 401."""
    refused = await login(console.client, "wrong")
    assert refused.status_code == 401
    assert "That is not the token" in refused.text
    assert "set-cookie" not in refused.headers

    response = await login(console.client)
    assert response.status_code == 303
    assert response.headers["location"] == "/events/catalogue"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/events" in cookie
    assert TOKEN not in cookie
    for path in ("/events", "/events/catalogue", "/events/queue", "/events/failures"):
        assert (await console.client.get(path)).status_code == 200, path


async def test_login_never_redirects_off_the_console(console):
    """A ``next`` outside the console goes to the console's home instead."""
    for target in ("https://evil.example/", "//evil.example/events", "/employees"):
        response = await console.client.post(
            "/events/login", data={"token": TOKEN, "next": target}, headers=SAME_ORIGIN
        )
        assert response.headers["location"] == "/events", target


async def test_a_bearer_token_opens_the_catalogue(console):
    """An API client's bearer token is enough; the catalogue lists each event with its fields,
    emit sites and handlers in registration order, durable ones with id, attempts, timeout."""
    response = await console.client.get("/events/catalogue", headers=BEARER)
    assert response.status_code == 200
    page = response.text
    created = page[page.index('data-event="employee.created"') :]
    created = created[: created.index("</article>")]
    assert "<code>employee_id</code></td><td><code>int</code></td><td>yes" in created
    assert "app/business/hr/services.py:" in created
    mail = created.index("app.business.notify.events.send_welcome_mail")
    announce = created.index("app.business.notify.events.announce_new_employee")
    assert mail < announce
    assert "durable <code>notify.welcome_mail</code>" in created
    assert "5 attempts, 30 s timeout" in created


async def test_the_catalogue_search_filters_on_the_server(console):
    """``?q=`` keeps the events whose name, package, purpose, fields or handlers match."""
    page = (await console.client.get("/events/catalogue?q=AUDIT", headers=BEARER)).text
    assert 'data-event="employee.status_changed"' in page
    assert 'data-event="employee.created"' not in page
    page = (await console.client.get("/events/catalogue?q=nothing-like-it", headers=BEARER)).text
    assert "No event matches" in page


async def test_retry_checks_the_origin(console):
    """A logged-in browser's POST from another origin is 403; from the console's own, it is
    done and redirected back to the queue."""
    await login(console.client)
    for headers in ({"origin": "http://evil.example"}, {"referer": "http://evil.example/x"}, {}):
        response = await console.client.post("/events/dead/retry", headers=headers)
        assert response.status_code == 403, headers
    response = await console.client.post(
        "/events/dead/retry", headers={"referer": "http://service/events/queue"}
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/events/queue?retried=0"


async def test_a_dead_letter_is_listed_and_retried(console, monkeypatch, tmp_path):
    """A durable handler failing every run is a dead letter on the queue page, with its error
    and attempts; once the cause is gone, Retry runs it to success."""
    failing = tmp_path / "failing"
    failing.touch()
    monkeypatch.setenv("TEST_FAIL_FILE", str(failing))
    monkeypatch.setenv("APP_DURABLE_BACKOFF", "0")
    register(max_attempts=2)
    assert (await console.client.post("/employees", json=NEW_EMPLOYEE)).status_code == 201
    page = ""
    with anyio.fail_after(15):
        while HANDLER_ID not in page:
            await anyio.sleep(0.2)
            page = (await console.client.get("/events/queue", headers=BEARER)).text
    assert "ConnectionError: mark server down" in page
    assert "2 attempts" in page
    job_id = int(re.search(r'data-job="(\d+)"', page).group(1))

    failing.unlink()
    retried = await console.client.post(
        f"/events/dead/{job_id}/retry", headers={**BEARER, **SAME_ORIGIN}
    )
    assert retried.status_code == 303
    assert retried.headers["location"] == "/events/queue?retried=1"
    await console.settle()
    page = (await console.client.get("/events/queue", headers=BEARER)).text
    assert "No dead letters." in page
    assert '<tr data-state="succeeded"><td>succeeded</td><td>2</td></tr>' in page


def test_an_open_live_stream_does_not_hold_the_shutdown(database_url, tmp_path, monkeypatch):
    """The real server, a console page's stream open, one SIGINT: the stream ends at once and
    the server exits well within its grace period (10 s), with no error."""
    monkeypatch.setenv("APP_CONSOLE_TOKEN", TOKEN)
    process, base = serve(tmp_path, "--grace-period", "10")
    try:
        with httpx.stream("GET", f"{base}/events/stream", headers=BEARER, timeout=30) as stream:
            lines = stream.iter_lines()
            assert next(lines) == ": watching"
            started = time.monotonic()
            process.send_signal(signal.SIGINT)
            assert [line for line in lines if line.startswith("event:")] == []
        output, _ = process.communicate(timeout=20)
        elapsed = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert elapsed < 5, output
    assert "Exception in ASGI application" not in output
    assert "Application shutdown complete." in output


async def test_the_feed_wraps_delivery_only_while_a_page_watches(declare_event):
    """No page: nothing wraps the delivery loop. The first watcher wraps it, the last one to
    leave unwraps it."""
    feed = Feed(10)
    assert feed.slot not in _pipeline._wrappers
    with feed.watch():
        with feed.watch():
            assert feed.slot in _pipeline._wrappers
        assert feed.recording
    assert feed.slot not in _pipeline._wrappers
    assert not feed.recording


async def test_the_feed_shows_field_names_not_values_by_default(declare_event):
    """Payload values stay out of the records unless the deployment opts in."""
    declare_event("user.signed_up", "email")
    on("user.signed_up")(lambda **_: None)
    hidden, shown = Feed(10), Feed(10, show_payloads=True)
    with hidden.watch(), shown.watch():
        await emit("user.signed_up", email="ada@example.com")
    assert hidden.history[0].fields == {"email": None}
    assert shown.history[0].fields == {"email": "'ada@example.com'"}


async def test_an_emit_with_only_durable_handlers_is_recorded_while_a_page_watches(
    declare_event,
):
    """Its jobs are enqueued as ever; with a page open it is also recorded, its durable
    handlers listed, no in-process run."""
    declare_event("invoice.sent", n=int)
    on("invoice.sent", durable=True, id="tests.archive")(archive)
    jobs = []
    undo = _pipeline.install_transport(ListTransport(jobs))
    feed = Feed(10)
    try:
        await emit("invoice.sent", n=1)
        with feed.watch():
            await emit("invoice.sent", n=2)
    finally:
        undo()
    assert [job.payload for job in jobs] == [{"n": 1}, {"n": 2}]
    [record] = feed.history
    assert (record.name, record.runs, record.durable) == ("invoice.sent", [], ("tests.archive",))


async def archive(**_):
    """A durable handler the tests never run."""


class ListTransport:
    """A durable transport that keeps the jobs in a list."""

    def __init__(self, jobs):
        self.jobs = jobs

    async def enqueue(self, jobs):
        self.jobs.extend(jobs)


async def test_a_slow_page_drops_its_oldest_items_and_never_blocks_an_emit(declare_event):
    """A page that does not read keeps only its newest ``queue_size`` records; emits go on."""
    declare_event("tick.happened", "n")
    on("tick.happened")(lambda **_: None)
    feed = Feed(100, queue_size=3)
    with feed.watch() as watcher:
        with anyio.fail_after(2):
            for n in range(5):
                await emit("tick.happened", n=n)
        records = await watcher.get(wait=0)
    assert [r.event_id for r in records] == [r.event_id for r in list(feed.history)[2:]]
    assert watcher.dropped == 2
    assert len(feed.history) == 5


async def test_the_history_keeps_the_newest_emits(declare_event):
    """The history is a ring buffer of the newest ``history`` records."""
    declare_event("tick.happened", "n")
    on("tick.happened")(lambda **_: None)
    feed = Feed(2)
    with feed.watch():
        for n in range(3):
            await emit("tick.happened", n=n)
    assert [record.name for record in feed.history] == ["tick.happened"] * 2
    assert feed.failures.maxlen == 2


def test_the_settings_come_from_the_environment(monkeypatch):
    """APP_CONSOLE_HISTORY sizes the history; a token is required; bad values are refused."""
    monkeypatch.delenv("APP_CONSOLE_TOKEN", raising=False)
    with pytest.raises(ValueError, match="the console needs a token"):
        console_router()
    monkeypatch.setenv("APP_CONSOLE_HISTORY", "many")
    with pytest.raises(ValueError, match="APP_CONSOLE_HISTORY must be a whole number, not 'many'"):
        console_router(TOKEN)
    with pytest.raises(ValueError, match="at least 1 emit, not 0"):
        console_router(TOKEN, history=0)


async def test_the_live_page_says_what_it_keeps(database_url, monkeypatch):
    """The history size and the payload opt-in are settings the live page reports."""
    monkeypatch.setenv("APP_CONSOLE_TOKEN", TOKEN)
    monkeypatch.setenv("APP_CONSOLE_HISTORY", "7")
    async with running(database_url) as service:
        page = (await service.client.get("/events", headers=BEARER)).text
    assert 'data-keep="7"' in page
    assert "Payload values are hidden" in page


@pytest.mark.events_expect_failure("order.placed", ValueError)
async def test_a_failure_is_recorded_and_still_logged_once(declare_event, logs):
    """A failing handler's run is recorded with its error and a short traceback, the next
    handler still runs, and the delivery loop logs the failure once."""
    declare_event("order.placed")
    ran = []

    @on("order.placed")
    async def fails(**_):
        raise ValueError("no stock")

    on("order.placed")(lambda **_: ran.append("second"))
    feed = Feed(10)
    with feed.watch():
        await emit("order.placed")
    record = feed.history[0]
    assert [(run.outcome, run.error) for run in record.runs] == [
        ("failed", "ValueError: no stock"),
        ("ok", None),
    ]
    assert ran == ["second"]
    [failure] = feed.failures
    assert failure.handler.endswith("fails")
    assert failure.error == "ValueError: no stock"
    assert failure.traceback.splitlines()[-1] == "ValueError: no stock"
    assert [r["event"] for r in logs if r["log_level"] == "error"] == ["event handler failed"]


async def test_a_chain_opens_as_a_tree_of_causes(declare_event):
    """The emits of one correlation id, each under the emit whose handler caused it."""
    declare_event("order.placed")
    declare_event("stock.reserved")
    declare_event("mail.sent")

    @on("order.placed")
    async def reserve(**_):
        await emit("stock.reserved")

    @on("stock.reserved")
    async def mail(**_):
        await emit("mail.sent")

    on("mail.sent")(lambda **_: None)
    feed = Feed(10)
    with feed.watch():
        await emit("order.placed")
        await emit("order.placed")
    first = feed.history[-1]
    tree = feed.chain(first.correlation_id)
    assert [(indent, record.name) for indent, record in tree] == [
        (0, "order.placed"),
        (1, "stock.reserved"),
        (2, "mail.sent"),
    ]
