"""The audit trail: every employee status change, in order."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base

__all__ = ["AuditEntry", "list_audit"]


class AuditEntry(Base):
    """One recorded status change."""

    __tablename__ = "audit_trail"

    id: Mapped[int] = mapped_column(primary_key=True)
    employee_id: Mapped[int]
    from_state: Mapped[str] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    actor_id: Mapped[int]
    correlation_id: Mapped[str | None] = mapped_column(String(64))
    """The chain (for a request's events, the request id) that caused the change."""


async def list_audit(session: AsyncSession) -> Sequence[AuditEntry]:
    """Every entry, oldest first."""
    return (await session.scalars(select(AuditEntry).order_by(AuditEntry.id))).all()
