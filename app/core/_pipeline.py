"""How ``emit`` composes its optional behaviour around one delivery function.

Two places take optional behaviour, each installed by a function that returns its undo:

* **Steps before delivery** (``install_step``): payload type checks, then the test plugin's
  hook. Each sees the checked emit and may stop its delivery (a mute) or raise.
* **Wrappers of the delivery function** (``wrap_delivery``): tracing, the events console.
  ``deliver`` is the delivery loop wrapped by each installed wrapper, like pluggy's
  ``_inner_hookexec``. A wrapper installed with ``every_emit=True`` also sees the emits whose
  handlers are all durable, which are otherwise never delivered in-process. A wrapper that
  runs each handler its own way makes its handlers once per registration list (``wrap_each``).

A third place takes the **durable transport** (``install_transport``): where ``emit`` hands the
jobs of durable handlers. Without one, an emit that has durable handlers is refused.

Deferral is no option: ``emit`` asks ``deferral`` (a context variable) every time, so what a
scope does never depends on what is open elsewhere. ``emit`` reads ``before`` and ``deliver``
once per call; installing swaps them atomically under one lock.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

if TYPE_CHECKING:
    from app.core._context import Event
    from app.core._durable import DurableTransport

__all__ = [
    "Deferral",
    "Deliver",
    "EmitHook",
    "Handlers",
    "Step",
    "deferral",
    "install_failure_listener",
    "install_hook",
    "install_step",
    "install_transport",
    "set_delivery",
    "wrap_delivery",
    "wrap_each",
]

HandlerT = TypeVar("HandlerT", bound="Handler")


class Handler(Protocol):
    """A registration as the delivery loop and its wrappers see it."""

    label: str
    awaits: bool
    call: Callable[..., Any]


class Handlers(list[HandlerT]):
    """Handlers in the order the delivery loop runs them, with ``async_calls`` made once:
    what the loop awaits, one call per handler, when every handler is awaited (else None,
    and the loop decides per handler)."""

    __slots__ = ("async_calls",)

    def __init__(self, handlers: Iterable[HandlerT] = ()) -> None:
        super().__init__(handlers)
        self.async_calls = tuple(h.call for h in self) if all(h.awaits for h in self) else None


Step = Callable[[str, Mapping[str, Any], "Event"], bool]
"""Before delivery: return False to stop it (no handler runs), or raise to refuse the emit."""

Deliver = Callable[[str, dict[str, Any], "Event", Sequence[Any]], Awaitable[None]]
"""Run the in-process handlers of one emit, in order, isolating their failures."""

FailureListener = Callable[[str, str, Exception], None]
"""Told of each handler failure the delivery loop logged: event name, handler, error."""


class Deferral(Protocol):
    """An open deferral scope, as ``emit`` sees it (``app.core.deferred`` makes them)."""

    def defer(
        self,
        name: str,
        kwargs: dict[str, Any],
        event: Event,
        via: Callable[[Any], None] | None = None,
    ) -> bool:
        """Queue the delivery (to be handed to ``via``, if given, when the scope commits);
        False means the scope is over and committed, so it is to run now.

        Raises:
            EventsError: the scope was discarded, so the event must not be delivered.
        """


class EmitHook(Protocol):
    """What the test plugin installs (``install_hook``)."""

    def emitted(self, name: str, kwargs: Mapping[str, Any], event: Event) -> bool:
        """Called by each emit whose payload checked out, before delivery; return False to
        mute it (no handler runs)."""

    def handler_failed(self, name: str, handler: str, error: Exception) -> None:
        """Called after the delivery loop logged a handler's failure."""


deferral: ContextVar[Deferral | None] = ContextVar("app.core.events.deferral", default=None)
"""The innermost deferral scope of this context, or None."""

STEP_ORDER: Final = ("types", "hook")

before: Step | None = None
"""The installed steps composed in ``STEP_ORDER``, or None when there are none."""

deliver: Deliver
"""The delivery function ``emit`` calls: the loop, wrapped by each installed wrapper."""

every_emit: bool = False
"""Whether an installed wrapper asked to see every emit: ``emit`` then also delivers an emit
that has only durable handlers (after its deferral scope commits), to no handler."""

failure_listener: FailureListener | None = None

transport: DurableTransport | None = None
"""Where ``emit`` enqueues the jobs of durable handlers, or None: such emits are refused."""

_steps: dict[str, Step] = {}
_wrappers: dict[str, Callable[[Deliver], Deliver]] = {}
_every_emit: dict[str, bool] = {}
_loop: Deliver | None = None
_lock = threading.Lock()


def set_delivery(loop: Deliver) -> None:
    """Set the delivery loop itself (``app.core.events`` does, once)."""
    global _loop
    with _lock:
        _loop = loop
        _rebuild()


def install_step(slot: str, step: Step) -> Callable[[], None]:
    """Run ``step`` before every delivery, in the place ``slot`` has in ``STEP_ORDER``.

    Returns:
        The undo: it puts back what ``slot`` held before.

    Raises:
        ValueError: ``slot`` is not one of ``STEP_ORDER``.
    """
    if slot not in STEP_ORDER:
        raise ValueError(f"unknown step slot {slot!r}; use one of {', '.join(STEP_ORDER)}.")
    return _swap(_steps, slot, step)


def wrap_delivery(
    slot: str, wrapper: Callable[[Deliver], Deliver], *, every_emit: bool = False
) -> Callable[[], None]:
    """Wrap the delivery loop with ``wrapper`` (one per ``slot``).

    Args:
        slot: Its place; wrapping a slot again replaces what it held.
        wrapper: Takes the delivery function and returns the one to call instead.
        every_emit: Also deliver the emits that have only durable handlers (to no handler),
            so that the wrapper sees them; off, they are never delivered in-process.

    Returns:
        The undo: it puts back what ``slot`` held before.
    """
    undo_flag = _swap(_every_emit, slot, every_emit)
    undo_wrapper = _swap(_wrappers, slot, wrapper)

    def undo() -> None:
        undo_wrapper()
        undo_flag()

    return undo


def wrap_each(
    make: Callable[[Any], HandlerT],
) -> Callable[[Sequence[Any]], Handlers[HandlerT]]:
    """For a delivery wrapper: a function that maps a registration list to
    ``Handlers(make(registration) for registration in entries)``, made once per list and then
    reused (so ``make`` must return handlers: ``label``, ``awaits``, ``call``).

    The registry replaces a name's list when it changes, so a list's identity is its version.
    At most ``MADE_LIMIT`` lists are kept; past that the cache starts again.
    """
    made: dict[int, tuple[Sequence[Any], Handlers[HandlerT]]] = {}

    def wrapped(entries: Sequence[Any]) -> Handlers[HandlerT]:
        found = made.get(id(entries))
        if found is not None and found[0] is entries:
            return found[1]
        if len(made) >= MADE_LIMIT:
            made.clear()
        each = Handlers(make(registration) for registration in entries)
        made[id(entries)] = (entries, each)  # the list is kept, so its id is not reused
        return each

    return wrapped


MADE_LIMIT: Final = 1024
"""How many registration lists a ``wrap_each`` function keeps its wrapped handlers for."""


def install_failure_listener(listener: FailureListener | None) -> Callable[[], None]:
    """Tell ``listener`` of every handler failure the loop logs; returns the undo."""
    return _set_global("failure_listener", listener)


def install_transport(new: DurableTransport | None) -> Callable[[], None]:
    """Make ``new`` the durable transport (None: none); returns the undo."""
    return _set_global("transport", new)


def _set_global(name: str, value: object) -> Callable[[], None]:
    """Set this module's global ``name`` under the lock; return the undo."""
    namespace = globals()
    with _lock:
        previous, namespace[name] = namespace[name], value

    def undo() -> None:
        with _lock:
            namespace[name] = previous

    return undo


def install_hook(hook: EmitHook) -> Callable[[], None]:
    """Install the test plugin's hook: its ``emitted`` as the ``"hook"`` step, its
    ``handler_failed`` as the failure listener. Returns the undo of both."""
    undo_step = install_step("hook", hook.emitted)
    undo_listener = install_failure_listener(hook.handler_failed)

    def undo() -> None:
        undo_listener()
        undo_step()

    return undo


def _swap(table: dict[str, Any], slot: str, value: Any) -> Callable[[], None]:
    with _lock:
        previous = table.get(slot)
        table[slot] = value
        _rebuild()

    def undo() -> None:
        with _lock:
            if previous is None:
                table.pop(slot, None)
            else:
                table[slot] = previous
            _rebuild()

    return undo


def _rebuild() -> None:
    """Recompose ``before`` and ``deliver``; the caller holds ``_lock``."""
    global before, deliver, every_emit
    every_emit = any(_every_emit.values())
    steps = [_steps[slot] for slot in STEP_ORDER if slot in _steps]
    before = steps[0] if len(steps) == 1 else (_chain(steps) if steps else None)
    if _loop is not None:
        composed = _loop
        for wrapper in _wrappers.values():
            composed = wrapper(composed)
        deliver = composed


def _chain(steps: list[Step]) -> Step:
    def run_steps(name: str, kwargs: Mapping[str, Any], event: Event) -> bool:
        return all(step(name, kwargs, event) for step in steps)

    return run_steps
