"""pytest plugin: a test that leaves ``ScriptedProvider`` steps unconsumed fails.

Enable it in a ``conftest.py`` at the top of your tests::

    pytest_plugins = ["astromesh_ray.testing.pytest_plugin"]

Every ``ScriptedProvider`` created during a test (in the test or in its
function-scoped fixtures) is tracked; after the test, any step nobody asked for fails
it at teardown, naming the provider and the steps, as ``assert_consumed`` does.  A
test whose own body already failed is not reported twice.

Leaving steps on purpose is explicit: ``provider.discard_remaining()`` (which returns
them, to assert on), or for a whole test
``@pytest.mark.allow_unconsumed_steps(reason="...")``.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

from astromesh_ray.testing.scripted import track_scripted

MARKER = "allow_unconsumed_steps"

_call_report = pytest.StashKey[pytest.TestReport]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(reason): the test leaves ScriptedProvider steps unconsumed on purpose",
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_call_report] = report
    return report


@pytest.fixture(autouse=True)
def _scripted_steps_consumed(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if a ``ScriptedProvider`` created during it has steps left."""
    marker = request.node.get_closest_marker(MARKER)
    if marker is not None and not (marker.kwargs.get("reason") or marker.args):
        pytest.fail(f"@pytest.mark.{MARKER} needs a reason", pytrace=False)
    with track_scripted() as tracker:
        yield
    outcome = request.node.stash.get(_call_report, None)
    if marker is not None or outcome is None or not outcome.passed:
        return  # opted out, or the test already failed (or was skipped)
    report = tracker.leftover_report()
    if report:
        pytest.fail(report, pytrace=False)
