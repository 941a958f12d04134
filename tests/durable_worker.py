"""``python tests/durable_worker.py [ARGS]``: ``python -m app worker`` with the tests' durable
handler registered too (see durable_helpers.py)."""

from __future__ import annotations

import sys

from durable_helpers import register

from app.cli import main

register(max_attempts=int(sys.argv[1]) if len(sys.argv) > 1 else 3)
sys.exit(main(["worker", "--concurrency", "1"]))
