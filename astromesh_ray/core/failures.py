"""What a failed run's error carries: its run id, steps and partial trace (what a
user debugs from), and the error a bug in a run becomes."""

from __future__ import annotations

from typing import Any

from astromesh_ray.core.context import TurnState
from astromesh_ray.errors import AstromeshError, RunError


def internal_error(agent: str, exc: Exception, run_id: str, state: TurnState) -> RunError:
    """A bug in agent ``agent``'s run, as a ``RunError`` naming it."""
    error = RunError(
        f"internal error in agent {agent!r}: {type(exc).__name__}: {exc}",
        run_id=run_id,
        step=len(state.steps),
    )
    error.__cause__ = exc
    return error


def attach_run(error: AstromeshError, run_id: str, state: TurnState) -> None:
    """End the run span with ``error`` and give the error this run's id, steps and
    partial trace: what a user debugs from.  An error that came up from a sub-run
    (another agent) carries that run's details: its spans join this run's trace (one
    trace id) and its run id moves to ``sub_run_id``."""
    details = error.details
    child_run = details.get("run_id")
    spent = state.iterations
    if child_run is not None and child_run != run_id:
        spent += int(details.get("iterations") or 0)  # the failed sub-run's calls count
        seen = {span.span_id for span in state.trace.spans}
        child_trace = details.get("trace")
        if isinstance(child_trace, list):
            state.trace.extend(
                s for s in child_trace if isinstance(s, dict) and s.get("span_id") not in seen
            )
        details.setdefault("sub_run_id", child_run)
    state.trace.spans[0].end(error.message)
    details["run_id"] = run_id
    details["iterations"] = spent  # model calls spent (a calling agent counts them)
    details["trace_id"] = state.trace.trace_id
    details["steps"] = [step_dict(s) for s in state.steps]
    details["trace"] = [s.to_dict() for s in state.trace.spans]


def step_dict(step: Any) -> dict[str, Any]:
    from astromesh_ray.core.events import StepEvent, event_to_dict

    data: dict[str, Any] = event_to_dict(StepEvent(step=step))["step"]
    return data
