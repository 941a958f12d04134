"""The pytest plugin, tried as a new user would: a temp project with no conftest, run by pytest."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

ORDERS = """\
    from app.core.events import declare
    from app.utils import emit, on

    declare(
        "order.placed",
        source="orders",
        payload={"order_id": int, "total": float},
        purpose="an order was placed",
    )
    declare("order.noted", source="orders", payload={"order_id": int}, purpose="a note")
    declare("invoice.sent", source="orders", payload={"order_id": int}, purpose="invoiced")

    sent = []


    @on("order.placed")
    async def send_confirmation(*, order_id, **kwargs):
        if order_id < 0:
            raise ValueError(f"no order {order_id}")
        sent.append(order_id)
        await emit("order.noted", order_id=order_id)


    async def place_order(order_id, total=9.5):
        await emit("order.placed", order_id=order_id, total=total)
"""

BACKENDS = """\
    import pytest


    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(request):
        return request.param
"""


@pytest.fixture
def project(pytester):
    """A new project: one business module, ``orders.py``, and no conftest."""
    pytester.makepyfile(orders=textwrap.dedent(ORDERS))
    return pytester


def run(project, test_source, *args):
    project.makepyfile(test_orders=textwrap.dedent(BACKENDS) + textwrap.dedent(test_source))
    return project.runpytest_subprocess("-p", "no:cacheprovider", *args)


def test_recording_and_assertions_on_asyncio_and_trio(project):
    """The recorder sees every emit with its parent; helpers match partial payloads."""
    result = run(
        project,
        """
        import orders


        @pytest.mark.anyio
        async def test_anyio(events_recorder):
            await orders.place_order(1)
            placed = events_recorder.assert_emitted("order.placed", order_id=1)
            noted = events_recorder.assert_emitted_once("order.noted", order_id=1)
            assert noted.parent is placed and placed.parent is None
            assert events_recorder.names() == ["order.placed", "order.noted"]
            assert events_recorder.count("order.placed") == 1
            events_recorder.assert_not_emitted("order.placed", order_id=2)
            events_recorder.assert_not_emitted("invoice.sent")


        @pytest.mark.asyncio
        async def test_pytest_asyncio(events_recorder):
            await orders.place_order(2, total=1.0)
            events_recorder.assert_emitted("order.placed", order_id=2, total=1.0)


        def test_sync_through_anyio_run(events_recorder):
            import anyio

            anyio.run(orders.place_order, 3)
            events_recorder.assert_emitted("order.noted", order_id=3)
        """,
    )
    result.assert_outcomes(passed=4)


def test_a_failed_assertion_lists_what_was_emitted(project):
    """assert_emitted's message names the expectation and every emit, nested ones indented."""
    result = run(
        project,
        """
        import orders


        @pytest.mark.anyio
        async def test_it(events_recorder):
            await orders.place_order(1)
            events_recorder.assert_emitted("order.placed", order_id=2)


        def test_typo(events_recorder):
            events_recorder.assert_emitted("order.plcaed")
        """,
    )
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: expected an emit of 'order.placed' with order_id=2; emitted instead:",
            "*  0. order.placed(order_id=1, total=9.5)",
            "*  1.   order.noted(order_id=1)",
            "*cannot look for 'order.plcaed': it is not a declared event; "
            "did you mean 'order.placed'*?",
        ]
    )


def test_registrations_made_in_a_test_are_gone_after_it(project):
    """A handler registered in one test is gone in the next; import-time handlers stay."""
    result = run(
        project,
        """
        import orders
        from app.core.events import declare, handlers, on


        def test_registers():
            declare("order.extra", source="tests", payload={}, purpose="x")
            on("order.placed")(lambda **kwargs: None)
            assert len(handlers("order.placed")) == 2


        def test_sees_only_import_time_handlers():
            from app.core.catalogue import declared

            assert handlers("order.placed") == (orders.send_confirmation,)
            assert "order.extra" not in declared()


        def test_the_monkeypatch_pattern_still_works(monkeypatch):
            import collections
            from app.core import events

            monkeypatch.setattr(events, "_handlers", collections.defaultdict(events.Entries))
            assert handlers("order.placed") == ()
        """,
        "-p",
        "no:randomly",
    )
    result.assert_outcomes(passed=3)


def test_muting_by_marker_and_fixture(project):
    """Muted events are recorded and checked but no handler runs; patterns are checked."""
    result = run(
        project,
        """
        import orders
        from app.core.events import PayloadError


        @pytest.fixture(autouse=True)
        def no_mail_sent_yet():
            orders.sent.clear()


        @pytest.mark.anyio
        @pytest.mark.events_mute("order.placed")
        async def test_by_name(events_recorder):
            await orders.place_order(1)
            assert orders.sent == []
            assert events_recorder.assert_emitted("order.placed").muted
            events_recorder.assert_not_emitted("order.noted")


        @pytest.mark.anyio
        @pytest.mark.events_mute("order.*")
        async def test_by_aggregate(events_recorder):
            await orders.place_order(2)
            assert orders.sent == []


        @pytest.mark.anyio
        @pytest.mark.events_mute
        async def test_everything_and_still_checked():
            with pytest.raises(PayloadError, match="missing required"):
                await orders.emit("order.placed", order_id=1)
            assert orders.sent == []


        @pytest.mark.anyio
        async def test_by_fixture(events_mute, events_recorder):
            events_mute("invoice.*", "order.noted")
            await orders.place_order(3)
            assert orders.sent == [3]
            assert events_recorder.assert_emitted("order.noted").muted


        def test_bad_pattern(events_mute):
            with pytest.raises(ValueError, match="cannot mute 'order'"):
                events_mute("order")
        """,
    )
    result.assert_outcomes(passed=9)


def test_a_swallowed_handler_failure_fails_the_test(project):
    """The failure turns the test red with handler, event and traceback, on both backends."""
    result = run(
        project,
        """
        import orders


        @pytest.mark.anyio
        async def test_it():
            await orders.place_order(-1)
        """,
    )
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*1 event handler failure was swallowed by emit during the test call:",
            "*handler orders.send_confirmation failed on 'order.placed':",
            "*Traceback (most recent call last):",
            '*raise ValueError(f"no order {order_id}")',
            "*ValueError: no order -1",
            "*Expect a failure with `with expect_handler_failure(name, ErrorType):`*"
            "@pytest.mark.events_mute(name) or the events_mute fixture*",
        ]
    )


def test_expected_failures_pass_and_missing_ones_fail(project):
    """A context manager or marker expects a failure; an expectation not met fails."""
    result = run(
        project,
        """
        import orders


        @pytest.mark.anyio
        async def test_context_manager(expect_handler_failure):
            with expect_handler_failure("order.placed", ValueError) as failures:
                await orders.place_order(-1)
            assert [f.handler for f in failures] == ["orders.send_confirmation"]


        @pytest.mark.anyio
        @pytest.mark.events_expect_failure("order.placed", ValueError)
        async def test_marker():
            await orders.place_order(-2)


        @pytest.mark.anyio
        async def test_context_manager_unmet(expect_handler_failure):
            with expect_handler_failure("order.placed", ValueError):
                await orders.place_order(1)


        @pytest.mark.anyio
        @pytest.mark.events_expect_failure("order.placed", KeyError)
        async def test_marker_unmet():
            await orders.place_order(1)


        @pytest.mark.anyio
        @pytest.mark.events_lenient
        async def test_lenient():
            await orders.place_order(-3)
        """,
    )
    result.assert_outcomes(passed=6, failed=4)
    result.stdout.fnmatch_lines_random(
        [
            "*AssertionError: expected a handler of 'order.placed' to fail with ValueError; "
            "none did",
            "*expected a handler of 'order.placed' to fail with KeyError; none did",
        ]
    )


def test_strictness_can_be_turned_off_for_the_session(project):
    """``events_strict = false`` in the ini file lets swallowed failures pass."""
    project.makeini("[pytest]\nevents_strict = false\n")
    result = run(
        project,
        """
        import orders


        @pytest.mark.anyio
        async def test_it():
            await orders.place_order(-1)
        """,
    )
    result.assert_outcomes(passed=2)


def test_payload_types_are_checked_during_tests(project):
    """Type checks are on under the plugin: a wrong value type raises PayloadError."""
    result = run(
        project,
        """
        import orders
        from app.core.events import PayloadError


        @pytest.mark.anyio
        async def test_it():
            with pytest.raises(PayloadError, match=r"total=str \\(declared float\\)"):
                await orders.place_order(1, total="9.50")
        """,
    )
    result.assert_outcomes(passed=2)


def test_a_handler_on_an_undeclared_event_fails_the_run_at_collection(project):
    """verify() runs once after collection and reports every problem in one message."""
    project.makepyfile(
        listeners=textwrap.dedent(
            """\
            from app.utils import on


            @on("order.plcaed")
            async def typo(**kwargs):
                return None


            @on("order.placed")
            async def wrong(*, customer, **kwargs):
                return None
            """
        )
    )
    result = run(
        project,
        """
        import listeners
        import orders


        def test_never_runs():
            raise AssertionError("collection should have stopped the run")
        """,
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: event catalogue check failed after collection:",
            "2 problems between the handlers and the event catalogue:",
            "- listeners.typo * handles 'order.plcaed', which is not declared "
            "(did you mean 'order.placed'*)*",
            "- listeners.wrong * takes 'customer', which is not a field of 'order.placed' "
            "(fields: order_id, total).",
        ]
    )


def test_fixtures_and_markers_are_listed(project):
    """``pytest --fixtures`` and ``--markers`` show the plugin's with one-line docs."""
    fixtures = project.runpytest_subprocess("--fixtures")
    fixtures.stdout.fnmatch_lines_random(
        [
            "events_isolated -- *",
            "*Undo every registration, declaration and tracing setting made by or during the test",
            "events_recorder -- *",
            "events_mute -- *",
            "expect_handler_failure -- *",
        ]
    )
    markers = project.runpytest_subprocess("--markers")
    markers.stdout.fnmatch_lines_random(
        [
            "@pytest.mark.events_mute(*patterns): *",
            "@pytest.mark.events_expect_failure(name, error=Exception): *",
            "@pytest.mark.events_lenient: *",
        ]
    )


def test_the_readme_example_passes(pytester):
    """The complete example test in README's testing section runs green as written."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Testing code that uses events", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    pytester.makepyfile(test_readme=example)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
