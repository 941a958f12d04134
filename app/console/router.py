"""The console's routes: a FastAPI ``APIRouter`` any application mounts under a prefix.

::

    from app.console import console_router

    app.include_router(console_router(), prefix="/events")  # the token: APP_CONSOLE_TOKEN

Every route but the login form's POST answers 401 without the token (as a bearer, or the
cookie the login form sets): HTML pages with the login form, the stream and the POSTs with
JSON. POSTs that change something also need a same-origin ``Origin`` (or ``Referer``): 403
otherwise. The durable queue is read through ``app.durable.admin`` on the open database;
Retry needs the procrastinate app the application keeps in ``app.state.durable_queue``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs

import structlog
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.sse import EventSourceResponse, ServerSentEvent
from fastapi.templating import Jinja2Templates

from app.console._auth import COOKIE, cookie_value, is_authorized, is_token, same_origin
from app.console._catalogue import catalogue
from app.console._feed import Feed
from app.core._source import APP_ROOT
from app.durable import admin

__all__ = ["DEFAULT_HISTORY", "ConsoleRouter", "console_router"]

log = structlog.get_logger(__name__)

DEFAULT_HISTORY: Final = 200
"""Emits (and handler failures) the console keeps per process, by default."""
_TEMPLATES: Final = Jinja2Templates(directory=Path(__file__).parent / "templates")
_OPEN_ROUTES: Final = frozenset({"console_login"})


class ConsoleRouter(APIRouter):
    """The console's routes, and ``close()`` for a server that stops."""

    feed: Feed
    """The recorder behind the live feed, the history and the failures."""

    def close(self) -> None:
        """End every open live stream, and those opened later: call it when the server stops
        accepting, or open pages hold its shutdown for its whole grace period. Call it on the
        event loop's thread."""
        self.feed.close()


def console_router(
    token: str | None = None,
    *,
    history: int | None = None,
    show_payloads: bool | None = None,
    source_root: Path | None = APP_ROOT,
) -> ConsoleRouter:
    """The console as a router, to mount with ``app.include_router(..., prefix="/events")``.

    Args:
        token: The token that lets people in; ``APP_CONSOLE_TOKEN`` by default.
        history: Emits and failures kept in memory; ``APP_CONSOLE_HISTORY``, else 200.
        show_payloads: Show payload values, not only field names (they may hold personal
            data); ``APP_CONSOLE_SHOW_PAYLOADS=1``, else off.
        source_root: The package scanned for emit sites (``app/`` by default); None: none.

    Raises:
        ValueError: no token (neither given nor in the environment), or a history that is
            not a whole number of at least 1.
    """
    token = os.environ.get("APP_CONSOLE_TOKEN", "") if token is None else token
    if not token:
        raise ValueError("the console needs a token: pass token= or set APP_CONSOLE_TOKEN")
    if history is None:
        setting = os.environ.get("APP_CONSOLE_HISTORY") or str(DEFAULT_HISTORY)
        if not setting.isdigit():
            raise ValueError(f"APP_CONSOLE_HISTORY must be a whole number, not {setting!r}")
        history = int(setting)
    if history < 1:
        raise ValueError(f"the console's history must hold at least 1 emit, not {history}")
    if show_payloads is None:
        show_payloads = os.environ.get("APP_CONSOLE_SHOW_PAYLOADS", "") == "1"
    feed = Feed(history, show_payloads=show_payloads)
    router = ConsoleRouter(route_class=_guarded(token), include_in_schema=False)
    router.feed = feed

    def page(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
        return _TEMPLATES.TemplateResponse(
            request, template, {"feed": feed, **context}, status_code=status_code
        )

    @router.get("", name="console_home")
    async def home(request: Request) -> Response:
        return page(request, "live.html", records=list(reversed(feed.history)))

    @router.get("/catalogue", name="console_catalogue")
    async def catalogue_page(request: Request, q: str = "") -> Response:
        return page(request, "catalogue.html", events=catalogue(q, source_root), q=q)

    @router.get("/failures", name="console_failures")
    async def failures(request: Request) -> Response:
        return page(request, "failures.html", failures=list(reversed(feed.failures)))

    @router.get("/chains/{correlation_id}", name="console_chain")
    async def chain(request: Request, correlation_id: str) -> Response:
        tree = feed.chain(correlation_id)
        return page(request, "chain.html", tree=tree, correlation_id=correlation_id)

    @router.get("/queue", name="console_queue")
    async def queue(request: Request, retried: int | None = None) -> Response:
        try:
            counts, letters = await admin.job_counts(), await admin.dead_letters()
        except Exception as error:
            log.exception("console could not read the durable queue")
            return page(request, "queue.html", error=f"{type(error).__name__}: {error}")
        oldest = counts.oldest_waiting
        age = None if oldest is None else (datetime.now(UTC) - oldest).total_seconds()
        return page(
            request,
            "queue.html",
            counts=counts,
            oldest_age=age,
            letters=letters,
            retried=retried,
            can_retry=_durable_queue(request) is not None,
        )

    @router.get("/stream", name="console_stream", response_class=EventSourceResponse)
    async def stream(request: Request) -> AsyncIterator[ServerSentEvent]:
        fragment = _TEMPLATES.get_template("_emit.html")
        with feed.watch() as watcher:
            yield ServerSentEvent(comment="watching", retry=2000)
            while not watcher.closed:
                for record in await watcher.get(wait=5.0):
                    html = fragment.render(record=record, request=request, feed=feed)
                    yield ServerSentEvent(raw_data=html, event="emit", id=record.event_id)

    @router.post("/login", name="console_login")
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        given = form.get("token", [""])[0]
        home_path = request.url_for("console_home").path
        wanted = form.get("next", [home_path])[0]
        target = wanted if wanted.startswith(home_path) and "//" not in wanted else home_path
        if not is_token(given, token):
            log.info("console login refused")
            return page(request, "login.html", 401, wrong=True, next=target)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            cookie_value(token),
            path=home_path,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @router.post("/logout", name="console_logout")
    async def logout(request: Request) -> Response:
        home_path = request.url_for("console_home").path
        response = RedirectResponse(home_path, status_code=303)
        response.delete_cookie(COOKIE, path=home_path, httponly=True, samesite="strict")
        return response

    @router.post("/dead/{job_id}/retry", name="console_retry")
    async def retry(request: Request, job_id: int) -> Response:
        return await _retry(request, [job_id])

    @router.post("/dead/retry", name="console_retry_all")
    async def retry_all(request: Request) -> Response:
        return await _retry(request, None)

    return router


async def _retry(request: Request, job_ids: list[int] | None) -> Response:
    """Put dead letters back in the queue and go back to the queue page (303)."""
    queue = _durable_queue(request)
    if queue is None:
        return JSONResponse({"detail": "this application keeps no durable queue"}, 503)
    retried = await admin.retry(queue, job_ids)
    log.info("console retried dead letters", job_ids=retried)
    target = f"{request.url_for('console_queue').path}?retried={len(retried)}"
    return RedirectResponse(target, status_code=303)


def _durable_queue(request: Request) -> Any:
    return getattr(request.app.state, "durable_queue", None)


def _guarded(token: str) -> type[APIRoute]:
    """A route class that lets in only requests with the token; POSTs also need a
    same-origin request."""

    class ConsoleRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()
            open_route = self.name in _OPEN_ROUTES
            page = self.methods == {"GET"} and self.response_class is not EventSourceResponse

            async def guarded(request: Request) -> Response:
                if not open_route and not is_authorized(request, token):
                    return _refuse(request, page=page)
                if request.method == "POST" and not open_route and not same_origin(request):
                    return JSONResponse({"detail": "cross-origin request refused"}, 403)
                return await handler(request)

            return guarded

    return ConsoleRoute


def _refuse(request: Request, *, page: bool) -> Response:
    """401: the login form for a page, JSON for the stream and the POSTs."""
    headers = {"WWW-Authenticate": 'Bearer realm="events console"'}
    if page:
        return _TEMPLATES.TemplateResponse(
            request, "login.html", {"wrong": False, "next": request.url.path}, 401, headers
        )
    return JSONResponse({"detail": "the console needs its token"}, 401, headers)
