"""The events console: a web page of the catalogue, the live flow of events and the durable
queue, as a FastAPI router any application mounts (``console_router``).

Off unless given a token (``APP_CONSOLE_TOKEN``). The live feed wraps the delivery loop only
while a page is open (``app.console._feed``), so it costs emits nothing otherwise.
"""

from __future__ import annotations

from app.console.router import DEFAULT_HISTORY, ConsoleRouter, console_router

__all__ = ["DEFAULT_HISTORY", "ConsoleRouter", "console_router"]
