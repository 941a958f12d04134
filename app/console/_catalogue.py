"""The catalogue as the console shows it: the live registry, with sites from the static scan.

Declarations and handlers come from the running process (``declared()``, ``registrations()``),
so handlers registered at run time appear too, in registration order. Emit sites and where
each handler is registered (``path:line``) come from the same scan that writes EVENTS.md
(``app.core.scan``), made once per process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from app.core._source import APP_ROOT, Scan, scan
from app.core.catalogue import declared, type_name
from app.core.events import registrations

__all__ = ["EventView", "FieldView", "HandlerView", "catalogue"]


@dataclass(frozen=True, slots=True)
class FieldView:
    """A payload field: its name, its type as written, and whether it is required."""

    name: str
    type: str
    required: bool


@dataclass(frozen=True, slots=True)
class HandlerView:
    """A registered handler; ``durable_id``, ``max_attempts`` only for durable ones."""

    label: str
    site: str | None
    durable_id: str | None
    max_attempts: int | None
    timeout: float | None
    slow_after: float | None


@dataclass(frozen=True, slots=True)
class EventView:
    """One declared event with everything the catalogue page shows of it."""

    name: str
    source: str
    purpose: str
    replaced_by: str | None
    fields: tuple[FieldView, ...]
    emit_sites: tuple[str, ...]
    handlers: tuple[HandlerView, ...]

    def matches(self, query: str) -> bool:
        """Whether ``query`` (lower case) is in its name, source, purpose, a field or a
        handler."""
        words = [self.name, self.source, self.purpose, self.replaced_by or ""]
        words += [f.name for f in self.fields]
        words += [h.label for h in self.handlers] + [h.durable_id or "" for h in self.handlers]
        return any(query in word.lower() for word in words)


@functools.cache
def _scan(root: Path) -> Scan:
    return scan(root)


def catalogue(query: str = "", root: Path | None = APP_ROOT) -> list[EventView]:
    """Every declared event by name, those matching ``query`` (case-insensitive) if given.

    Args:
        query: Text to look for; empty for every event.
        root: The package directory to scan for sites (once per process), or None for none.

    A scan that fails leaves the sites out instead of failing the page.
    """
    found: Scan | None = None
    if root is not None:
        try:
            found = _scan(root)
        except (OSError, ValueError):
            found = None
    views = [_view(name, found) for name in sorted(declared())]
    needle = query.strip().lower()
    return [view for view in views if view.matches(needle)] if needle else views


def _view(name: str, found: Scan | None) -> EventView:
    spec = declared()[name]
    fields = [FieldView(k, type_name(t), True) for k, t in spec.payload.items()]
    fields += [FieldView(k, type_name(t), False) for k, t in spec.optional.items()]
    emit_sites = () if found is None else tuple(str(e.site) for e in found.emits if e.name == name)
    sites = (
        {} if found is None else {h.label: str(h.site) for h in found.handlers if h.name == name}
    )
    handlers = tuple(
        HandlerView(
            label=r.label,
            site=sites.get(r.label),
            durable_id=r.id,
            max_attempts=r.max_attempts if r.durable else None,
            timeout=r.timeout,
            slow_after=r.slow_after,
        )
        for r in registrations(name)
    )
    return EventView(
        name, spec.source, spec.purpose, spec.replaced_by, tuple(fields), emit_sites, handlers
    )
