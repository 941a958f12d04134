"""What business code imports: ``from app.utils import current_event, emit, on``."""

from __future__ import annotations

from app.core.events import current_event, emit, on

__all__ = ["current_event", "emit", "on"]
