"""Mail waiting to be sent: the outbox table."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base

__all__ = ["Mail", "list_outbox"]


class Mail(Base):
    """One mail to one employee, in the order queued."""

    __tablename__ = "notify_outbox"

    id: Mapped[int] = mapped_column(primary_key=True)
    employee_id: Mapped[int]
    subject: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(String(2000))
    correlation_id: Mapped[str | None] = mapped_column(String(64))
    """The chain (for a request's events, the request id) that queued the mail."""


async def list_outbox(session: AsyncSession) -> Sequence[Mail]:
    """Every queued mail, oldest first."""
    return (await session.scalars(select(Mail).order_by(Mail.id))).all()
