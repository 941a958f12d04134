"""The embedded PostgreSQL: one server per folder, shared by its processes, stopped by the last."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from app import db
from app.db import embedded

# A process that uses the server of the folder given as its argument: it prints what it got,
# then releases the server when a line arrives on its standard input.
USER = """
import json, sys
from pathlib import Path
import structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from app.db import embedded
server = embedded.start(Path(sys.argv[1]))
print(json.dumps({"postmaster_pid": server.postmaster_pid, "url": server.url}), flush=True)
sys.stdin.readline()
server.release()
"""


def user_process(folder):
    return subprocess.Popen(
        [sys.executable, "-c", USER, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def joined(process):
    """What the user process printed once it holds the server."""
    line = process.stdout.readline()
    assert line, process.communicate()[1]
    return json.loads(line)


def leave(process):
    """Tell the user process to release the server, and wait until it has exited."""
    _, errors = process.communicate("\n", timeout=30)
    assert process.returncode == 0, errors


def state(folder):
    return json.loads((folder / "state.json").read_text())


def answers(server):
    """The server answers on the URL it was handed, for this folder's cluster."""
    with psycopg.connect(server.conninfo, connect_timeout=5) as connection:
        (directory,) = connection.execute("SHOW data_directory").fetchone()
    return Path(directory) == server.folder / "data"


def running(pid):
    """The process runs (a zombie, dead but not yet reaped, does not)."""
    if not exists(pid):
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] != "Z"


def exists(pid):
    """The process exists, if only as a zombie not yet reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def children(pid):
    """The pids whose parent is ``pid`` (Linux: read from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def stopped(folder, postmaster_pid):
    """The server is gone: no postmaster.pid, no state file, and (soon) no process."""
    deadline = time.monotonic() + 5
    while running(postmaster_pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return (
        not running(postmaster_pid)
        and not (folder / "data" / "postmaster.pid").exists()
        and not (folder / "state.json").exists()
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A stopped cluster made once by ``initdb``, for tests to copy: initdb takes a second."""
    folder = tmp_path_factory.mktemp("cluster") / ".app-postgres"
    embedded.start(folder).release()
    return folder / "data"


@pytest.fixture
def folder(tmp_path, cluster):
    """A server folder holding a copy of the made cluster (ownership kept)."""
    folder = tmp_path / ".app-postgres"
    folder.mkdir()
    subprocess.run(["cp", "-a", str(cluster), str(folder / "data")], check=True)  # noqa: S607
    return folder


def test_a_second_process_joins_and_the_last_to_leave_stops_it(folder):
    """Another process gets the same server; it stops only when the last user leaves."""
    server = embedded.start(folder)
    other = user_process(folder)
    try:
        assert joined(other) == {"postmaster_pid": server.postmaster_pid, "url": server.url}
        assert state(folder) == {
            "url": server.url,
            "port": 5432,
            "postmaster_pid": server.postmaster_pid,
            "owner_pid": os.getpid(),
            "users": [os.getpid(), other.pid],
        }
        server.release()
        assert answers(server)
        assert state(folder)["users"] == [other.pid]
        assert state(folder)["owner_pid"] == other.pid
    finally:
        server.release()
        leave(other)
    assert stopped(folder, server.postmaster_pid)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to another user")
def test_as_root_the_server_runs_as_its_own_user(folder):
    """PostgreSQL refuses root: the server and its cluster belong to embedded_postgres."""
    with embedded.start(folder) as server:
        account = pwd.getpwnam(embedded.SERVER_USER)
        assert (folder / "data").stat().st_uid == account.pw_uid
        assert Path(f"/proc/{server.postmaster_pid}").stat().st_uid == account.pw_uid
        assert answers(server)
    assert stopped(folder, server.postmaster_pid)


def test_concurrent_first_starts_make_one_server(tmp_path):
    """Three processes starting at once in an empty folder share one initdb and one server."""
    folder = tmp_path / ".app-postgres"
    processes = [user_process(folder) for _ in range(3)]
    try:
        pids = {joined(process)["postmaster_pid"] for process in processes}
        assert len(pids) == 1
        assert sorted(state(folder)["users"]) == sorted(p.pid for p in processes)
    finally:
        for process in processes:
            leave(process)
    assert stopped(folder, pids.pop())


def test_after_its_user_is_killed_the_next_start_adopts_the_server(folder):
    """kill -9 leaves the server running; the next start joins it and drops the dead pid."""
    owner = user_process(folder)
    postmaster_pid = joined(owner)["postmaster_pid"]
    owner.kill()
    owner.communicate()
    with embedded.start(folder) as server:
        assert server.postmaster_pid == postmaster_pid
        assert state(folder)["users"] == [os.getpid()]
        assert state(folder)["owner_pid"] == os.getpid()
    assert stopped(folder, postmaster_pid)


def test_after_the_server_is_killed_the_next_start_starts_it_again(folder):
    """A server killed with its backends leaves a stale postmaster.pid; start copes."""
    first = embedded.start(folder)
    processes = [first.postmaster_pid, *children(first.postmaster_pid)]
    for pid in processes:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(exists(pid) for pid in processes):  # reaped, not only dead: PostgreSQL checks
        assert time.monotonic() < deadline, "the killed server did not go away"
        time.sleep(0.02)
    assert (folder / "data" / "postmaster.pid").exists()
    second = embedded.start(folder)
    try:
        assert second.postmaster_pid != first.postmaster_pid
        assert answers(second)
    finally:
        first.release()
        second.release()
    assert stopped(folder, second.postmaster_pid)


def test_a_socket_path_too_long_moves_the_socket_to_a_temporary_directory(tmp_path, cluster):
    """A Unix socket path has at most 107 bytes: a deep folder gets its socket elsewhere."""
    folder = tmp_path / ("deep" * 20) / ".app-postgres"
    folder.mkdir(parents=True)
    subprocess.run(["cp", "-a", str(cluster), str(folder / "data")], check=True)  # noqa: S607
    with embedded.start(folder) as server:
        socket_dir = Path(psycopg.conninfo.conninfo_to_dict(server.conninfo)["host"])
        assert socket_dir.parent == Path(tempfile.gettempdir())
        assert answers(server)
    assert not socket_dir.exists()
    assert stopped(folder, server.postmaster_pid)


def test_a_server_that_cannot_start_says_how_to_use_a_url_instead(folder):
    """A cluster from another PostgreSQL version fails with the log and the way out."""
    (folder / "data" / "PG_VERSION").write_text("9\n")
    with pytest.raises(embedded.EmbeddedPostgresError) as caught:
        embedded.start(folder)
    message = str(caught.value)
    assert f"pg_ctl start failed in {folder}" in message
    assert "initialized by PostgreSQL version 9" in message  # from the server's log
    assert message.endswith(
        "To use a PostgreSQL server instead, set APP_DATABASE_URL, for example "
        "APP_DATABASE_URL=postgresql+psycopg://user:password@localhost:5432/app"
    )
    assert caught.value.folder == folder
    assert not (folder / "state.json").exists()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # psycopg's async connections: asyncio
async def test_without_a_url_the_database_is_the_embedded_server(folder, monkeypatch):
    """open_database() with APP_DATABASE_URL unset starts ./.app-postgres; closing stops it."""
    monkeypatch.delenv("APP_DATABASE_URL")
    monkeypatch.chdir(folder.parent)
    await db.open_database()
    try:
        async with db.transaction() as session:
            tables = set((await session.scalars(text("SELECT tablename FROM pg_tables"))).all())
            directory = await session.scalar(text("SHOW data_directory"))
        postmaster_pid = state(folder)["postmaster_pid"]
    finally:
        await db.close_database()
    assert tables >= set(db.Base.metadata.tables) > set()
    assert Path(directory) == folder / "data"
    assert stopped(folder, postmaster_pid)
