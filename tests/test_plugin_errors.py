"""The pytest plugin reports a registration or import error once, cleanly: no INTERNALERROR."""

from __future__ import annotations

import textwrap

import pytest

HANDLERS = """\
    from app.utils import on


    @on("order.placed")
    async def confirm(*, order_id, **kwargs):
        return None
    """

PACKAGE = {
    "shop/__init__.py": "",
    "shop/business/__init__.py": "",
    "shop/business/orders/__init__.py": "from shop.business.orders import events as events\n",
    "shop/business/orders/events.py": """\
        from app.core.events import declare

        declare("order.placed", source="orders", payload={"order_id": int}, purpose="placed")
        """,
    "shop/business/mail/__init__.py": "from shop.business.mail import handlers as handlers\n",
    "shop/business/mail/handlers.py": HANDLERS,
    "test_shop.py": "def test_runs():\n    pass\n",
}
"""A project whose business packages the plugin loads (``events_import``) before collection."""

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"


@pytest.fixture
def shop(pytester):
    """The project, with ``events_import`` naming its two business packages."""
    for relative, text in PACKAGE.items():
        path = pytester.path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    pytester.makeini(f"{INI}events_import =\n    shop.business.orders\n    shop.business.mail\n")
    return pytester


def run(project, handlers=None):
    """Run the project's tests in a subprocess, with ``handlers`` as mail's handlers module."""
    if handlers is not None:
        (project.path / "shop/business/mail/handlers.py").write_text(textwrap.dedent(handlers))
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    return result


def test_the_project_runs(shop):
    """Without a mistake the session runs."""
    run(shop).assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        (
            "*, order_id, **kwargs",
            "*, order_id",
            "InvalidHandlerError: cannot register shop.business.mail.handlers.confirm for "
            "'order.placed': it does not take **kwargs. Add **kwargs (or **_) to its parameters: *",
        ),
        (
            '"order.placed"',
            '"Order.Placed"',
            "EventNameError: invalid event name 'Order.Placed'. Rename it to follow the "
            "convention: an event name is '<aggregate>.<verb>': *. Did you mean 'order.placed'?",
        ),
    ],
    ids=["no-kwargs", "bad-name"],
)
def test_a_registration_error_at_import_is_one_clean_report(shop, old, new, error):
    """The plugin names the entry, the place and the error, and the session stops."""
    result = run(shop, HANDLERS.replace(old, new))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: events_import 'shop.business.mail' failed at shop/business/mail/handlers.py:4:",
            error,
            "Fix that code and run again: the tests cannot run until the modules that register "
            "handlers import cleanly.",
        ]
    )
    assert "Traceback" not in result.stderr.str()


def test_an_import_error_is_one_clean_report(shop):
    """A module that cannot be found is reported the same way, without a place."""
    shop.makeini(f"{INI}events_import = shop.business.nowhere\n")
    result = run(shop)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: events_import 'shop.business.nowhere' failed:",
            "ModuleNotFoundError: No module named 'shop.business.nowhere'",
        ]
    )


def test_a_handler_that_never_registers_stops_the_run_after_collection(shop):
    """verify() after collection compares the registrations with the source."""
    (shop.path / "shop/business/mail/extra.py").write_text(
        textwrap.dedent(HANDLERS.replace("confirm", "archive"))
    )
    result = run(shop)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: event catalogue check failed after collection:",
            "1 problem between the handlers and the event catalogue:",
            "- shop.business.mail.extra.archive (*/shop/business/mail/extra.py:4) handles "
            "'order.placed' but never registered: start-up imports shop.business.mail "
            "(shop/business/mail/__init__.py), and nothing it imports imports "
            "shop.business.mail.extra. Import it from shop/business/mail/__init__.py: "
            "`from shop.business.mail import extra as extra`.",
        ]
    )


def test_a_test_module_importing_a_broken_handler_is_a_collection_error(shop):
    """Outside events_import, the error stops collection of that module, with its message."""
    shop.makeini(INI)
    (shop.path / "test_shop.py").write_text("import shop.business.mail\n")
    result = run(shop, HANDLERS.replace("*, order_id, **kwargs", "*, order_id"))
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["E   *InvalidHandlerError: cannot register * it does not take **kwargs. *"]
    )
