"""The audit trail (in memory; the reference service moves it to a database)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AuditEntry", "AuditTrail", "trail"]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One recorded status change."""

    employee_id: int
    from_state: str
    to_state: str
    actor_id: int


@dataclass(slots=True)
class AuditTrail:
    """Entries in the order they were recorded."""

    entries: list[AuditEntry] = field(default_factory=list)

    def record(self, entry: AuditEntry) -> None:
        """Append ``entry``."""
        self.entries.append(entry)


trail = AuditTrail()
"""The process's audit trail."""
