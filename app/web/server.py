"""Serving the application with uvicorn, with a shutdown bounded by its grace period.

On the first SIGINT or SIGTERM uvicorn stops accepting, tells the application
(``state.shutdown.stop()``, which ends the console's live streams, requests that never end by
themselves), waits up to the grace period for the requests in flight (then cancels them), and
runs the lifespan's shutdown, which waits up to the grace period for in-process event
deliveries and then cancels and logs what is left.
A second signal stops every wait at once; unlike plain uvicorn, it still runs the lifespan's
shutdown, so the deliveries it drops are logged (``"background deliveries cancelled"``,
with their event ids and correlation ids), never lost silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import socket
from types import FrameType

import structlog
import uvicorn
from fastapi import FastAPI

__all__ = ["run"]

log = structlog.get_logger(__name__)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lifespan_shut_down = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        second = self.should_exit
        super().handle_exit(sig, frame)
        if second and self._loop is not None:
            log.warning("second signal: shutting down now", signal=signal.Signals(sig).name)
            self.force_exit = True  # stop waiting for requests in flight
            self._loop.call_soon_threadsafe(self._app.state.shutdown.hurry)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._app.state.shutdown.stop()  # before waiting for requests: end the endless ones
        lifespan = self.lifespan
        shut_down = lifespan.shutdown

        async def once() -> None:
            if not self._lifespan_shut_down:
                self._lifespan_shut_down = True
                await shut_down()

        lifespan.shutdown = once
        await super().shutdown(sockets)
        await once()  # uvicorn skips it after a second signal; the deliveries must be logged


def run(
    app: FastAPI, *, host: str, port: int, grace_period: float, keep_alive: float = 65.0
) -> None:
    """Serve ``app`` (built by ``create_app``) until a signal; see the module's docstring.

    Args:
        app: The service; its ``state.shutdown`` is hurried by a second signal.
        host: The address to bind.
        port: The port to bind.
        grace_period: Seconds the first signal waits for requests in flight.
        keep_alive: Seconds an idle connection is kept open. Longer than the idle timeout of
            the clients and proxies in front (httpx's and uvicorn's default are both 5 s):
            otherwise a client can send a request on a connection the server is closing, and
            that request fails with no response.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        timeout_graceful_shutdown=math.ceil(grace_period),
        timeout_keep_alive=math.ceil(keep_alive),
    )
    # uvicorn raises the signal it caught again once it has shut down: SIGINT ends here as
    # KeyboardInterrupt, which is a clean exit (as with uvicorn.run).
    with contextlib.suppress(KeyboardInterrupt):
        _Server(config, app).run()
