"""What the gateway adds to each request: its span (the first of the returned
trace), the SSE framing of a run's events, and the checks and shapes of the paused-run
routes' bodies."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

from astromesh_ray.core.events import ErrorEvent, event_to_dict
from astromesh_ray.core.streams import closing_stream
from astromesh_ray.core.trace import Span, Trace, TraceContext, new_trace_id
from astromesh_ray.errors import AstromeshError, InvalidRequest
from astromesh_ray.serve.http import RUN_ID, DecisionBody, ToolResultBody
from astromesh_ray.serve.outcome import unwrap


async def sse_events(
    first: dict[str, Any], rest: AsyncIterator[Any], span: Span
) -> AsyncIterator[str]:
    # Closing `rest` when the client goes away (Starlette stops iterating) cancels the
    # run in the agent replica, and with it the model call it was streaming.
    async with closing_stream(rest) as outcomes:
        yield sse(first)
        try:
            async for outcome in outcomes:
                event = unwrap(outcome)
                if event.get("type") == "run_finished":
                    span.end()
                    prepend(event["result"], span)
                yield sse(event)
        except AstromeshError as exc:
            span.end(exc.message)
            prepend(exc.details, span)
            yield sse(event_to_dict(ErrorEvent.from_error(exc)))


def sse(event: dict[str, Any]) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"


def prepend(body: dict[str, Any], span: Span) -> None:
    """Put the gateway's span first in a result's (or an error's) ``trace``."""
    trace = body.get("trace")
    if isinstance(trace, list):
        trace.insert(0, span.to_dict())


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
