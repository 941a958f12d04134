"""``python tests/console_server.py PORT``: ``python -m app serve`` with the tests' durable
handler registered too (see durable_helpers.py: it fails while ``TEST_FAIL_FILE`` exists), for
the console's browser test."""

from __future__ import annotations

import sys

from durable_helpers import register

from app.cli import main

register(max_attempts=2)
sys.exit(main(["serve", "--port", sys.argv[1], "--grace-period", "1"]))
