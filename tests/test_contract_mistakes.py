"""Each contract mistake of a new user, seeded in a small package: caught by ``events check``
with ``path:line`` and how to fix it, and at start-up where it can be."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.core.scan import check, scan

SHOP = {
    "__init__.py": "",
    "business/__init__.py": "",
    "business/orders/__init__.py": "from shop.business.orders import events as events\n",
    "business/orders/events.py": """\
        from app.core.events import declare

        declare(
            "order.placed",
            source="orders",
            payload={"order_id": int, "total": float},
            purpose="an order was placed",
        )
        """,
    "business/orders/services.py": """\
        from app.utils import emit


        async def place(order_id):
            await emit("order.placed", order_id=order_id, total=9.5)
        """,
    "business/mail/__init__.py": "from shop.business.mail import handlers as handlers\n",
    "business/mail/handlers.py": """\
        from app.utils import on


        @on("order.placed")
        async def confirm(*, order_id, **kwargs):
            return None
        """,
}
"""The package every mistake is seeded in: ``orders`` declares and emits ``order.placed``,
``mail`` handles it; as it stands it has no problem."""

CONVENTION = (
    "Rename it to follow the convention: an event name is '<aggregate>.<verb>': two lowercase "
    "ASCII snake_case words joined by one dot, each starting with a letter, at most 100 "
    "characters (e.g. 'employee.created')."
)
NO_KWARGS = (
    "it does not take **kwargs. Add **kwargs (or **_) to its parameters: handlers must accept "
    "arbitrary keyword arguments, so that emitters can add payload fields without breaking "
    "anyone."
)


def make_shop(tmp_path: Path, **changes: str | None) -> Path:
    """Write ``SHOP`` with ``changes`` under ``tmp_path``; return the package directory.

    ``changes`` maps a file (its path without ``.py``, ``/`` written ``__``, ``__init__``
    written ``init``) to its new text, or to None to leave it out."""
    files = dict(SHOP)
    for key, text in changes.items():
        relative = "/".join("__init__" if p == "init" else p for p in key.split("__")) + ".py"
        if text is None:
            del files[relative]
        else:
            files[relative] = text
    for relative, text in files.items():
        path = tmp_path / "shop" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path / "shop"


def problems(package: Path) -> list[str]:
    """What ``events check`` reports for the package, one line each."""
    return [str(problem) for problem in check(scan(package))]


STARTUP = """
import sys
sys.path.insert(0, sys.argv[1])
from app.bootstrap import load_business_packages
from app.core.events import handlers, verify
try:
    load_business_packages("shop.business")
    verify()
except Exception as error:
    print(f"{type(error).__name__}: {error}")
else:
    print("started")
"""


def start(package: Path) -> str:
    """Start the package up as the service does, in a fresh interpreter: import its business
    packages and ``verify()``. Return ``started``, or the error as ``Type: message``."""
    result = subprocess.run(
        [sys.executable, "-c", STARTUP, str(package.parent)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


def test_the_seed_package_has_no_problem(tmp_path):
    """Without a mistake, the check finds nothing and start-up succeeds."""
    package = make_shop(tmp_path)
    assert problems(package) == []
    assert start(package) == "started"


def test_a_handler_in_a_module_nothing_imports(tmp_path):
    """A handler whose module its package never imports never runs: both checks say so."""
    extra = """\
        from app.utils import on


        @on("order.placed")
        async def archive(*, order_id, **kwargs):
            return None
        """
    package = make_shop(tmp_path, business__mail__extra=extra)
    reason = (
        "start-up imports shop.business.mail (shop/business/mail/__init__.py), and nothing it "
        "imports imports shop.business.mail.extra. Import it from "
        "shop/business/mail/__init__.py: `from shop.business.mail import extra as extra`."
    )
    assert problems(package) == [
        "shop/business/mail/extra.py:4: handler shop.business.mail.extra.archive never "
        f"registers: {reason}"
    ]
    assert start(package) == (
        "CatalogueError: 1 problem between the handlers and the event catalogue:\n"
        f"- shop.business.mail.extra.archive ({package}/business/mail/extra.py:4) handles "
        f"'order.placed' but never registered: {reason}"
    )


def test_imports_are_followed_through_modules_and_relative_imports(tmp_path):
    """A handler module imported by a module the package imports, relatively, registers."""
    init = "from . import wiring\n"
    wiring = "from .handlers import confirm\n"
    package = make_shop(tmp_path, business__mail__init=init, business__mail__wiring=wiring)
    assert problems(package) == []
    assert start(package) == "started"


def test_a_handler_outside_the_business_packages(tmp_path):
    """Start-up imports only business packages; a handler elsewhere never registers."""
    loose = SHOP["business/mail/handlers.py"]
    package = make_shop(tmp_path, hooks=loose)
    assert problems(package) == [
        "shop/hooks.py:4: handler shop.hooks.confirm never registers: start-up imports only the "
        "business packages (shop/business/<name>/) and what they import, never shop.hooks. "
        "Move it into a business package."
    ]


@pytest.mark.parametrize(
    ("signature", "static", "startup"),
    [
        (
            "*, order_id",
            NO_KWARGS,
            f"cannot register shop.business.mail.handlers.confirm for 'order.placed': {NO_KWARGS}",
        ),
        (
            "order_id, /, **kwargs",
            "it has the required positional-only parameter order_id. Give it a default, or make "
            "it a keyword parameter: emit passes the payload as keyword arguments only.",
            "cannot register shop.business.mail.handlers.confirm for 'order.placed': it has the "
            "required positional-only parameter order_id. Give it a default, or make it a "
            "keyword parameter: emit passes the payload as keyword arguments only.",
        ),
    ],
    ids=["no-kwargs", "positional-only"],
)
def test_a_handler_that_cannot_be_registered(tmp_path, signature, static, startup):
    """No ``**kwargs``, or a required positional-only parameter: refused by both checks."""
    handlers = SHOP["business/mail/handlers.py"].replace("*, order_id, **kwargs", signature)
    package = make_shop(tmp_path, business__mail__handlers=handlers)
    assert problems(package) == [
        "shop/business/mail/handlers.py:4: handler shop.business.mail.handlers.confirm cannot "
        f"be registered: {static}"
    ]
    assert start(package) == f"InvalidHandlerError: {startup}"


def test_a_handler_of_a_name_that_breaks_the_convention(tmp_path):
    """The message states the rule and the name written by it."""
    handlers = SHOP["business/mail/handlers.py"].replace('"order.placed"', '"Order.Placed"')
    package = make_shop(tmp_path, business__mail__handlers=handlers)
    assert problems(package) == [
        "shop/business/mail/handlers.py:4: handler shop.business.mail.handlers.confirm is "
        f"registered for invalid event name 'Order.Placed'. {CONVENTION} Did you mean "
        "'order.placed'?"
    ]
    assert start(package) == (
        "EventNameError: invalid event name 'Order.Placed'. "
        f"{CONVENTION} Did you mean 'order.placed'?"
    )


def test_a_declaration_of_a_name_that_breaks_the_convention(tmp_path):
    """declare() of a malformed name: the rule, at the declaration."""
    events = SHOP["business/orders/events.py"].replace('"order.placed"', '"orderPlaced"')
    package = make_shop(tmp_path, business__orders__events=events)
    assert (
        "shop/business/orders/events.py:3: declare() of invalid event name 'orderPlaced'. "
        f"{CONVENTION}"
    ) in problems(package)
    assert start(package) == (f"EventNameError: invalid event name 'orderPlaced'. {CONVENTION}")


def test_a_declaration_nothing_imports(tmp_path):
    """Declared in a module its package never imports: every emit would raise."""
    package = make_shop(tmp_path, business__orders__init="")
    assert problems(package) == [
        "shop/business/orders/events.py:3: 'order.placed' is declared in a module start-up "
        "never imports, so emit would raise UnknownEventError: start-up imports "
        "shop.business.orders (shop/business/orders/__init__.py), and nothing it imports "
        "imports shop.business.orders.events. Import it from shop/business/orders/__init__.py: "
        "`from shop.business.orders import events as events`."
    ]


EMIT_SOON = """\
    from app.core.deferred import BackgroundEmitter


    async def place(emitter: BackgroundEmitter, order_id):
        emitter.emit_soon("order.placed", order_id=order_id, total=9.5)
"""


def test_an_event_emitted_only_through_emit_soon_is_emitted(tmp_path):
    """``BackgroundEmitter.emit_soon`` counts as an emit of its event."""
    package = make_shop(tmp_path, business__orders__services=EMIT_SOON)
    found = scan(package)
    assert [(e.function, e.name, e.fields) for e in found.emits] == [
        ("emit_soon", "order.placed", ("order_id", "total"))
    ]
    assert problems(package) == []


@pytest.mark.parametrize(
    "call",
    [
        'emitter.emit_soon("order.placed", order_id=order_id, totl=9.5)',
        'self.app.state.emitter.emit_soon("order.placed", order_id=order_id, totl=9.5)',
        'BackgroundEmitter.emit_soon(emitter, "order.placed", order_id=order_id, totl=9.5)',
    ],
    ids=["method", "attribute-chain", "unbound"],
)
def test_a_misspelt_field_in_emit_soon(tmp_path, call):
    """emit_soon's payload is checked like emit's, however the emitter is reached."""
    services = EMIT_SOON.replace(
        'emitter.emit_soon("order.placed", order_id=order_id, total=9.5)', call
    )
    package = make_shop(tmp_path, business__orders__services=services)
    assert problems(package) == [
        "shop/business/orders/services.py:5: emit_soon of 'order.placed' is missing the "
        "required field total. Pass it, or make it optional at "
        "shop/business/orders/events.py:3.",
        "shop/business/orders/services.py:5: emit_soon of 'order.placed' passes the undeclared "
        "field totl. Remove it, or declare it at shop/business/orders/events.py:3.",
    ]


@pytest.mark.parametrize(
    ("imports", "call"),
    [
        ("from app.utils import emit as send", "send"),
        ("from app.utils import emit\nsend = emit", "send"),
        ("from app.core import events as ev", "ev.emit"),
        ("import app.core.events as registry", "registry.emit"),
        ("import app.utils", "app.utils.emit"),
        ("from app import utils", "utils.emit"),
    ],
    ids=["as-alias", "assigned-alias", "module-alias", "dotted-alias", "dotted", "module"],
)
def test_every_spelling_of_emit_is_checked(tmp_path, imports, call):
    """Aliases and attribute spellings are emits, checked against the declaration."""
    services = f"{imports}\n\n\nasync def place(order_id):\n    await {call}('order.placed')\n"
    package = make_shop(tmp_path, business__orders__services=services)
    (problem,) = problems(package)
    assert problem.startswith(
        f"shop/business/orders/services.py:{len(services.splitlines())}: emit of 'order.placed' "
        "is missing the required fields order_id, total."
    )


def test_an_emit_handed_on_uncalled_is_reported(tmp_path):
    """``start_soon(emit, ...)`` hides the event from the scan: it says so."""
    services = """\
        from app.utils import emit


        async def place(group, order_id):
            await emit("order.placed", order_id=order_id, total=9.5)
            group.start_soon(emit, "order.placed")
        """
    package = make_shop(tmp_path, business__orders__services=services)
    assert problems(package) == [
        "shop/business/orders/services.py:6: emit is passed on instead of called, so the scan "
        'cannot check what it emits. Call it here: emit("aggregate.verb", field=...).'
    ]


def test_an_event_declared_in_a_package_nobody_imported():
    """UnknownEventError says where the event is declared and what to import."""
    (declaration,) = [d for d in scan().declarations if d.name == "employee.created"]
    script = """
import anyio
from app.utils import emit
try:
    anyio.run(lambda: emit("employee.created", employee_id=1, department_id=2, created_by=3))
except LookupError as error:
    print(error)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout == (
        "event 'employee.created' is not declared. It is declared at "
        f"{declaration.site}, in {declaration.module}, which is not imported. Import "
        "app.business.hr, or call app.bootstrap.load_business_packages() first, as start-up "
        "does.\n"
    )


def test_registration_order_follows_the_imports(tmp_path):
    """Handlers are listed in the order imports run them, not in file order, as at run time."""
    handler = """\
        from app.utils import on


        @on("order.placed")
        async def {name}(**kwargs):
            return None
        """
    package = make_shop(
        tmp_path,
        business__mail__init="from shop.business.mail import zeta, handlers, alpha\n",
        business__mail__zeta=handler.format(name="zeta"),
        business__mail__alpha=handler.format(name="alpha"),
    )
    static = [h.label for h in scan(package).registrations]
    script = STARTUP.replace(
        'print("started")',
        "print(json.dumps([f'{h.__module__}.{h.__qualname__}' for h in handlers('order.placed')]))",
    ).replace("import sys", "import json, sys")
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert static == json.loads(result.stdout)
    assert static == [
        "shop.business.mail.zeta.zeta",
        "shop.business.mail.handlers.confirm",
        "shop.business.mail.alpha.alpha",
    ]
