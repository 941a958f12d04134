"""Audit: a trail of every employee status change."""

from __future__ import annotations

from app.business.audit import events as events  # registers its handlers on import
from app.business.audit.trail import AuditEntry, list_audit

__all__ = ["AuditEntry", "list_audit"]
