"""What the gateway adds to each request: its span (the first of the returned
trace), and the checks and shapes of the paused-run routes' bodies."""

from __future__ import annotations

import re
from typing import Any

from astromesh_ray.core.trace import Span, Trace, TraceContext, new_trace_id
from astromesh_ray.errors import InvalidRequest
from astromesh_ray.serve.http import RUN_ID, DecisionBody, ToolResultBody


def check_run_id(run_id: str) -> None:
    if not re.fullmatch(RUN_ID, run_id):
        raise InvalidRequest(
            f"invalid run id {run_id[:40]!r}", hint="a run id is 32 hex digits", field="run_id"
        )


def results_of(results: list[ToolResultBody]) -> list[tuple[str, str, bool]]:
    return [(r.tool_call_id, r.text(), r.is_error) for r in results]


def decision_of(action: str, body: DecisionBody | None) -> dict[str, Any]:
    body = body or DecisionBody()
    return {
        "action": action,
        "call_ids": body.tool_call_ids,
        "reason": body.reason,
        "results": results_of(body.tool_results),
        "each": [(d.tool_call_id, d.action, d.reason or "") for d in body.decisions],
    }


def gateway_span(
    traceparent: str | None, name: str, where: dict[str, str], trace_id: str | None = None
) -> Span:
    """The gateway's span of one request: continues the client's trace if it sent a
    valid ``traceparent``, else ``trace_id``'s (a paused run's), else a new one."""
    parent = TraceContext.parse(traceparent)
    trace = Trace(
        parent.trace_id if parent else trace_id or new_trace_id(),
        where,
        sampled=parent.sampled if parent else True,
    )
    return trace.start("gateway", parent.span_id if parent else None, agent=name)
