"""Durable delivery on procrastinate (PostgreSQL), outside the framework-free core.

``running()`` gives a process durable delivery on the open database (schema, transport and,
optionally, a background worker); ``work()`` runs a worker in the foreground
(``python -m app worker``), on the app ``worker_app()`` opens; ``admin`` backs
``python -m app events jobs|dead|retry``. See ``app.durable.queue`` for the semantics.
"""

from __future__ import annotations

from app.durable.queue import (
    TASK_NAME,
    ExponentialBackoff,
    ProcrastinateTransport,
    ensure_schema,
    make_app,
    recover_lost_jobs,
    running,
    work,
    worker_app,
)
from app.durable.store import FailedRun, InboxEntry

__all__ = [
    "TASK_NAME",
    "ExponentialBackoff",
    "FailedRun",
    "InboxEntry",
    "ProcrastinateTransport",
    "ensure_schema",
    "make_app",
    "recover_lost_jobs",
    "running",
    "work",
    "worker_app",
]
