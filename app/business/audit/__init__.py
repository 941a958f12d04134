"""Audit: a trail of every employee status change."""

from __future__ import annotations

from app.business.audit import events as events  # registers its handlers on import
from app.business.audit.trail import AuditEntry, AuditTrail, trail

__all__ = ["AuditEntry", "AuditTrail", "trail"]
