"""Notifications: the welcome mail of every new employee, kept in an outbox."""

from __future__ import annotations

from app.business.notify import handlers as handlers
from app.business.notify.outbox import Mail, Outbox, outbox

__all__ = ["Mail", "Outbox", "outbox"]
