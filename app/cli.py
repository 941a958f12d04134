"""The command line: ``python -m app [--json] [COMMAND]``.

``serve`` runs the reference service (with one embedded worker unless ``APP_WORKER=off``);
``worker`` runs a worker of durable handlers; ``demo`` (the default) runs the demo scenario;
``events`` prints the event catalogue, ``events check`` checks the source against it and
EVENTS.md, ``events write`` regenerates EVENTS.md; ``events jobs``, ``events dead`` and
``events retry`` show and retry durable jobs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

import anyio

import app
from app.bootstrap import load_business_packages
from app.core._describe import plural
from app.core.catalogue_doc import diff, render_markdown, render_table
from app.core.events import verify
from app.core.logging import configure_logging
from app.core.scan import check, scan

__all__ = ["main"]

_SOURCE = Path(app.__file__).resolve().parent
_WORKER_CONCURRENCY: Final = 4
"""Jobs a worker runs at once by default, ``worker``'s and ``serve``'s embedded one alike
(``app.web.service.DEFAULT_WORKER_CONCURRENCY`` is the same for ``create_app``)."""

_DESCRIPTION = """\
The reference HR service around an in-process event registry, its demo scenario, and the
tools of its event catalogue. With no command, runs the demo.
"""

_EVENTS_DESCRIPTION = """\
Read the source statically (importing nothing from it) and act on the event catalogue: every
declare(), every emit (emit, BackgroundEmitter.emit_soon and their aliases) and every handler
(@on), and which handlers start-up registers.

actions:
  show    print the catalogue as a table: each event with its source, fields, number of
          emit sites and of handlers, and purpose (the default)
  check   check the source and EVENTS.md, print each problem as path:line with how to fix
          it, and exit 1 if there is any: undeclared or malformed event names, payloads that
          differ from the declaration, handlers that cannot be registered (no **kwargs, a
          required positional-only parameter) or that start-up never imports, parameters
          that are not fields, declared events nothing emits, and a stale EVENTS.md (with a
          diff); exit 0 and a summary otherwise
  write   regenerate EVENTS.md from the source

durable jobs (these open the database: APP_DATABASE_URL, or the embedded server here):
  jobs    count the durable jobs by state, and say when the oldest waiting one was enqueued
  dead    list the dead letters: jobs whose last allowed run failed, with their error
  retry   put dead letters back in the queue: `retry ID [ID ...]`, or `retry --all`
"""


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the command, and return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "events":
        if args.action in ("jobs", "dead", "retry"):
            return _durable_admin(args.action, ids=args.ids, every=args.all, json=args.json)
        if args.ids or args.all:
            parser.error("job ids and --all go with `events retry` only")
        return _events(
            args.action, root=args.root, file=args.file or args.root.parent / "EVENTS.md"
        )
    if args.command == "worker":
        return _worker(concurrency=args.concurrency, json=args.json)
    if args.command == "serve":
        return _serve(args)
    return _demo(json=args.json)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description=_DESCRIPTION,
        epilog="`python -m app COMMAND --help` describes a command and its options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=os.environ.get("APP_LOG_JSON", "") not in ("", "0"),
        help="log JSON lines instead of console lines (or set APP_LOG_JSON=1)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    serve = commands.add_parser(
        "serve",
        help="serve the reference HR service over HTTP with uvicorn",
        description="Serve the HR reference service with uvicorn. The database is "
        "APP_DATABASE_URL (postgresql+psycopg://user:password@host:port/name), or an embedded "
        "PostgreSQL whose data lives in .app-postgres/ in the working directory, started "
        "with the service (or shared, if one already runs there) and stopped with it.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default: %(default)s)")
    serve.add_argument(
        "--max-body-size",
        type=int,
        default=_env("APP_MAX_BODY_SIZE", int, 1024 * 1024),
        metavar="BYTES",
        help="answer 413 to a request body larger than this "
        "(default: %(default)s, or APP_MAX_BODY_SIZE)",
    )
    serve.add_argument(
        "--body-timeout",
        type=float,
        default=_env("APP_BODY_TIMEOUT", float, 30.0),
        metavar="SECONDS",
        help="answer 408 to a request whose body is not sent in full within this "
        "(default: %(default)s, or APP_BODY_TIMEOUT)",
    )
    serve.add_argument(
        "--keep-alive",
        type=float,
        default=_env("APP_KEEP_ALIVE", float, 65.0),
        metavar="SECONDS",
        help="close a client's idle connection after this; keep it longer than the idle "
        "timeout of the clients and proxies in front, or a request they send on a "
        "connection being closed fails (default: %(default)s, or APP_KEEP_ALIVE)",
    )
    serve.add_argument(
        "--grace-period",
        type=float,
        default=_env("APP_GRACE_PERIOD", float, 10.0),
        metavar="SECONDS",
        help="on SIGINT or SIGTERM, wait up to this for requests in flight, then as long "
        "for event deliveries, then cancel and log what is left; a second signal stops "
        "waiting (default: %(default)s, or APP_GRACE_PERIOD)",
    )
    serve.add_argument(
        "--statement-timeout",
        type=float,
        default=_env("APP_STATEMENT_TIMEOUT", float, 5.0),
        metavar="SECONDS",
        help="fail a database statement, or a wait for a lock, that lasts longer "
        "(default: %(default)s, or APP_STATEMENT_TIMEOUT)",
    )
    serve.add_argument(
        "--trust-request-id",
        action=argparse.BooleanOptionalAction,
        default=_env("APP_TRUST_REQUEST_ID", _yes, False),
        help="take a client's X-Request-ID as the request and correlation id; otherwise "
        "make one and log the client's as client_request_id (default: %(default)s, or "
        "APP_TRUST_REQUEST_ID=1)",
    )
    serve.add_argument(
        "--worker-concurrency",
        type=_positive,  # applied to the default too: a bad variable is a usage error
        default=os.environ.get("APP_WORKER_CONCURRENCY") or str(_WORKER_CONCURRENCY),
        metavar="N",
        help="jobs the embedded durable worker runs at once; APP_WORKER=off runs none here "
        "(default: %(default)s, or APP_WORKER_CONCURRENCY)",
    )
    worker = commands.add_parser(
        "worker",
        help="run durable handlers from the database's queue until stopped",
        description="Run the durable handlers' jobs from the database's queue (procrastinate) "
        "until SIGINT or SIGTERM; running jobs get up to their timeout to finish, and a "
        "second signal stops at once (its jobs stay queued and run again elsewhere). The "
        "database is APP_DATABASE_URL, or the embedded PostgreSQL in .app-postgres/ here, "
        "shared with `serve`. Any number of workers may run.",
    )
    worker.add_argument(
        "--concurrency",
        type=_positive,
        default=_WORKER_CONCURRENCY,
        help="jobs run at once (default: %(default)s)",
    )
    commands.add_parser(
        "demo",
        help="run a short HR scenario on the service's database, one failing handler "
        "included (the default command)",
        description="Run a short HR scenario on the service's database: the business "
        "packages' handlers write the welcome mail and the audit trail, and the demo's own "
        "handler fails and is isolated.",
    )
    events = commands.add_parser(
        "events",
        help="show, check or write the event catalogue and EVENTS.md, reading the source "
        "statically",
        description=_EVENTS_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    events.add_argument(
        "action",
        nargs="?",
        choices=["show", "check", "write", "jobs", "dead", "retry"],
        default="show",
        metavar="ACTION",
        help="show (the default), check, write, jobs, dead or retry: see actions above",
    )
    events.add_argument("ids", nargs="*", type=int, metavar="ID", help="retry: job ids")
    events.add_argument("--all", action="store_true", help="retry: every dead letter")
    events.add_argument(
        "--root",
        type=Path,
        default=_SOURCE,
        help="the package directory to scan; start-up is its bootstrap module and the "
        "packages in its business folder (default: this app's)",
    )
    events.add_argument(
        "--file",
        type=Path,
        default=None,
        help="EVENTS.md to check or write (default: beside --root)",
    )
    return parser


def _configure_logging(*, json: bool) -> None:
    """Configure logging; procrastinate's own lines go at warning and above only (its info
    lines would log every job's payload)."""
    configure_logging(json=json)
    logging.getLogger("procrastinate").setLevel(logging.WARNING)


_T = TypeVar("_T")


def _env(name: str, parse: Callable[[str], _T], default: _T) -> _T:
    value = os.environ.get(name, "")
    return parse(value) if value else default


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {number}")
    return number


def _yes(value: str) -> bool:
    return value.lower() not in ("0", "false", "no", "off")


def _serve(args: argparse.Namespace) -> int:
    from app.web import server
    from app.web.service import create_app

    _configure_logging(json=args.json)
    app = create_app(
        grace_period=args.grace_period,
        trust_request_id=args.trust_request_id,
        max_body_size=args.max_body_size,
        body_timeout=args.body_timeout,
        statement_timeout=args.statement_timeout,
        worker_concurrency=args.worker_concurrency,
    )
    server.run(
        app,
        host=args.host,
        port=args.port,
        grace_period=args.grace_period,
        keep_alive=args.keep_alive,
    )
    return 0


def _worker(*, concurrency: int, json: bool) -> int:
    _configure_logging(json=json)
    load_business_packages()
    verify()

    async def run() -> None:
        from app import db, durable

        await db.open_database()
        try:
            async with durable.running(), durable.worker_app(concurrency=concurrency) as queue:
                await durable.work(queue, concurrency=concurrency, signals=True)
        finally:
            await db.close_database()

    anyio.run(run)
    return 0


def _durable_admin(action: str, *, ids: list[int], every: bool, json: bool) -> int:
    if action == "retry" and not (ids or every):
        print("events retry needs job ids, or --all.", file=sys.stderr)
        return 2
    _configure_logging(json=json)
    return anyio.run(_administer, action, None if every else ids)


async def _administer(action: str, ids: list[int] | None) -> int:
    from app import db, durable
    from app.durable import admin

    await db.open_database()
    try:
        async with durable.running() as queue:
            if action == "jobs":
                counts = await admin.job_counts()
                for status, count in counts.by_status.items():
                    print(f"{status:<10} {count}")
                total = sum(counts.by_status.values())
                oldest = counts.oldest_waiting
                print(f"{total} durable jobs; oldest waiting: {oldest or 'none'}")
            elif action == "dead":
                letters = await admin.dead_letters()
                for letter in letters:
                    print(
                        f"job {letter.job_id}: {letter.handler_id} for {letter.event_name} "
                        f"(event {letter.event_id}), {plural(letter.attempts, 'attempt')}, "
                        f"last failed {letter.failed_at}: {letter.error}"
                    )
                    for line in (letter.traceback or "").rstrip().splitlines():
                        print(f"    {line}")
                print(f"{plural(len(letters), 'dead letter')}.")
            else:
                retried = await admin.retry(queue, ids)
                missing = sorted(set(ids or ()) - set(retried))
                print(f"retried {plural(len(retried), 'job')}: {' '.join(map(str, retried))}")
                if missing:
                    print(f"not dead letters: {' '.join(map(str, missing))}", file=sys.stderr)
                    return 1
    finally:
        await db.close_database()
    return 0


def _demo(*, json: bool) -> int:
    from app.demo import register_handlers, run_demo

    _configure_logging(json=json)
    load_business_packages()
    register_handlers()
    verify()
    anyio.run(run_demo)
    return 0


def _events(action: str, *, root: Path, file: Path) -> int:
    if not root.is_dir():
        print(
            f"{root} is not a directory. Pass the package directory to scan with --root.",
            file=sys.stderr,
        )
        return 2
    found = scan(root)
    if action == "show":
        sys.stdout.write(render_table(found))
        return 0
    expected = render_markdown(found)
    events = len({d.name for d in found.declarations})
    if action == "write":
        file.write_text(expected, encoding="utf-8")
        print(f"Wrote {file}: {plural(events, 'event')}.")
        return 0
    problems = check(found)
    current = file.read_text(encoding="utf-8") if file.exists() else ""
    stale = current != expected
    for problem in problems:
        print(problem)
    if stale:
        if problems:
            print()
        print(f"{file} is stale; `python -m app events write` regenerates it. Differences:")
        sys.stdout.write(diff(current, expected, str(file)))
    if problems or stale:
        print(f"\nevents check failed: {plural(len(problems) + stale, 'problem')}.")
        return 1
    print(
        f"events check passed: {plural(events, 'event')}, "
        f"{plural(len(found.emits), 'emit site')}, "
        f"{plural(len(found.registrations), 'handler')} registered at start-up; "
        f"{file} is current."
    )
    return 0
