"""Tool calls: one (``tool_step``) or those of one answer (``tool_round``).

A call to a ``client`` tool, or to one that ``requires_approval``, needs the
caller: ``tool_round`` runs the other calls of the answer, then raises
``RunPaused`` with the pending ones; the runtime saves the run and answers
``requires_action``.  When the caller answers, ``complete_pending`` records the
client results, runs the approved calls (``approved=True``) and the rejected ones
read as errors, and the pattern goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from astromesh_ray.core.context import RunContext, TurnState
from astromesh_ray.core.events import (
    Event,
    PendingToolCall,
    ToolCallEvent,
    ToolResultEvent,
    ToolStep,
)
from astromesh_ray.core.messages import Message, ToolCall
from astromesh_ray.core.steps.limits import LimitReached, bounded
from astromesh_ray.core.steps.records import record
from astromesh_ray.core.tools.base import ToolContext, ToolResult
from astromesh_ray.core.tools.index import ToolEntry
from astromesh_ray.core.trace import Span
from astromesh_ray.errors import ToolError

T = TypeVar("T")


class HandedOff(Exception):  # control flow, not an error
    """A swarm member called a handoff tool: its turn ends and control passes to
    ``to_agent`` (raised by ``tool_round`` once the round is recorded)."""

    def __init__(self, to_agent: str, reason: str) -> None:
        super().__init__(f"handed off to {to_agent}")
        self.to_agent = to_agent
        self.reason = reason


class RunPaused(Exception):  # control flow, not an error
    """The run waits on the caller for ``pending`` (raised by ``tool_round``, caught by
    the runtime, which saves the run)."""

    def __init__(self, pending: Sequence[PendingToolCall]) -> None:
        super().__init__(f"waiting on {len(pending)} tool call(s)")
        self.pending = list(pending)


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
    approved: bool = False,
    iterations_left: int | None = None,
) -> ToolOutcome:
    """Run one tool call.  Whatever the tool's fault (unknown or refused tool, bad
    arguments, a ``ToolError``, its own timeout) becomes an error result the model
    reads; the run's deadline passing is a ``RunTimeout``; anything else is a bug
    and propagates.  ``approved``: the caller approved this call (its tool
    ``requires_approval``); ``iterations_left``: the model calls a sub-run may spend
    (default: what the run has left but one, for the caller to read the result;
    ``run_calls`` shares that between concurrent sub-runs)."""
    span = state.trace.start("tool_call", parent or ctx.trace.span_id, tool=call.name)
    span.set(iteration=iteration, call_id=call.id)
    if approved:
        span.set(approved=True)
    try:
        result = await _run_tool(ctx, state, call, span, approved, iterations_left)
    except BaseException as exc:
        span.end(exc)
        raise
    if result.is_error:
        span.end(result.content[:300])
    else:
        span.end()
    if result.usage is not None:
        state.usage = state.usage + result.usage
    state.iterations += result.iterations
    if result.spans:
        state.trace.extend(result.spans)
    return ToolOutcome(call, result, span.duration_ms or 0.0)


def _checked(ctx: RunContext, call: ToolCall) -> tuple[ToolEntry, dict[str, Any]] | ToolResult:
    """The call's tool entry and validated arguments, or the error the model reads
    (an unknown or refused tool, arguments that are not an object or do not match)."""
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
    try:
        return entry, entry.tool.validate(call.arguments)
    except ToolError as exc:
        return ToolResult(f"error: {exc}", is_error=True)


def pending_kind(ctx: RunContext, call: ToolCall) -> str | None:
    """``client`` or ``approval`` when ``call`` needs the caller, else ``None`` (a
    call that will fail its checks does not: the model reads why at once; only the
    calls of such tools are validated here, the others are in their tool step)."""
    entry = ctx.tools.get(call.name)
    if entry is None or not (entry.tool.client or entry.tool.requires_approval):
        return None
    if isinstance(_checked(ctx, call), ToolResult):
        return None
    return "client" if entry.tool.client else "approval"


async def _run_tool(
    ctx: RunContext,
    state: TurnState,
    call: ToolCall,
    span: Span,
    approved: bool,
    iterations_left: int | None,
) -> ToolResult:
    checked = _checked(ctx, call)
    if isinstance(checked, ToolResult):
        return checked
    entry, arguments = checked
    tool = entry.tool
    if tool.client or (tool.requires_approval and not approved):
        # Only tool_round's pending calls come here with these; reaching it otherwise
        # (a pattern calling tool_step directly) must not run an unapproved call.
        return ToolResult(
            f"error: tool {call.name!r} needs the caller ("
            + ("it runs client-side" if tool.client else "it requires approval")
            + ") and cannot be called here",
            is_error=True,
        )
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
        models=ctx.models,
        iterations_left=sub_run_share(ctx, state) if iterations_left is None else iterations_left,
    )
    try:
        result = await bounded(ctx, entry.toolset.call(call.name, arguments, tool_ctx), when)
    except ToolError as exc:
        spans = exc.details.get("sub_run_spans")
        if isinstance(spans, list):
            state.trace.extend(s for s in spans if isinstance(s, dict))
        # A failed sub-run's model calls count too (max_iterations across sub-runs).
        state.iterations += int(exc.details.get("sub_run_iterations") or 0)
        return ToolResult(f"error: {exc}", is_error=True)
    except LimitReached:  # the tool's own limit, the run still has time
        return ToolResult(
            f"error: tool {call.name!r} did not answer within {tool.timeout_s or 0:g} s",
            is_error=True,
        )
    cut = cap_result(result, tool.max_result_chars)
    if cut:
        span.set(truncated_chars=cut)
    return result


def cap_result(result: ToolResult, limit: int) -> int:
    """Cut ``result.content`` to ``limit`` characters, with a marker saying how many
    more there were; returns that number (0: nothing cut)."""
    if len(result.content) <= limit:
        return 0
    cut = len(result.content) - limit
    result.content = result.content[:limit] + f"\n[truncated: {cut} more characters]"
    return cut


async def tool_round(
    ctx: RunContext,
    state: TurnState,
    calls: Sequence[ToolCall],
    *,
    iteration: int,
    parent: str | None = None,
) -> AsyncIterator[Event]:
    """The tool calls of one model answer: announced, run concurrently, and recorded
    (transcript and steps) in call order whatever order they finish in.  Calls that
    need the caller (client tools, approvals) are not run: once the others are
    recorded, ``RunPaused`` carries them to the runtime."""
    for call in calls:
        yield ToolCallEvent(
            iteration=iteration,
            id=call.id,
            name=call.name,
            arguments=call.arguments,
            task=ctx.task,
        )
    pending = []
    ready = []
    for call in calls:
        kind = pending_kind(ctx, call)
        if kind is None:
            ready.append(call)
        else:
            pending.append(
                PendingToolCall(
                    id=call.id,
                    name=call.name,
                    arguments=call.arguments,
                    kind="client" if kind == "client" else "approval",
                    iteration=iteration,
                )
            )
    handoff: list[ToolOutcome] = []
    async for event in run_calls(
        ctx, state, ready, iteration=iteration, parent=parent, handoff=handoff
    ):
        yield event
    if pending:
        raise RunPaused(pending)
    if handoff:
        raise HandedOff(str(handoff[0].result.handoff), str(handoff[0].result.data or ""))


async def run_calls(
    ctx: RunContext,
    state: TurnState,
    calls: Sequence[ToolCall],
    *,
    iteration: int,
    parent: str | None = None,
    handoff: list[ToolOutcome] | None = None,
) -> AsyncIterator[Event]:
    """Run ``calls`` concurrently and record them in call order; the calls that
    handed control off are added to ``handoff``."""
    if not calls:
        return
    if len(calls) == 1:  # no task to spawn for the common case
        outcomes = [await tool_step(ctx, state, calls[0], iteration=iteration, parent=parent)]
    else:
        # Concurrent sub-runs share the model calls left (each would otherwise be
        # offered all of them, and together spend more than max_iterations).
        sub_runs = [c for c in calls if _is_sub_run(ctx, c)]
        each = sub_run_share(ctx, state, len(sub_runs)) if len(sub_runs) > 1 else None
        outcomes = await gather_all(
            [
                tool_step(
                    ctx,
                    state,
                    c,
                    iteration=iteration,
                    parent=parent,
                    iterations_left=each if c in sub_runs else None,
                )
                for c in calls
            ]
        )
    for outcome in outcomes:
        if outcome.result.handoff is not None and handoff is not None:
            if handoff:  # one handoff per answer: the first passes control
                outcome.result = ToolResult(
                    f"error: control already passed to {handoff[0].result.handoff}; this "
                    "handoff was not made",
                    is_error=True,
                )
            else:
                handoff.append(outcome)
        for event in record_outcome(state, outcome, iteration, task=ctx.task):
            yield event


def sub_run_share(ctx: RunContext, state: TurnState, count: int = 1, keep: int = 1) -> int:
    """The model calls each of ``count`` concurrent sub-runs may spend: what the run
    has left, less ``keep`` for the caller to read their results, shared."""
    return max(ctx.iterations_left(state) - keep, 0) // max(count, 1)


def _is_sub_run(ctx: RunContext, call: ToolCall) -> bool:
    entry = ctx.tools.get(call.name)
    return entry is not None and entry.tool.sub_run


def record_outcome(
    state: TurnState, outcome: ToolOutcome, iteration: int, *, task: str | None = None
) -> list[Event]:
    """Put a finished call in the transcript and the steps; its events."""
    call, result = outcome.call, outcome.result
    state.messages.append(
        Message(role="tool", content=result.content, tool_call_id=call.id, name=call.name)
    )
    return [
        ToolResultEvent(
            iteration=iteration,
            id=call.id,
            name=call.name,
            content=result.content,
            is_error=result.is_error,
            duration_ms=outcome.duration_ms,
            sub_run_id=result.sub_run_id,
            task=task,
        ),
        record(
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
                task=task,
            ),
        ),
    ]


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
