"""What ``emit`` consults on its slow path only: the test plugin's hook, deferral scopes and
traced delivery.

While a hook is installed, a deferral scope is open anywhere or tracing is on, every
declaration's fast path is off (see ``catalogue._fast_size``), so ``emit`` takes its slow path
and looks here; when none is in use, emit pays nothing for them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from app.core.tracing import TracingSettings

__all__ = [
    "EmitHook",
    "count_scope",
    "deferral",
    "installed",
    "open_scopes",
    "replaying",
    "set_traced",
    "traced",
]


class EmitHook(Protocol):
    """What the test plugin installs."""

    def emitted(self, name: str, kwargs: Mapping[str, Any], frame: FrameType) -> bool:
        """Called by an emit whose payload checked out, before delivery, with the emit's own
        frame; return False to mute it (no handler runs)."""

    def replayed(self, kwargs: Mapping[str, Any], frame: FrameType) -> None:
        """Called by the emit that delivers a queued event (``kwargs`` is the very mapping
        first passed to ``emitted``), with that emit's own frame."""

    def handler_failed(self, name: str, handler: str, error: Exception) -> None:
        """Called after ``emit`` logged a handler's failure."""


installed: EmitHook | None = None
"""The hook in force, or None. Set it with ``app.core.catalogue.install_hook``."""


deferral: ContextVar[list[tuple[str, dict[str, Any]]] | None] = ContextVar(
    "app.core.events.deferral", default=None
)
"""The queue of the innermost open deferral scope of this context, or None."""

replaying: ContextVar[Mapping[str, Any] | None] = ContextVar(
    "app.core.events.replaying", default=None
)
"""The payload a scope is replaying (the mapping first queued, which emit cannot see: ``**``
makes a new one), from the replay until that emit starts: it was checked and recorded when
first made. The replaying emit clears it, so the emits of its handlers count as new."""

open_scopes = 0
"""How many deferral scopes are open in the process."""

traced: TracingSettings | None = None
"""The tracing settings while emits are traced as they start (see ``app.core.tracing``)."""

_scopes_lock = threading.Lock()


def count_scope(change: int, on_crossing: Callable[[], None]) -> None:
    """Count a scope opening (+1) or closing (-1); when the count crosses zero, call
    ``on_crossing`` under the same lock, so that two threads cannot leave the fast paths
    computed for a count that is no longer true."""
    global open_scopes
    with _scopes_lock:
        before = open_scopes
        open_scopes += change
        if (before == 0) != (open_scopes == 0):
            on_crossing()


def set_traced(settings: TracingSettings | None, refresh: Callable[[], None]) -> None:
    """Turn traced delivery on (settings) or off (None), then call ``refresh`` under the lock
    that ``count_scope`` takes, for the same reason."""
    global traced
    with _scopes_lock:
        traced = settings
        refresh()
