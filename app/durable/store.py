"""The durable side's own tables: the inbox (what committed) and each job's last failure."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base

__all__ = ["FailedRun", "InboxEntry"]


class InboxEntry(Base):
    """A durable handler's run that committed: written in the handler's own transaction, so a
    job re-run after a crash finds it and skips the handler (exactly-once database effects)."""

    __tablename__ = "durable_inbox"

    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    handler_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    done_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class FailedRun(Base):
    """The last failed run of a job (procrastinate keeps its status, not its error): a dead
    letter's error, traceback summary and attempt count."""

    __tablename__ = "durable_failures"

    job_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    handler_id: Mapped[str] = mapped_column(String(100))
    event_name: Mapped[str] = mapped_column(String(100))
    event_id: Mapped[str] = mapped_column(String(36))
    attempts: Mapped[int]
    error: Mapped[str] = mapped_column(Text)
    traceback: Mapped[str] = mapped_column(Text)
    failed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
