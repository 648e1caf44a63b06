"""Errors as values: an internal error's location goes to the log, not the client."""

from __future__ import annotations

import logging

import pytest

from astromesh_ray.errors import AstromeshError, RunError, ToolError
from astromesh_ray.serve.outcome import failure, unwrap


def _boom() -> None:
    raise ValueError("bad value 42")


def test_internal_error_keeps_type_and_message_but_not_the_server_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    try:
        _boom()
    except ValueError as exc:
        with caplog.at_level(logging.ERROR, logger="astromesh"):
            outcome = failure(exc)
    error = outcome["error"]
    assert error["code"] == "run_error"
    assert error["message"] == "internal error: ValueError: bad value 42"
    assert __file__ not in str(outcome) and ".py" not in str(outcome)
    # The server log has where it happened.
    logged = [r for r in caplog.records if r.name == "astromesh"]
    assert len(logged) == 1 and f"{__file__}:" in logged[0].getMessage()
    assert logged[0].exc_info is not None
    with pytest.raises(RunError, match="ValueError: bad value 42"):
        unwrap(outcome)


def test_our_errors_cross_unchanged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="astromesh"):
        outcome = failure(ToolError("no such tool", hint="check the name", tool="x"))
    assert not caplog.records
    with pytest.raises(ToolError) as info:
        unwrap(outcome)
    assert isinstance(info.value, AstromeshError) and info.value.details["tool"] == "x"
