"""Testing code that emits or handles events; the pytest plugin is ``app.testing.pytest_plugin``.

The plugin is registered through the ``pytest11`` entry point, so installing the project is
enough: its fixtures and markers are listed by ``pytest --fixtures`` and ``pytest --markers``.
"""

from __future__ import annotations

from app.testing._state import EventRecorder, HandlerFailure, RecordedEmit

__all__ = ["EventRecorder", "HandlerFailure", "RecordedEmit"]
