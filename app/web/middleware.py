"""ASGI middleware: each request gets a request id and one deferral scope for its events.

The events a request emits are delivered only if it succeeds: after its response has been
sent, by the application's ``BackgroundEmitter``. A request that raises, or whose response
status is 400 or more, delivers none of them (one debug log line says how many it dropped).
"""

from __future__ import annotations

import re
import uuid
from typing import Final

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.deferred import BackgroundEmitter, deferred_events

__all__ = ["REQUEST_ID_HEADER", "RequestEventsMiddleware"]

REQUEST_ID_HEADER: Final = "x-request-id"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class RequestEventsMiddleware:
    """Bind a request id for logging and tie the request's events to its outcome."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        emitter = getattr(scope["app"].state, "emitter", None)
        if not isinstance(emitter, BackgroundEmitter):
            raise RuntimeError("no BackgroundEmitter on app.state: the lifespan has not run")
        request_id = _request_id(scope)
        status: int | None = None

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            async with deferred_events(deliver=emitter.deliver_soon) as batch:
                await self.app(scope, receive, send_with_request_id)
                if status is None or status >= 400:
                    batch.discard(f"response status {status}")


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER.encode():
            candidate: str = value.decode("latin-1")
            if _SANE_REQUEST_ID.fullmatch(candidate):
                return candidate
    return uuid.uuid4().hex
