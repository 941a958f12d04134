"""What ``python -m app events jobs|dead|retry`` shows and does, on the open database."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import procrastinate
from sqlalchemy import text

from app import db
from app.durable.queue import TASK_NAME

__all__ = ["DeadLetter", "JobCounts", "dead_letters", "job_counts", "retry"]


@dataclass(frozen=True)
class JobCounts:
    """Durable jobs by state (procrastinate's: todo, doing, succeeded, failed, ...), and when
    the oldest one still waiting (todo) was enqueued."""

    by_status: dict[str, int]
    oldest_waiting: datetime | None


@dataclass(frozen=True)
class DeadLetter:
    """A job that failed its last allowed run."""

    job_id: int
    event_name: str
    event_id: str
    handler_id: str
    attempts: int
    error: str | None
    traceback: str | None
    failed_at: datetime | None


async def job_counts() -> JobCounts:
    """Count the durable jobs by state."""
    async with db.transaction() as session:
        rows = await session.execute(
            text(
                "SELECT status::text, count(*) FROM procrastinate_jobs WHERE task_name = :task "
                "GROUP BY status ORDER BY status"
            ),
            {"task": TASK_NAME},
        )
        oldest = await session.scalar(
            text(
                "SELECT min(e.at) FROM procrastinate_events e JOIN procrastinate_jobs j "
                "ON j.id = e.job_id WHERE j.status = 'todo' AND e.type = 'deferred' "
                "AND j.task_name = :task"
            ),
            {"task": TASK_NAME},
        )
    return JobCounts({row[0]: row[1] for row in rows}, oldest)


async def dead_letters() -> list[DeadLetter]:
    """Every failed durable job with its last error, oldest first."""
    async with db.transaction() as session:
        rows = await session.execute(
            text(
                "SELECT j.id, j.args->'job'->>'event_name', j.args->'job'->>'event_id', "
                "j.args->'job'->>'handler_id', j.attempts, f.error, f.traceback, f.failed_at "
                "FROM procrastinate_jobs j LEFT JOIN durable_failures f ON f.job_id = j.id "
                "WHERE j.status = 'failed' AND j.task_name = :task ORDER BY j.id"
            ),
            {"task": TASK_NAME},
        )
        return [DeadLetter(*row) for row in rows]


async def retry(app: procrastinate.App, job_ids: list[int] | None) -> list[int]:
    """Put dead letters (``job_ids``, or all of them with None) back in the queue, to run
    now; return the ids retried. Ids that are not dead letters are left alone."""
    dead = {letter.job_id for letter in await dead_letters()}
    chosen = sorted(dead if job_ids is None else dead.intersection(job_ids))
    for job_id in chosen:
        await app.job_manager.retry_job_by_id_async(job_id, retry_at=procrastinate.utils.utcnow())
    return chosen
