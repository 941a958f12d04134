"""ASGI middleware: each request gets a request id, a bounded body and one deferral scope.

The events a request emits are delivered only if it succeeds: after its response has been
sent, by the application's ``BackgroundEmitter``. A request that raises, or whose response
status is 400 or more, delivers none of them (one debug log line says how many it dropped).

Before the application sees a request, its body is read in full, at most ``max_body_size``
bytes (413 above it, at once when ``Content-Length`` says so) within ``body_timeout``
seconds (408 when the client stalls). An exception the application does not handle is
logged once, as ``"request failed"`` with the request id, and answered 500; every response,
these included, carries ``X-Request-ID``.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Final

import anyio
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.deferred import BackgroundEmitter, deferred_events

__all__ = [
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_MAX_BODY_SIZE",
    "REQUEST_ID_HEADER",
    "RequestEventsMiddleware",
]

log = structlog.get_logger(__name__)

REQUEST_ID_HEADER: Final = "x-request-id"
DEFAULT_MAX_BODY_SIZE: Final = 1024 * 1024
"""Bytes a request body may hold, by default (1 MiB)."""
DEFAULT_BODY_TIMEOUT: Final = 30.0
"""Seconds a client has to send a request's whole body, by default."""

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class _Refused(Exception):
    """A request answered before the application sees it."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class RequestEventsMiddleware:
    """Bind a request id for logging, bound the body, and tie the request's events to its
    outcome.

    Args:
        app: The ASGI application.
        trust_request_id: Take a client's well-formed ``X-Request-ID`` as the request id (and
            so as the correlation id stored with the rows its events write). Off: the service
            makes its own and logs the client's as ``client_request_id``.
        max_body_size: Bytes a request body may hold; larger ones are answered 413.
        body_timeout: Seconds a client has to send the whole body; then it is answered 408.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        trust_request_id: bool = False,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
    ) -> None:
        self.app = app
        self.trust_request_id = trust_request_id
        self.max_body_size = max_body_size
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        emitter = getattr(scope["app"].state, "emitter", None)
        if not isinstance(emitter, BackgroundEmitter):
            raise RuntimeError("no BackgroundEmitter on app.state: the lifespan has not run")
        client_id = _header(scope, REQUEST_ID_HEADER)
        bindings: dict[str, str] = {}
        sane = client_id is not None and _SANE_REQUEST_ID.fullmatch(client_id) is not None
        if self.trust_request_id and sane and client_id is not None:
            request_id = client_id
        else:
            request_id = uuid.uuid4().hex
            if client_id is not None:
                bindings["client_request_id"] = _printable(client_id)
        status: int | None = None

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id, **bindings):
            try:
                body = await self._read_body(scope, receive)
            except _Refused as refusal:
                log.info("request refused", status=refusal.status, reason=refusal.detail)
                await _answer(send_with_request_id, refusal.status, {"detail": refusal.detail})
                return
            async with deferred_events(deliver=emitter.deliver_soon) as batch:
                try:
                    await self.app(scope, _replay(body, receive), send_with_request_id)
                except Exception:
                    batch.discard("the request raised")
                    log.exception(
                        "request failed", http_method=scope["method"], http_path=scope["path"]
                    )
                    if status is not None:
                        raise  # the response has started: only closing the connection is left
                    await _answer(
                        send_with_request_id,
                        500,
                        {"detail": "internal server error", "request_id": request_id},
                    )
                    return
                if status is None or status >= 400:
                    batch.discard(f"response status {status}")

    async def _read_body(self, scope: Scope, receive: Receive) -> list[Message]:
        """The request's body messages, read in full within the limits.

        Raises:
            _Refused: 413 for a body over ``max_body_size`` (declared or sent), 408 for one
                not sent in full within ``body_timeout``.
        """
        too_large = _Refused(413, f"the request body is larger than {self.max_body_size} bytes")
        declared = _header(scope, "content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_size:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        with anyio.move_on_after(self.body_timeout) as timer:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return [message]  # the client left: the application sees it leave
                chunk: bytes = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body_size:
                    raise too_large
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
        assert timer.cancelled_caught  # noqa: S101 - the loop only ends by returning or timing out
        raise _Refused(408, f"the request body was not sent within {self.body_timeout:g} s")


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives ``messages`` first, then what the client sends next."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


async def _answer(send: Send, status: int, content: dict[str, Any]) -> None:
    body = json.dumps(content).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status in (408, 413):
        headers.append((b"connection", b"close"))  # the rest of the body is not read
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: str) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name.encode():
            decoded: str = value.decode("latin-1")
            return decoded
    return None


def _printable(value: str) -> str:
    """``value`` safe for a log line: at most 64 characters, anything unusual escaped."""
    if _SANE_REQUEST_ID.fullmatch(value):
        return value
    return ascii(value[:64])[1:-1]
