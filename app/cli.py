"""The command line: ``python -m app [--json]`` runs the demo scenario."""

from __future__ import annotations

import argparse
import os

import anyio

from app.bootstrap import load_business_packages
from app.core.events import verify
from app.core.logging import configure_logging

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, configure logging, run the command, and return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m app", description="Run the event registry's demo scenario."
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=os.environ.get("APP_LOG_JSON", "") not in ("", "0"),
        help="log JSON lines instead of console lines (or set APP_LOG_JSON=1)",
    )
    args = parser.parse_args(argv)
    configure_logging(json=args.json)
    load_business_packages()
    from app.demo import run_demo  # registers the demo's own handler

    verify()
    anyio.run(run_demo)
    return 0
