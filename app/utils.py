"""What business code imports: ``from app.utils import emit, on``."""

from __future__ import annotations

from app.core.events import emit, on

__all__ = ["emit", "on"]
