"""Notifications: the welcome mail of every new employee, kept in an outbox."""

from __future__ import annotations

from app.business.notify import events as events  # registers its handlers on import
from app.business.notify.outbox import Mail, list_outbox

__all__ = ["Mail", "list_outbox"]
