"""Mail waiting to be sent (in memory; the reference service moves it to a database)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Mail", "Outbox", "outbox"]


@dataclass(frozen=True, slots=True)
class Mail:
    """One mail to one employee."""

    employee_id: int
    subject: str
    body: str


@dataclass(slots=True)
class Outbox:
    """Mails in the order they were queued."""

    mails: list[Mail] = field(default_factory=list)

    def queue(self, mail: Mail) -> None:
        """Append ``mail``."""
        self.mails.append(mail)


outbox = Outbox()
"""The process's outbox."""
