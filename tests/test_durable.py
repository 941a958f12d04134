"""Durable handlers on procrastinate over the real PostgreSQL: enqueue in the business
transaction, the inbox, dead letters and retries, and real worker processes killed with -9."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import anyio
import httpx
import procrastinate.sql
import procrastinate.types
import psycopg
import pytest
from conftest import libpq
from durable_helpers import HANDLER_ID, Mark, register
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from app import db, durable
from app.business import audit, notify
from app.business.hr import create_employee
from app.core.durable import DurableDeliveryError, DurableJob
from app.core.events import current_event, emit, on
from app.durable import admin
from app.durable.store import FailedRun

pytestmark = pytest.mark.anyio

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def anyio_backend():
    """Durable delivery is procrastinate's, on asyncio."""
    return "asyncio"


@pytest.fixture
async def queue(database_url):
    """The database, open and empty, with durable delivery and no worker: the procrastinate app."""
    await db.open_database(database_url)
    try:
        async with durable.running() as app:
            yield app
    finally:
        await db.close_database()


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """The file the tests' durable handler appends each run to (here and in workers)."""
    path = tmp_path / "runs.txt"
    path.touch()
    monkeypatch.setenv("TEST_RUNS_FILE", str(path))
    monkeypatch.setenv("APP_DURABLE_BACKOFF", "0")
    return path


def started(runs: Path) -> list[str]:
    """The ``start <event_id> <pid>`` lines written so far."""
    return runs.read_text().splitlines()


async def scalar(query: str) -> int:
    async with db.transaction() as session:
        return int(await session.scalar(text(query)) or 0)


async def create(count: int = 1) -> list[int]:
    """Create ``count`` employees, each in its own unit of work; return their ids."""
    ids = []
    for index in range(count):
        async with db.unit_of_work() as session:
            employee = await create_employee(
                session, name=f"e{index}", department_id=7, created_by=1
            )
            ids.append(employee.id)
    return ids


async def marks() -> list[tuple[int, str, int]]:
    async with db.transaction() as session:
        rows = await session.execute(select(Mark.employee_id, Mark.event_id, Mark.pid))
        return sorted(tuple(row) for row in rows)


async def eventually(check, within: float) -> None:
    """Wait until the async ``check()`` is true, at most ``within`` seconds."""
    with anyio.fail_after(within):
        while not await check():  # noqa: ASYNC110 - polls the database
            await anyio.sleep(0.1)


@contextmanager
def worker_process(tmp_path: Path, *args: str, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """A real worker process (``python -m app worker`` with the tests' handler), killed at
    the end if still running."""
    log = (tmp_path / f"worker-{time.monotonic_ns()}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, str(TESTS / "durable_worker.py"), *args],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        log.close()


async def test_a_rollback_leaves_no_job_and_a_commit_one_per_durable_handler(queue):
    """Jobs are written in the business transaction: none after a rollback, one per durable
    handler after the commit, carrying the event's ids."""
    register()
    with pytest.raises(RuntimeError, match="after the emit"):  # noqa: PT012 - the whole unit
        async with db.unit_of_work() as session:
            await create_employee(session, name="Ada", department_id=7, created_by=1)
            raise RuntimeError("fails after the emit")
    assert await scalar("SELECT count(*) FROM procrastinate_jobs") == 0
    [employee_id] = await create()
    async with db.transaction() as session:
        rows = await session.execute(
            text("SELECT status::text, args->'job' FROM procrastinate_jobs ORDER BY id")
        )
        jobs = [tuple(row) for row in rows]
    assert [(status, job["handler_id"]) for status, job in jobs] == [
        ("todo", "notify.welcome_mail"),
        ("todo", HANDLER_ID),
    ]
    assert {job["event_id"] for _, job in jobs} == {jobs[0][1]["correlation_id"]}
    assert jobs[0][1]["payload"] == {
        "employee_id": employee_id,
        "department_id": 7,
        "created_by": 1,
    }


PROCRASTINATE_DEFER_JOBS = """SELECT  unnest(
  procrastinate_defer_jobs_v1(
    %(jobs)s::procrastinate_job_to_defer_v1[]
  )
) AS id;"""


async def test_procrastinate_s_defer_query_and_job_type_are_the_ones_the_transport_mirrors(queue):
    """The transport builds procrastinate's defer call itself (app.durable.queue._DEFER_JOBS):
    a procrastinate whose defer query, job type or defer function changed fails here."""
    assert procrastinate.sql.queries["defer_jobs"] == PROCRASTINATE_DEFER_JOBS
    assert procrastinate.types.JobToDefer._fields == (
        "queue_name",
        "task_name",
        "priority",
        "lock",
        "queueing_lock",
        "args",
        "scheduled_at",
    )
    async with db.transaction() as session:
        fields = await session.execute(
            text(
                "SELECT attribute.attname, format_type(attribute.atttypid, attribute.atttypmod) "
                "FROM pg_type JOIN pg_attribute AS attribute ON attribute.attrelid = typrelid "
                "WHERE typname = 'procrastinate_job_to_defer_v1' AND attribute.attnum > 0 "
                "ORDER BY attribute.attnum"
            )
        )
        assert [tuple(row) for row in fields] == [
            ("queue_name", "character varying"),
            ("task_name", "character varying"),
            ("priority", "integer"),
            ("lock", "text"),
            ("queueing_lock", "text"),
            ("args", "jsonb"),
            ("scheduled_at", "timestamp with time zone"),
        ]
        signature = await session.scalar(
            text(
                "SELECT pg_get_function_identity_arguments(oid) || ' -> ' "
                "|| pg_get_function_result(oid) FROM pg_proc "
                "WHERE proname = 'procrastinate_defer_jobs_v1'"
            )
        )
        assert signature == "jobs procrastinate_job_to_defer_v1[] -> bigint[]"


async def test_the_transport_writes_the_rows_procrastinate_s_own_defer_writes(queue):
    """One enqueue of three jobs writes, in order, the job and event rows that procrastinate's
    batch defer writes for the same arguments, awkward JSON included."""
    payload = {"name": 'O\'Brien "Ró\\ṡa" \u2028', "tags": [1, 2.5, None, True], "deep": {"a": {}}}
    jobs = [
        DurableJob(
            event_name="employee.created",
            payload=payload,
            handler_id=f"tests.handler_{index}",
            event_id="01a2063d-f3e5-7187-94ee-58c33c90837a",
            correlation_id="01a2063d-f3e5-7187-94ee-58c33c90837b",
            causation_id=None if index else "01a2063d-f3e5-7187-94ee-58c33c90837c",
            depth=index,
            occurred_at=datetime(2026, 12, 2, 6, 30, tzinfo=UTC),
            max_attempts=index + 1,
            timeout=30.0,
        )
        for index in range(3)
    ]
    select_jobs = text(
        "SELECT queue_name, task_name, priority, lock, queueing_lock, args, scheduled_at, "
        "status::text, attempts, abort_requested, worker_id FROM procrastinate_jobs ORDER BY id"
    )
    written = {}
    for way in ("transport", "procrastinate"):
        async with db.unit_of_work() as session:
            if way == "transport":
                await durable.ProcrastinateTransport(queue).enqueue(jobs)
            else:
                raw = (await (await session.connection()).get_raw_connection()).driver_connection
                deferrer = queue.tasks[durable.TASK_NAME].configure(connection=raw)
                await deferrer.batch_defer_async(*({"job": job.to_json()} for job in jobs))
            rows = await session.execute(select_jobs)
            events = await session.execute(
                text("SELECT job_id, type::text FROM procrastinate_events ORDER BY id")
            )
            written[way] = ([tuple(row) for row in rows], [type_ for _, type_ in events])
            await session.execute(text("TRUNCATE procrastinate_jobs CASCADE"))
    assert written["transport"] == written["procrastinate"]
    job_rows, event_types = written["transport"]
    assert [row[5]["job"] for row in job_rows] == [job.to_json() for job in jobs]
    assert event_types == ["deferred"] * 3


async def test_a_durable_emit_outside_a_unit_of_work_is_refused(queue):
    """With the transport installed but no transaction open, emit raises before any handler."""
    ran = []
    on("employee.created")(lambda **kwargs: ran.append(kwargs))
    with pytest.raises(DurableDeliveryError) as caught:
        await emit("employee.created", employee_id=1, department_id=7, created_by=1)
    assert str(caught.value) == (
        "cannot emit 'employee.created' outside a unit of work: its durable handlers "
        "(notify.welcome_mail) get jobs written in the emitter's transaction. Emit inside "
        "`async with app.db.unit_of_work():`."
    )
    assert ran == []
    assert await scalar("SELECT count(*) FROM procrastinate_jobs") == 0


async def test_a_job_run_again_after_its_commit_skips_the_handler(queue, runs):
    """The inbox: a job whose run committed but was not marked done (a crash in between) runs
    again without running the handler, so its database effect stays single."""
    register()
    [employee_id] = await create()
    await durable.work(queue, wait=False)
    [(_, event_id, _)] = await marks()
    assert await scalar("SELECT count(*) FROM durable_inbox") == 2
    await scalar("UPDATE procrastinate_jobs SET status = 'todo' RETURNING 1")  # the crash
    await durable.work(queue, wait=False)
    assert await scalar("SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo'") == 0
    assert [line.split()[1] for line in started(runs)] == [event_id]
    assert [m[:2] for m in await marks()] == [(employee_id, event_id)]
    async with db.transaction() as session:
        assert len(await notify.list_outbox(session)) == 1


async def test_a_durable_handler_s_transactions_are_savepoints_of_its_run(queue, monkeypatch):
    """In a run, each ``transaction()`` block is a savepoint of the run's one session: a block
    that raises is rolled back alone, a nested block shares its session (and sees its pending
    rows), an object carries from one block to the next, ``current_session()`` is that session
    outside the blocks too, and an emit outside any block enqueues its jobs in the run's
    transaction: all of it committed with the inbox row, or rolled back with it when the
    handler fails."""
    monkeypatch.setenv("APP_DURABLE_BACKOFF", "0")
    runs: list[int] = []

    async def handler(*, employee_id: int, **_: object) -> None:
        runs.append(employee_id)
        event = current_event()
        assert event is not None
        first = Mark(employee_id=1, event_id=event.event_id, pid=0)
        async with db.transaction() as session:
            session.add(first)
        async with db.transaction():
            first.pid = len(runs)  # flushed when the block ends
        with pytest.raises(ValueError, match="rolled back"):  # noqa: PT012 - the whole block
            async with db.transaction() as session:
                session.add(Mark(employee_id=2, event_id=event.event_id, pid=len(runs)))
                await session.flush()
                raise ValueError("rolled back")
        async with db.transaction() as outer:
            outer.add(Mark(employee_id=3, event_id=event.event_id, pid=len(runs)))
            async with db.transaction() as inner:
                assert inner is outer
                assert await inner.scalar(select(func.count()).where(Mark.employee_id == 3)) == 1
        session = db.current_session()
        assert session is not None
        # Pending outside any block: flushed when the run ends.
        session.add(Mark(employee_id=4, event_id=event.event_id, pid=len(runs)))
        await emit(
            "employee.status_changed",
            employee_id=employee_id,
            from_state="hired",
            to_state="active",
            actor_id=1,
        )
        if len(runs) == 1:
            raise ConnectionError("the first run fails after all of it")

    on("employee.created", durable=True, id="tests.savepoints", max_attempts=2)(handler)
    [employee_id] = await create()
    await durable.work(queue, wait=False)
    assert runs == [employee_id, employee_id]
    assert [(m[0], m[2]) for m in await marks()] == [(1, 2), (3, 2), (4, 2)]
    assert await scalar("SELECT count(*) FROM durable_inbox") == 3  # mail, savepoints, audit
    async with db.transaction() as session:
        assert [
            (entry.employee_id, entry.to_state) for entry in await audit.list_audit(session)
        ] == [(employee_id, "active")]


@pytest.mark.parametrize("how", ["session.rollback()", "a failed flush, caught"])
async def test_a_durable_handler_that_rolls_back_its_run_fails_it(queue, how):
    """A handler whose session rolls back the run's transaction (its own ``rollback()``, or a
    flush that fails outside any ``transaction()`` block, which the handler catches) fails
    its run rather than end it as a success with nothing kept: the inbox claim and its
    writes are gone, so the job must run again (here it is dead at its one attempt)."""

    async def handler(*, employee_id: int, **_: object) -> None:
        event = current_event()
        assert event is not None
        session = db.current_session()
        assert session is not None
        async with db.transaction():
            session.add(Mark(id=1, employee_id=employee_id, event_id=event.event_id, pid=1))
        if how == "session.rollback()":
            await session.rollback()
            return
        session.add(Mark(id=1, employee_id=employee_id, event_id=event.event_id, pid=2))
        with pytest.raises(IntegrityError):
            async with db.transaction():  # flushes the duplicate first, outside a savepoint
                pass

    on("employee.created", durable=True, id="tests.rollback", max_attempts=1)(handler)
    await create()
    await durable.work(queue, wait=False)
    assert await marks() == []
    assert (
        await scalar("SELECT count(*) FROM durable_inbox WHERE handler_id = 'tests.rollback'") == 0
    )
    async with db.transaction() as session:
        errors = (await session.scalars(select(FailedRun.error))).all()
    assert [error.split(":")[0] for error in errors] == ["RunRolledBackError"]
    assert await scalar("SELECT count(*) FROM procrastinate_jobs WHERE status = 'failed'") == 1


async def test_work_that_outlives_its_durable_run_cannot_write_in_it(queue):
    """A task a durable handler starts carries the run's context; once the run has ended, it
    gets a clear error when it asks for the run's session or connection, not a session on a
    connection already given back."""
    ended = asyncio.Event()
    tasks: list[asyncio.Task[list[str]]] = []

    async def after_the_run() -> list[str]:
        await ended.wait()
        errors = []
        for ask in (db.current_session, db.current_connection):
            try:
                result = ask()
                if asyncio.iscoroutine(result):
                    await result
            except db.RunRolledBackError as error:
                errors.append(str(error))
        return errors

    async def handler(**_: object) -> None:
        tasks.append(asyncio.create_task(after_the_run()))

    on("employee.created", durable=True, id="tests.outlived", max_attempts=1)(handler)
    await create()
    await durable.work(queue, wait=False)
    ended.set()
    errors = await tasks[0]
    assert (
        errors
        == [
            "the durable run this work was started in has ended: a task that outlives its "
            "handler cannot write in the handler's transaction"
        ]
        * 2
    )


async def test_procrastinate_s_pool_checks_a_connection_it_never_handed_out(database_url):
    """A connection the pool made when it filled, and never gave out, is checked when first
    taken: the server may have ended it meanwhile (here it did), and it is replaced."""
    name = "test idle pool"
    pool = durable.queue._pool(
        conninfo=libpq(database_url),
        min_size=1,
        max_size=1,
        open=False,
        kwargs={"autocommit": True, "application_name": name},
    )
    await pool.open(wait=True)
    try:
        with psycopg.connect(libpq(database_url), autocommit=True) as other:
            (ended,) = other.execute(
                "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
                "WHERE application_name = %s",
                [name],
            ).fetchone()
        assert ended == 1
        async with pool.connection() as connection:
            assert await (await connection.execute("SELECT 1")).fetchone() == (1,)
    finally:
        await pool.close()


async def test_a_worker_process_runs_the_jobs_of_another_process(queue, runs, tmp_path):
    """`python -m app worker` (here with the tests' handler) joins the same database and runs
    the jobs this process enqueued, as work done for the original event; SIGTERM stops it."""
    register()
    employee_ids = await create(3)
    with worker_process(tmp_path) as worker:
        await eventually(lambda: _count_marks(3), within=20)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
    async with db.transaction() as session:
        rows = await session.execute(
            text(
                "SELECT args->'job' FROM procrastinate_jobs WHERE args->'job'->>'handler_id' = :id"
            ),
            {"id": HANDLER_ID},
        )
        enqueued = sorted((job["payload"]["employee_id"], job["event_id"]) for (job,) in rows)
    found = await marks()
    assert [(employee_id, event_id) for employee_id, event_id, _ in found] == enqueued
    assert [employee_id for employee_id, _ in enqueued] == employee_ids
    assert {pid for _, _, pid in found} == {worker.pid}
    assert sorted(line.split()[1] for line in started(runs)) == sorted(e for _, e in enqueued)
    assert await _jobs_left() == 0


async def _count_marks(expected: int) -> bool:
    return len(await marks()) >= expected


async def _jobs_left() -> int:
    return await scalar("SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')")


async def test_a_handler_failing_every_time_becomes_a_dead_letter_and_retry_delivers_it(
    queue, runs, tmp_path, monkeypatch
):
    """A job failing each run runs exactly max_attempts times, shows in `events dead` with its
    error and attempts; once fixed, `events retry --all` delivers it once."""
    failing = tmp_path / "fail"
    failing.touch()
    monkeypatch.setenv("TEST_FAIL_FILE", str(failing))
    register(max_attempts=3)
    await create()
    await durable.work(queue, wait=False)
    assert len(started(runs)) == 3
    dead = run_app("events", "dead")
    assert dead.returncode == 0, dead.stderr
    [job_id] = [line.split()[1].rstrip(":") for line in dead.stdout.splitlines() if "job " in line]
    assert f"job {job_id}: {HANDLER_ID} for employee.created (event " in dead.stdout
    assert "), 3 attempts, last failed " in dead.stdout
    assert ": ConnectionError: mark server down\n" in dead.stdout
    assert "    ConnectionError: mark server down" in dead.stdout  # the traceback summary
    assert dead.stdout.endswith("1 dead letter.\n")
    jobs = run_app("events", "jobs")
    assert "failed     1\nsucceeded  1\n2 durable jobs; oldest waiting: none\n" in jobs.stdout
    failing.unlink()
    retried = run_app("events", "retry", "--all")
    assert retried.stdout == f"retried 1 job: {job_id}\n"
    await durable.work(queue, wait=False)
    assert len(started(runs)) == 4
    assert len(await marks()) == 1
    assert run_app("events", "dead").stdout == "0 dead letters.\n"
    assert run_app("events", "retry", job_id).returncode == 1  # no longer a dead letter


def run_app(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_worker_killed_mid_run_is_replaced_and_the_job_runs_again_once(
    queue, runs, tmp_path
):
    """A worker killed with -9 in the middle of a handler: another worker re-runs the job
    (the lost worker's silence is noticed), and the database holds its effect once."""
    register()
    await create()
    with worker_process(tmp_path, TEST_SLOW="30") as doomed:
        await eventually(lambda: _started(runs, 1), within=20)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
    killed_at = time.monotonic()
    with worker_process(tmp_path) as rescuer:
        await eventually(lambda: _count_marks(1), within=40)
        recovered_in = time.monotonic() - killed_at
        rescuer.send_signal(signal.SIGTERM)
        assert rescuer.wait(timeout=20) == 0
    first, second = (line.split() for line in started(runs))
    assert first[1] == second[1]  # the same event
    assert (int(first[2]), int(second[2])) == (doomed.pid, rescuer.pid)
    [(_, event_id, pid)] = await marks()
    assert (event_id, pid) == (first[1], rescuer.pid)
    inbox = "SELECT count(*) FROM durable_inbox WHERE handler_id = 'tests.mark'"
    assert await scalar(inbox) == 1
    assert recovered_in < 25


async def test_two_worker_processes_share_the_load_and_run_each_job_once(queue, runs, tmp_path):
    """Two workers on one queue: both take jobs, and each job runs exactly once."""
    register()
    with (
        worker_process(tmp_path, TEST_SLOW="0.05") as one,
        worker_process(tmp_path, TEST_SLOW="0.05") as two,
    ):
        await eventually(lambda: _workers(2), within=30)
        employee_ids = await create(20)
        await eventually(lambda: _count_marks(20), within=30)
        await eventually(lambda: _no_jobs_left(), within=10)
        one.send_signal(signal.SIGTERM)
        two.send_signal(signal.SIGTERM)
        assert (one.wait(timeout=20), two.wait(timeout=20)) == (0, 0)
    found = await marks()
    assert [employee_id for employee_id, _, _ in found] == employee_ids
    event_ids = [line.split()[1] for line in started(runs)]
    assert sorted(event_ids) == sorted(event_id for _, event_id, _ in found)  # once each
    assert {pid for _, _, pid in found} == {one.pid, two.pid}
    async with db.transaction() as session:
        assert len(await notify.list_outbox(session)) == 20


async def test_the_web_process_killed_right_after_its_responses_delivers_all_after_restart(
    queue, tmp_path
):
    """`serve` killed with -9 right after 20 creates and 20 status changes: started again, it
    delivers exactly one welcome mail per employee and one audit row per change."""
    from test_serve import free_port, wait_until_up

    def serve(port: int) -> subprocess.Popen[str]:
        with (tmp_path / f"serve-{time.monotonic_ns()}.log").open("w") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "app", "serve", "--port", str(port)],
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = serve(port)
    try:
        wait_until_up(f"{base}/audit", server)
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:

            async def change(index: int) -> None:
                created = await client.post(
                    "/employees", json={"name": f"e{index}", "department_id": 7, "created_by": 1}
                )
                assert created.status_code == 201
                moved = await client.post(
                    f"/employees/{created.json()['id']}/status",
                    json={"to_state": "active", "actor_id": 1},
                )
                assert moved.status_code == 200

            async with anyio.create_task_group() as group:
                for index in range(20):
                    group.start_soon(change, index)
        server.send_signal(signal.SIGKILL)
    finally:
        server.kill()
        server.wait(timeout=10)
    restarted = serve(port)
    try:
        wait_until_up(f"{base}/audit", restarted)
        await eventually(lambda: _delivered(20), within=40)
        # A job the killed process ran may still be "doing" until the lost worker is noticed;
        # re-run then, it finds its inbox row and changes nothing.
        await eventually(lambda: _no_jobs_left(), within=30)
        async with db.transaction() as session:
            mails = await notify.list_outbox(session)
            entries = await audit.list_audit(session)
        assert sorted(m.employee_id for m in mails) == list(range(1, 21))
        assert sorted(e.employee_id for e in entries) == list(range(1, 21))
    finally:
        restarted.send_signal(signal.SIGINT)
        assert restarted.wait(timeout=30) == 0


async def _started(runs: Path, count: int) -> bool:
    return len(started(runs)) >= count


async def _workers(count: int) -> bool:
    return await scalar("SELECT count(*) FROM procrastinate_workers") >= count


async def _no_jobs_left() -> bool:
    return await _jobs_left() == 0


async def _delivered(count: int) -> bool:
    async with db.transaction() as session:
        return (
            len(await notify.list_outbox(session)) >= count
            and len(await audit.list_audit(session)) >= count
        )


async def test_sigterm_lets_a_running_handler_finish(queue, runs, tmp_path):
    """SIGTERM during a handler's run: the worker lets it finish and commit, then exits 0."""
    register()
    await create()
    with worker_process(tmp_path, TEST_SLOW="2") as worker:
        await eventually(lambda: _started(runs, 1), within=20)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
    [(_, event_id, pid)] = await marks()
    assert (event_id, pid) == (started(runs)[0].split()[1], worker.pid)
    assert (
        await scalar(
            "SELECT count(*) FROM procrastinate_jobs "
            "WHERE args->'job'->>'handler_id' = 'tests.mark' AND status = 'succeeded'"
        )
        == 1
    )


async def test_app_worker_off_leaves_the_jobs_to_workers(database_url, monkeypatch):
    """With APP_WORKER=off the service enqueues but runs no durable job itself."""
    from test_service import NEW_EMPLOYEE, client_for

    from app.web.service import create_app

    monkeypatch.setenv("APP_WORKER", "off")
    app = create_app(database_url)
    async with app.router.lifespan_context(app), client_for(app) as client:
        assert (await client.post("/employees", json=NEW_EMPLOYEE)).status_code == 201
        await anyio.sleep(1.5)  # an embedded worker would have run it by now
        assert (await client.get("/outbox")).json() == []
        async with db.transaction() as session:
            statuses = await session.scalars(text("SELECT status::text FROM procrastinate_jobs"))
            assert list(statuses) == ["todo"]


async def test_the_jobs_of_a_lost_worker_are_requeued_or_dead_at_their_last_attempt(queue):
    """A job left running by a silent worker is queued again, unless that run was its last
    allowed one: then it is a dead letter whose error says the worker was lost."""
    register(max_attempts=3)
    await create()
    async with db.transaction() as session:
        lost = await session.scalar(
            text(
                "INSERT INTO procrastinate_workers (last_heartbeat) "
                "VALUES (now() - interval '1 hour') RETURNING id"
            )
        )
        await session.execute(
            text(
                "UPDATE procrastinate_jobs SET status = 'doing', worker_id = :lost, attempts = "
                "CASE WHEN args->'job'->>'handler_id' = 'tests.mark' THEN 2 ELSE 0 END"
            ),
            {"lost": lost},
        )
    assert len(await durable.recover_lost_jobs(queue)) == 2
    async with db.transaction() as session:
        rows = await session.execute(
            text(
                "SELECT args->'job'->>'handler_id', status::text, attempts FROM procrastinate_jobs "
                "ORDER BY id"
            )
        )
        assert [tuple(row) for row in rows] == [
            ("notify.welcome_mail", "todo", 1),
            (HANDLER_ID, "failed", 3),
        ]
    [letter] = await admin.dead_letters()
    assert (letter.handler_id, letter.attempts) == (HANDLER_ID, 3)
    assert letter.error == (
        "WorkerLostError: the worker running it stopped beating (killed, or its host was lost) "
        "during its last allowed run"
    )
    assert await durable.recover_lost_jobs(queue) == []


async def cut_a_worker_mid_query(url: str) -> None:
    """Make the worker's next fetch wait on a lock of procrastinate's job table, then terminate
    every other connection to the test database, waiting until each has exited (as a restart
    does before it answers again): the fetch fails with its connection."""
    async with (
        await psycopg.AsyncConnection.connect(libpq(url)) as locker,
        await psycopg.AsyncConnection.connect(libpq(url), autocommit=True) as watcher,
    ):
        await locker.execute("LOCK TABLE procrastinate_jobs IN ACCESS EXCLUSIVE MODE")

        async def a_fetch_waits() -> bool:
            cursor = await watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE '%procrastinate_fetch_job%'"
            )
            row = await cursor.fetchone()
            return row is not None and row[0] > 0

        await eventually(a_fetch_waits, within=10)
        await watcher.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid NOT IN (pg_backend_pid(), %s)",
            [locker.info.backend_pid],
        )
        await locker.rollback()


@asynccontextmanager
async def embedded_worker(database_url: str) -> AsyncIterator[None]:
    """The test database open, with durable delivery and an embedded worker, as ``serve``."""
    await db.open_database(database_url)
    try:
        async with durable.running(worker=True):
            yield
    finally:
        await db.close_database()


async def test_the_embedded_worker_restarts_after_losing_its_connection(database_url, runs, logs):
    """A worker whose connection drops mid-query logs the failure once and starts again after
    a pause: a job enqueued afterwards is delivered."""
    register()
    async with embedded_worker(database_url):
        await cut_a_worker_mid_query(database_url)
        [employee_id] = await create()
        await eventually(lambda: _count_marks(1), within=20)
        assert [employee for employee, _, _ in await marks()] == [employee_id]
    [failure] = [record for record in logs if record["event"] == "durable worker failed"]
    assert sorted(failure) == ["error", "event", "exc_info", "log_level", "restart_in"]
    assert (failure["log_level"], failure["restart_in"]) == ("error", 1.0)
    assert failure["error"].endswith(  # whatever else failed with it, during the stop
        "ConnectorException: Database error. <- AdminShutdown: terminating connection due to "
        "administrator command"
    )


async def test_a_worker_process_restarts_after_losing_its_connection(
    database_url, queue, runs, tmp_path
):
    """``python -m app worker`` does the same: it logs the failure once, keeps running, and
    delivers a job enqueued afterwards."""
    register()
    with worker_process(tmp_path) as worker:
        await eventually(lambda: _workers(1), within=20)
        await cut_a_worker_mid_query(database_url)
        [employee_id] = await create()
        await eventually(lambda: _count_marks(1), within=20)
        assert worker.poll() is None
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
    assert [employee for employee, _, _ in await marks()] == [employee_id]
    [log] = tmp_path.glob("worker-*.log")
    assert log.read_text().count("durable worker failed") == 1


async def test_a_worker_that_loses_its_sentinel_connection_starts_again_under_a_new_id(
    database_url, runs, logs
):
    """A worker commits asynchronously, so a server crash may have forgotten its last commits;
    every crash ends every connection, so a worker whose sentinel connection is lost starts
    again under a new worker id (the old id's running jobs are then re-queued as a lost
    worker's) and delivers as before."""
    register()
    async with embedded_worker(database_url):
        await eventually(lambda: _workers(1), within=10)
        first = await scalar("SELECT min(id) FROM procrastinate_workers")
        sentinel = {"name": durable.queue.SENTINEL}
        where = " FROM pg_stat_activity WHERE application_name = :name"

        async def watching() -> bool:
            async with db.transaction() as session:
                return bool(await session.scalar(text("SELECT count(*)" + where), sentinel))

        await eventually(watching, within=10)
        async with db.transaction() as session:
            await session.execute(text("SELECT pg_terminate_backend(pid)" + where), sentinel)

        async def replaced() -> bool:
            return await scalar("SELECT min(id) FROM procrastinate_workers") > first

        await eventually(replaced, within=10)
        [employee_id] = await create()
        await eventually(lambda: _count_marks(1), within=10)
        assert [employee for employee, _, _ in await marks()] == [employee_id]
    [failure] = [record for record in logs if record["event"] == "durable worker failed"]
    assert failure["error"].startswith(
        "DatabaseRestartedError: the worker's sentinel connection to the database was lost "
        "(or did not answer within 10 s), as in every crash or restart of the server, which "
        "may have forgotten the worker's last commits <- "
    )


async def test_a_worker_whose_sentinel_stops_answering_starts_again(
    database_url, runs, logs, monkeypatch
):
    """A sentinel that does not answer (a server that stopped answering, a network cut with
    no reset) counts as lost after ``SENTINEL_TIMEOUT``: the worker starts again rather than
    wait on it forever, and its recovery rounds with it."""
    monkeypatch.setattr(durable.queue, "SENTINEL_TIMEOUT", 0.5)
    monkeypatch.setattr(durable.queue, "_SENTINEL_CHECK", "SELECT pg_sleep(30)")
    register()
    async with embedded_worker(database_url):
        await eventually(lambda: _workers(1), within=10)
        first = await scalar("SELECT min(id) FROM procrastinate_workers")

        async def replaced() -> bool:
            return await scalar("SELECT min(id) FROM procrastinate_workers") > first

        await eventually(replaced, within=15)
    failures = [record for record in logs if record["event"] == "durable worker failed"]
    assert failures
    assert failures[0]["error"].startswith(
        "DatabaseRestartedError: the worker's sentinel connection to the database was lost "
        "(or did not answer within 0.5 s)"
    )


async def test_a_runs_asynchronous_commit_ends_with_its_transaction(queue, database_url):
    """The inbox claim turns ``synchronous_commit`` off for its own transaction only: the
    connection it ran on, which the pool gives to web requests too, commits synchronously
    again afterwards (a 2xx still means committed)."""
    from app.durable.queue import _CLAIM

    with psycopg.connect(libpq(database_url)) as connection:
        connection.execute("SET synchronous_commit = on")  # the test server's default is off
        connection.commit()
        with connection.transaction():
            connection.execute(_CLAIM, {"event_id": "01a2", "handler_id": "test.claim"})
            assert connection.execute("SHOW synchronous_commit").fetchone() == ("off",)
        assert connection.execute("SHOW synchronous_commit").fetchone() == ("on",)
