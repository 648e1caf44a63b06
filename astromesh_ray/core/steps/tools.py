"""Tool calls: one (``tool_step``) or those of one answer (``tool_round``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from astromesh_ray.core.context import RunContext, TurnState
from astromesh_ray.core.events import Event, ToolCallEvent, ToolResultEvent, ToolStep
from astromesh_ray.core.messages import Message, ToolCall
from astromesh_ray.core.steps.limits import LimitReached, bounded
from astromesh_ray.core.steps.records import record
from astromesh_ray.core.tools.base import ToolContext, ToolResult
from astromesh_ray.core.trace import Span
from astromesh_ray.errors import ToolError

T = TypeVar("T")


@dataclass(slots=True)
class ToolOutcome:
    """A finished tool call."""

    call: ToolCall
    result: ToolResult
    duration_ms: float


async def tool_step(
    ctx: RunContext,
    state: TurnState,
    call: ToolCall,
    *,
    iteration: int,
    parent: str | None = None,
) -> ToolOutcome:
    """Run one tool call.  Whatever the tool's fault (unknown or refused tool, bad
    arguments, a ``ToolError``, its own timeout) becomes an error result the model
    reads; the run's deadline passing is a ``RunTimeout``; anything else is a bug
    and propagates."""
    span = state.trace.start("tool_call", parent or ctx.trace.span_id, tool=call.name)
    span.set(iteration=iteration, call_id=call.id)
    try:
        result = await _run_tool(ctx, state, call, span)
    except BaseException as exc:
        span.end(exc)
        raise
    if result.is_error:
        span.end(result.content[:300])
    else:
        span.end()
    if result.usage is not None:
        state.usage = state.usage + result.usage
    if result.spans:
        state.trace.extend(result.spans)
    return ToolOutcome(call, result, span.duration_ms or 0.0)


async def _run_tool(ctx: RunContext, state: TurnState, call: ToolCall, span: Span) -> ToolResult:
    entry = ctx.tools.get(call.name)
    if entry is None:
        return ToolResult(ctx.tools.missing(call.name), is_error=True)
    if call.invalid_arguments is not None:
        return ToolResult(
            f"error: the arguments of this call to {call.name!r} were not a JSON object: "
            f"{call.invalid_arguments[:200]!r}; call it again with a JSON object matching "
            "its parameters",
            is_error=True,
        )
    tool = entry.tool
    try:
        arguments = tool.validate(call.arguments)
    except ToolError as exc:
        return ToolResult(f"error: {exc}", is_error=True)
    when = ctx.deadline
    if tool.timeout_s is not None:
        when = min(when, asyncio.get_running_loop().time() + tool.timeout_s)
    tool_ctx = ToolContext(
        run_id=ctx.run_id,
        agent=ctx.agent,
        session_id=ctx.session_id,
        caller=ctx.caller,
        deadline=ctx.deadline,
        trace_parent=span.context.traceparent,
        lineage=ctx.lineage,
    )
    try:
        result = await bounded(ctx, entry.toolset.call(call.name, arguments, tool_ctx), when)
    except ToolError as exc:
        spans = exc.details.get("sub_run_spans")
        if isinstance(spans, list):
            state.trace.extend(s for s in spans if isinstance(s, dict))
        return ToolResult(f"error: {exc}", is_error=True)
    except LimitReached:  # the tool's own limit, the run still has time
        return ToolResult(
            f"error: tool {call.name!r} did not answer within {tool.timeout_s or 0:g} s",
            is_error=True,
        )
    if len(result.content) > tool.max_result_chars:
        cut = len(result.content) - tool.max_result_chars
        result.content = (
            result.content[: tool.max_result_chars] + f"\n[truncated: {cut} more characters]"
        )
        span.set(truncated_chars=cut)
    return result


async def tool_round(
    ctx: RunContext,
    state: TurnState,
    calls: Sequence[ToolCall],
    *,
    iteration: int,
    parent: str | None = None,
) -> AsyncIterator[Event]:
    """The tool calls of one model answer: announced, run concurrently, and recorded
    (transcript and steps) in call order whatever order they finish in."""
    for call in calls:
        yield ToolCallEvent(
            iteration=iteration, id=call.id, name=call.name, arguments=call.arguments
        )
    if len(calls) == 1:  # no task to spawn for the common case
        outcomes = [await tool_step(ctx, state, calls[0], iteration=iteration, parent=parent)]
    else:
        outcomes = await gather_all(
            [tool_step(ctx, state, c, iteration=iteration, parent=parent) for c in calls]
        )
    for outcome in outcomes:
        call, result = outcome.call, outcome.result
        state.messages.append(
            Message(role="tool", content=result.content, tool_call_id=call.id, name=call.name)
        )
        yield ToolResultEvent(
            iteration=iteration,
            id=call.id,
            name=call.name,
            content=result.content,
            is_error=result.is_error,
            duration_ms=outcome.duration_ms,
            sub_run_id=result.sub_run_id,
        )
        yield record(
            state,
            ToolStep(
                iteration=iteration,
                id=call.id,
                tool=call.name,
                arguments=call.arguments,
                result=result.content,
                is_error=result.is_error,
                duration_ms=outcome.duration_ms,
                sub_run_id=result.sub_run_id,
            ),
        )


async def gather_all(awaitables: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run concurrently; when one fails, cancel the others, then raise its error."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
