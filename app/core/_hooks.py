"""Instrumentation points for the test plugin, free while nothing is installed.

While a hook is installed, every declaration's fast path is off (see ``catalogue._fast_size``),
so ``emit`` takes its slow path, where it calls the hook; production never does.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import FrameType
from typing import Any, Protocol

__all__ = ["EmitHook", "installed"]


class EmitHook(Protocol):
    """What the test plugin installs."""

    def emitted(self, name: str, kwargs: Mapping[str, Any], frame: FrameType) -> bool:
        """Called by an emit whose payload checked out, before delivery, with the emit's own
        frame; return False to mute it (no handler runs)."""

    def handler_failed(self, name: str, handler: str, error: Exception) -> None:
        """Called after ``emit`` logged a handler's failure."""


installed: EmitHook | None = None
"""The hook in force, or None. Set it with ``app.core.catalogue.install_hook``."""
