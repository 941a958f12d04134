"""Durable handlers on procrastinate: the transport, the one task, retries, recovery, workers.

Every durable job is one procrastinate job of the task ``TASK_NAME`` whose only argument is
the ``DurableJob`` as JSON. procrastinate's queue is a table of the application's database, so
the transport writes the jobs on the connection of the caller's open transaction
(``app.db.current_connection()``), all of one emit in one statement: they commit or roll back with
the business data. Its worker is asyncio-only, so durable delivery is asyncio-only.

A run opens a unit of work on one connection (``app.db.handler_unit_of_work``), claims the
inbox row ``(event_id, handler_id)`` in it (a run that finds it already committed skips the
handler), runs the handler in it (its ``transaction()`` blocks are savepoints, its session made
only if it asks for one) and commits both together. A failure rolls both back, is recorded
(``FailedRun``: error, traceback summary, attempt count) and is retried with exponential
backoff until ``max_attempts`` runs; then the job stays ``failed``: a dead letter.

Workers beat every ``HEARTBEAT`` seconds; every ``RECOVERY_EVERY`` seconds each worker re-queues
the running jobs of workers silent for ``STALLED_AFTER`` seconds (killed with ``-9``, host
lost), so such jobs run again within about 15 s.

A worker's own transactions commit asynchronously (``synchronous_commit = off``): the fetch,
the run's unit of work (inbox row and the handler's writes) and the finish, retry or failure
of its job. They are its and nobody's promise to a client, and each would otherwise wait for
an fsync. What a PostgreSQL crash can then forget is only a suffix of the write-ahead log,
which is sequential: at most the last few hundred milliseconds of commits, never one commit
while keeping a later one. So a forgotten run forgets its finish too, and a forgotten finish
leaves the job running: it runs again and the inbox keeps its database effects single; a
forgotten fetch leaves the job waiting, and the same holds. A synchronous commit (the web
request's, which enqueues the jobs) also makes every earlier commit durable, so a 2xx still
means the business data and its jobs are kept. What a worker still believes about a job the
server forgot, it cannot tell: every crash or restart of the server ends every connection, so
a worker whose sentinel connection (one of its own, open as long as it runs) is lost starts
again under a new worker id, and its old id's running jobs are re-queued as a lost worker's.
The administrator's retries and everything the web process writes stay synchronous: a
worker runs on a procrastinate app of its own (``worker_app``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
import traceback
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final, cast

import procrastinate
import procrastinate.signals
import procrastinate.worker
import psycopg
import psycopg_pool
import structlog
from procrastinate.job_context import JobContext
from procrastinate.jobs import Job, Status
from procrastinate.retry import BaseRetryStrategy, RetryDecision
from procrastinate.schema import SchemaManager
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from app import db
from app.core.catalogue import declared
from app.core.durable import DurableDeliveryError, DurableJob, install_transport, run_job
from app.core.events import registrations
from app.db.liveness import needs_check
from app.durable.store import FailedRun, InboxEntry

__all__ = [
    "HEARTBEAT",
    "RECOVERY_EVERY",
    "STALLED_AFTER",
    "TASK_NAME",
    "ExponentialBackoff",
    "ProcrastinateTransport",
    "ensure_schema",
    "make_app",
    "recover_lost_jobs",
    "running",
    "work",
    "worker_app",
]

log = structlog.get_logger(__name__)

TASK_NAME: Final = "app.durable.deliver"
HEARTBEAT: Final = 2.0
"""Seconds between a worker's heartbeats."""
STALLED_AFTER: Final = 10.0
"""Seconds without a heartbeat after which a worker is taken for lost and its jobs re-queued."""
RECOVERY_EVERY: Final = 2.0
"""Seconds between two looks for the jobs of lost workers."""
POLL_EVERY: Final = 1.0
"""Seconds between a worker's polls (new jobs also arrive by LISTEN/NOTIFY; retries do not)."""
MAX_BACKOFF: Final = 300.0
RESTART_AFTER: Final = 1.0
"""Seconds before a failed worker starts again, doubled for each failure in a row."""
MAX_RESTART_AFTER: Final = 30.0
"""The longest pause before a restart; a worker that ran longer starts the count again."""
_TRACEBACK_LINES: Final = 12
_SCHEMA_LOCK: Final = 0x70726F63  # advisory lock: concurrent start-ups apply the schema once


def backoff_base() -> float:
    """Seconds before the first retry (doubled at each one): ``APP_DURABLE_BACKOFF``, else 1."""
    return float(os.environ.get("APP_DURABLE_BACKOFF") or 1.0)


class ExponentialBackoff(BaseRetryStrategy):
    """Retry a failed run after ``base * 2 ** (runs so far - 1)`` seconds (at most
    ``MAX_BACKOFF``), until the job's own ``max_attempts`` runs have failed."""

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        data: Any = job.task_kwargs["job"]
        max_attempts = int(data["max_attempts"])
        if job.attempts + 1 >= max_attempts:
            return None
        delay = min(backoff_base() * 2**job.attempts, MAX_BACKOFF)
        return RetryDecision(retry_in={"seconds": delay})


_DEFER_JOBS: Final = """
SELECT procrastinate_defer_jobs_v1(ARRAY(
    SELECT ROW(%(queue)s, %(task)s, %(priority)s, NULL, NULL, jsonb_build_object('job', job), NULL)
        ::procrastinate_job_to_defer_v1
    FROM jsonb_array_elements(%(jobs)s::jsonb) WITH ORDINALITY AS jobs (job, n)
    ORDER BY n
))
"""
"""procrastinate's ``defer_jobs`` query (``procrastinate.sql.queries``) with its array of
``procrastinate_job_to_defer_v1`` built by the server from one JSON array: psycopg quotes an
array of composites in Python, a regular expression per character of each job's JSON, which
was a third of a 10-handler emit. ``tests/test_durable.py`` pins procrastinate's
query and type, so an upgrade that changes them fails there rather than here."""


class ProcrastinateTransport:
    """The durable transport: writes jobs through the open transaction's connection."""

    def __init__(self, app: procrastinate.App) -> None:
        task = app.tasks[TASK_NAME]
        self._fixed = {"queue": task.queue, "task": task.name, "priority": task.priority}

    async def enqueue(self, jobs: Sequence[DurableJob]) -> None:
        """Write ``jobs`` as procrastinate jobs in one statement, in the current transaction.

        Each is a job of the task ``TASK_NAME`` on its queue and priority, no lock, to run now,
        its argument ``job`` the ``DurableJob`` as JSON: what procrastinate's own
        ``batch_defer_async`` writes, in one round trip whatever the number of jobs.

        Raises:
            DurableDeliveryError: no transaction is open in this context.
        """
        connection = await db.current_connection()
        if connection is None:
            name = jobs[0].event_name
            raise DurableDeliveryError(
                f"cannot emit {name!r} outside a unit of work: its durable handlers "
                f"({', '.join(job.handler_id for job in jobs)}) get jobs written in the "
                "emitter's transaction. Emit inside `async with app.db.unit_of_work():`.",
                event_name=name,
            )
        raw = await _driver_connection(connection)
        arguments = {**self._fixed, "jobs": json.dumps([job.to_json() for job in jobs])}
        await raw.execute(_DEFER_JOBS, arguments, prepare=True)


async def _driver_connection(connection: AsyncConnection) -> psycopg.AsyncConnection[Any]:
    """The psycopg connection under ``connection``, for statements SQLAlchemy need not build."""
    raw: Any = (await connection.get_raw_connection()).driver_connection
    return cast("psycopg.AsyncConnection[Any]", raw)


def make_app(conninfo: str, *, concurrency: int = 1, worker: bool = False) -> procrastinate.App:
    """A procrastinate app on ``conninfo`` with the one task that runs durable jobs.

    Its pool's connections are in autocommit: each of procrastinate's queries is one call of
    one of its functions, so a transaction around it only cost a BEGIN and a COMMIT, two
    more round trips. With ``worker``, they also commit asynchronously (see the module's
    docstring): give such an app to a worker only.
    """
    connector = procrastinate.PsycopgConnector(
        conninfo=conninfo,
        min_size=1,
        max_size=concurrency + 4,
        configure=_worker_connection if worker else _autocommit,
        pool_factory=_pool,
    )
    app = procrastinate.App(connector=connector)
    app.task(name=TASK_NAME, pass_context=True, retry=ExponentialBackoff())(_deliver)
    return app


_returned: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = (
    weakref.WeakKeyDictionary()
)
"""When each pooled connection was last given back to its pool (``time.monotonic()``)."""


def _pool(**options: Any) -> psycopg_pool.AsyncConnectionPool[Any]:
    """procrastinate's pool, except that a connection is checked (a round trip) only when
    ``app.db.liveness.needs_check`` says so: procrastinate checks it every time it is taken, a
    round trip before each of a worker's queries. One dropped unseen fails its query, and the
    worker starts again (see ``work``)."""
    return psycopg_pool.AsyncConnectionPool(
        **{**options, "check": _check_if_needed, "reset": _note_returned}
    )


async def _check_if_needed(connection: psycopg.AsyncConnection[Any]) -> None:
    # Never given back: made when the pool filled or renewed itself, maybe long ago.
    if needs_check(_returned.get(connection, 0.0), connection):
        await psycopg_pool.AsyncConnectionPool.check_connection(connection)


async def _note_returned(connection: psycopg.AsyncConnection[Any]) -> None:
    _returned[connection] = time.monotonic()


async def _autocommit(connection: psycopg.AsyncConnection[Any]) -> None:
    await connection.set_autocommit(True)


async def _worker_connection(connection: psycopg.AsyncConnection[Any]) -> None:
    await connection.set_autocommit(True)
    await connection.execute("SET synchronous_commit = off")


@contextlib.asynccontextmanager
async def worker_app(*, concurrency: int = 1) -> AsyncIterator[procrastinate.App]:
    """An open procrastinate app for a worker on the open database, its pool its own, whose
    connections commit asynchronously (see the module's docstring)."""
    app = make_app(db.conninfo(), concurrency=concurrency, worker=True)
    async with app.open_async():
        yield app


async def _deliver(context: JobContext, job: dict[str, Any]) -> None:
    """Run one durable job once; record and re-raise its failure (procrastinate retries)."""
    durable_job = DurableJob.from_json(job)
    try:
        await _run_once(durable_job)
    except Exception as error:
        await _record_failure(context.job, durable_job, error)
        raise


_CLAIM: Final = """
INSERT INTO durable_inbox (event_id, handler_id)
SELECT %(event_id)s, %(handler_id)s
FROM (SELECT set_config('synchronous_commit', 'off', true)) AS this_transaction
ON CONFLICT DO NOTHING RETURNING true
"""
"""The inbox claim, which also makes the run's transaction commit asynchronously (``SET
LOCAL``, see the module's docstring); sent by the driver as a prepared statement pipelined
with the transaction's BEGIN: one round trip, no SQLAlchemy statement to build per job."""


async def _run_once(job: DurableJob) -> None:
    async with db.handler_unit_of_work() as connection:
        raw = await _driver_connection(connection)
        arguments = {"event_id": job.event_id, "handler_id": job.handler_id}
        async with raw.pipeline():
            claim = await raw.execute(_CLAIM, arguments, prepare=True)
        if await claim.fetchone() is None:
            log.info(
                "durable job already done",
                event_name=job.event_name,
                event_id=job.event_id,
                handler_id=job.handler_id,
            )
            return
        await run_job(job)


async def _record_failure(procrastinate_job: Job, job: DurableJob, error: Exception) -> None:
    """Keep the run's error for ``events dead``, and log it once; never raises."""
    attempts = procrastinate_job.attempts + 1
    summary = "".join(traceback.format_exception(error)[-_TRACEBACK_LINES:])
    message = f"{type(error).__qualname__}: {error}"
    log.error(
        "durable handler failed",
        event_name=job.event_name,
        event_id=job.event_id,
        correlation_id=job.correlation_id,
        handler_id=job.handler_id,
        job_id=procrastinate_job.id,
        attempt=attempts,
        max_attempts=job.max_attempts,
        error=message,
    )
    values = {"attempts": attempts, "error": message, "traceback": summary}
    statement = (
        insert(FailedRun)
        .values(
            job_id=procrastinate_job.id,
            handler_id=job.handler_id,
            event_name=job.event_name,
            event_id=job.event_id,
            **values,
        )
        .on_conflict_do_update(index_elements=[FailedRun.job_id], set_=values)
    )
    try:
        async with db.transaction() as session:
            await session.execute(statement)
    except Exception:
        log.exception("durable failure not recorded", job_id=procrastinate_job.id)


async def ensure_schema() -> None:
    """Create the inbox and failure tables, and procrastinate's unless they exist (its schema
    cannot be applied twice); concurrent start-ups take turns."""
    async with db.transaction() as session:
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
        connection = await session.connection()
        tables = [db.Base.metadata.tables[model.__tablename__] for model in (InboxEntry, FailedRun)]
        await connection.run_sync(lambda sync: db.Base.metadata.create_all(sync, tables=tables))
        if await session.scalar(text("SELECT to_regclass('procrastinate_jobs')")) is None:
            raw = await _driver_connection(connection)
            await raw.execute(SchemaManager.get_schema())


async def recover_lost_jobs(app: procrastinate.App) -> list[int]:
    """Re-queue the running jobs of workers silent for ``STALLED_AFTER`` seconds; a job whose
    lost run was its last allowed one becomes a dead letter instead (a handler that kills its
    worker every time must not loop forever). Returns the ids re-queued or failed."""
    stalled = await app.job_manager.get_stalled_jobs(
        task_name=TASK_NAME, seconds_since_heartbeat=STALLED_AFTER
    )
    for job in stalled:
        assert job.id is not None  # noqa: S101 - jobs read from the table have ids
        durable_job = DurableJob.from_json(job.task_kwargs["job"])  # type: ignore[arg-type]
        if job.attempts + 1 >= durable_job.max_attempts:
            lost = WorkerLostError(
                "the worker running it stopped beating (killed, or its host was lost) during "
                "its last allowed run"
            )
            await _record_failure(job, durable_job, lost)
            await app.job_manager.finish_job_by_id_async(job.id, Status.FAILED, delete_job=False)
        else:
            await app.job_manager.retry_job(job)
            log.warning("durable job of a lost worker re-queued", job_id=job.id)
    return [job.id for job in stalled if job.id is not None]


class WorkerLostError(RuntimeError):
    """A durable job's run ended with its worker lost (the recorded error of such a run)."""


class DatabaseRestartedError(RuntimeError):
    """The database server may have restarted under a running worker (its sentinel connection
    was lost), and forgotten the worker's last asynchronous commits: the worker must start
    again under a new id."""


SENTINEL: Final = "app durable worker sentinel"
"""The ``application_name`` of each worker's sentinel connection."""
SENTINEL_TIMEOUT: Final = 10.0
"""Seconds the sentinel may take to connect or answer before it is taken for lost (a server
that stopped answering, a network cut with no reset). The driver then sends the server a
cancel request and waits for it a few seconds more, so giving up can take up to about twice
as long."""
RECOVERY_TIMEOUT: Final = 30.0
"""Seconds a recovery round may take before it is given up (logged, and the next one tries)."""
_SENTINEL_CHECK: Final = "SELECT 1"


async def _look_after(app: procrastinate.App) -> None:
    """Every ``RECOVERY_EVERY`` seconds, ``recover_lost_jobs`` (a failure is logged, and the
    next round tries again), and check the worker's sentinel: a connection of its own, open
    as long as the worker runs, that nothing else uses.

    Raises:
        DatabaseRestartedError: the sentinel connection was lost, or did not answer within
            ``SENTINEL_TIMEOUT``. Every crash or restart of the server ends every connection,
            and may have forgotten the worker's last commits; so may a dropped network link
            be taken for one, which costs a restart.
    """
    async with await psycopg.AsyncConnection.connect(
        db.conninfo(),
        autocommit=True,
        application_name=SENTINEL,
        connect_timeout=max(1, math.ceil(SENTINEL_TIMEOUT)),  # libpq: whole seconds, 0 = none
    ) as sentinel:
        while True:
            await asyncio.sleep(RECOVERY_EVERY)
            try:  # first, so that a slow recovery round does not delay it
                async with asyncio.timeout(SENTINEL_TIMEOUT):
                    await sentinel.execute(_SENTINEL_CHECK)
            except (psycopg.Error, TimeoutError) as error:
                _reraise_cancellation()
                raise DatabaseRestartedError(
                    "the worker's sentinel connection to the database was lost (or did not "
                    f"answer within {SENTINEL_TIMEOUT:g} s), as in every crash or restart of "
                    "the server, which may have forgotten the worker's last commits"
                ) from error
            try:
                async with asyncio.timeout(RECOVERY_TIMEOUT):
                    await recover_lost_jobs(app)
            except Exception:
                _reraise_cancellation()
                log.exception("durable recovery failed")


def shutdown_grace() -> float:
    """Seconds a stopping worker waits for running jobs: the longest durable timeout."""
    timeouts = [r.timeout or 0.0 for name in declared() for r in registrations(name) if r.durable]
    return max(timeouts, default=0.0) + 1.0


async def work(
    app: procrastinate.App,
    *,
    concurrency: int = 1,
    wait: bool = True,
    signals: bool = False,
) -> None:
    """Run a worker on ``app`` (open) until stopped, or, without ``wait``, until no job is
    left; lost workers' jobs are re-queued meanwhile.

    It stops when cancelled or, with ``signals``, at the first SIGINT or SIGTERM; running jobs
    get up to the longest durable timeout. A second signal is Python's default (it stops at
    once; the jobs stay in the table and run again elsewhere).

    A worker that fails (its connection dropped mid-query, the database unreachable, or
    procrastinate stopping it because one of its side tasks failed) is logged once,
    ``"durable worker failed"`` with ``error`` (the exception and its causes, one line) and
    ``restart_in``, and started again under a new worker id after ``RESTART_AFTER`` seconds,
    doubled for each failure in a row up to ``MAX_RESTART_AFTER``. Without ``wait`` the
    failure propagates instead. Cancellation always propagates.
    """
    if not wait:
        await _run_worker(app, concurrency=concurrency, wait=False)
        return
    supervisor = asyncio.create_task(_supervise(app, concurrency), name="durable worker")
    stopped = False

    def stop() -> None:
        nonlocal stopped
        stopped = True
        supervisor.cancel()

    with procrastinate.signals.on_stop(stop) if signals else contextlib.nullcontext():
        try:
            await supervisor
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not stopped or (current is not None and current.cancelling()):
                raise


async def _supervise(app: procrastinate.App, concurrency: int) -> None:
    """Run a worker again and again: see ``work``."""
    delay = RESTART_AFTER
    while True:
        started = time.monotonic()
        failure: Exception | None = None
        try:
            await _run_worker(app, concurrency=concurrency, wait=True)
        except Exception as error:
            _reraise_cancellation()
            failure = error
        if time.monotonic() - started > MAX_RESTART_AFTER:
            delay = RESTART_AFTER
        log.error(
            "durable worker failed",
            error=_describe(failure)
            if failure is not None
            else "it stopped by itself after one of its side tasks failed (procrastinate "
            "logged which)",
            restart_in=delay,
            exc_info=failure or False,
        )
        await asyncio.sleep(delay)
        delay = min(delay * 2, MAX_RESTART_AFTER)


def _reraise_cancellation() -> None:
    """Raise ``CancelledError`` if this task is being cancelled: the driver turns a
    cancellation that lands in a query into an error of its own (the query was cancelled),
    which a loop that catches ``Exception`` would take for a failure and go on."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _describe(error: BaseException) -> str:
    """``error`` and what caused it, one line, the first line of each message (a database
    error's next lines quote the SQL): ``"ConnectorException: Database error. <-
    AdminShutdown: terminating connection due to administrator command"``."""
    parts: list[str] = []
    cause: BaseException | None = error
    while cause is not None and len(parts) < 5:
        message = next((line.strip() for line in str(cause).splitlines() if line.strip()), "")
        parts.append(f"{type(cause).__qualname__}: {message}" if message else type(cause).__name__)
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    return " <- ".join(parts)


async def _run_worker(app: procrastinate.App, *, concurrency: int, wait: bool) -> None:
    """One procrastinate worker, with the recovery of lost workers' jobs beside it; it stops
    (gracefully) if the recovery finds the server may have restarted.

    It is stopped with its ``stop()``, asked again until it has stopped, never by cancelling
    it: a cancellation that lands in a query can be taken by the driver, and a worker whose
    cancellation was lost would never stop.

    Raises:
        DatabaseRestartedError: the server may have restarted.
    """
    worker = procrastinate.worker.Worker(
        app=app,
        concurrency=concurrency,
        wait=wait,
        install_signal_handlers=False,
        shutdown_graceful_timeout=shutdown_grace(),
        update_heartbeat_interval=HEARTBEAT,
        stalled_worker_timeout=STALLED_AFTER,
        fetch_job_polling_interval=POLL_EVERY,
        abort_job_polling_interval=POLL_EVERY * 5,
    )
    run = asyncio.create_task(worker.run(), name="procrastinate worker")  # type: ignore[no-untyped-call]
    recovery = asyncio.create_task(_look_after(app), name="durable recovery")
    try:
        await asyncio.wait((run, recovery), return_when=asyncio.FIRST_COMPLETED)
    finally:
        while not recovery.done():
            recovery.cancel()
            await asyncio.wait((recovery,), timeout=1.0)
        while not run.done():
            worker.stop()  # type: ignore[no-untyped-call]  # forgotten if asked before it started
            await asyncio.wait((run,), timeout=1.0)
    run.result()  # its failure
    if not recovery.cancelled():
        recovery.result()  # the failure it was stopped for


@contextlib.asynccontextmanager
async def running(
    *, worker: bool = False, concurrency: int = 1
) -> AsyncIterator[procrastinate.App]:
    """Durable delivery for this process, on the open database: procrastinate's schema made if
    missing, its app open, the transport installed, and, with ``worker``, a worker running
    in the background (stopped on exit: running jobs get up to their timeout).
    """
    await ensure_schema()
    app = make_app(db.conninfo())
    async with app.open_async(), contextlib.AsyncExitStack() as stack:
        undo = install_transport(ProcrastinateTransport(app))
        task = None
        try:
            if worker:
                runner = await stack.enter_async_context(worker_app(concurrency=concurrency))
                task = asyncio.create_task(work(runner, concurrency=concurrency), name="worker")
            yield app
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            undo()
