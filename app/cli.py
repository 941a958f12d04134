"""The command line.

``python -m app serve`` runs the reference service; ``python -m app`` (or ``demo``) runs the
demo scenario; ``python -m app events`` prints the event catalogue, ``events check`` checks it
and EVENTS.md, ``events write`` regenerates EVENTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import anyio

import app
from app.bootstrap import load_business_packages
from app.core.catalogue_doc import diff, render_markdown, render_table
from app.core.events import verify
from app.core.logging import configure_logging
from app.core.scan import check, scan

__all__ = ["main"]

_SOURCE = Path(app.__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the command, and return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "events":
        return _events(
            args.action, root=args.root, file=args.file or args.root.parent / "EVENTS.md"
        )
    if args.command == "serve":
        return _serve(host=args.host, port=args.port, json=args.json)
    return _demo(json=args.json)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--json",
        action="store_true",
        default=os.environ.get("APP_LOG_JSON", "") not in ("", "0"),
        help="log JSON lines instead of console lines (or set APP_LOG_JSON=1)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the reference HR service",
        description="Serve the HR reference service with uvicorn. The database is "
        "APP_DATABASE_URL (postgresql+psycopg://user:password@host:port/name), or an embedded "
        "PostgreSQL whose data lives in .app-postgres/ in the working directory, started "
        "with the service (or shared, if one already runs there) and stopped with it.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default: %(default)s)")
    commands.add_parser("demo", help="run the demo scenario (the default command)")
    events = commands.add_parser(
        "events",
        help="show, check or write the event catalogue",
        description="Show the event catalogue (default), check it and EVENTS.md, or write "
        "EVENTS.md. Reads the source statically; imports nothing from it.",
    )
    events.add_argument("action", nargs="?", choices=["show", "check", "write"], default="show")
    events.add_argument(
        "--root",
        type=Path,
        default=_SOURCE,
        help="the package directory to scan (default: this app's)",
    )
    events.add_argument(
        "--file",
        type=Path,
        default=None,
        help="EVENTS.md to check or write (default: beside --root)",
    )
    return parser


def _serve(*, host: str, port: int, json: bool) -> int:
    import uvicorn

    from app.web.service import create_app

    configure_logging(json=json)
    uvicorn.run(create_app(), host=host, port=port, log_config=None)
    return 0


def _demo(*, json: bool) -> int:
    configure_logging(json=json)
    load_business_packages()
    from app.demo import run_demo  # registers the demo's own handler

    verify()
    anyio.run(run_demo)
    return 0


def _events(action: str, *, root: Path, file: Path) -> int:
    if not root.is_dir():
        print(f"{root} is not a directory", file=sys.stderr)
        return 2
    found = scan(root)
    if action == "show":
        sys.stdout.write(render_table(found))
        return 0
    expected = render_markdown(found)
    if action == "write":
        file.write_text(expected, encoding="utf-8")
        print(f"wrote {file}: {len({d.name for d in found.declarations})} event(s)")
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
        total = len(problems) + stale
        print(f"\nevents check failed: {total} problem(s)")
        return 1
    print(
        f"events check passed: {len(found.declarations)} declaration(s), "
        f"{len(found.emits)} emit site(s), {len(found.handlers)} handler(s); {file} is current"
    )
    return 0
