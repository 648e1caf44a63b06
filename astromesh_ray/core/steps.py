"""The shared steps every pattern is made of.

A pattern decides *what* to do next; these do it, the same way for every pattern:

- ``ModelStep``: one routed model call for a role.  It counts against
  ``max_iterations``, streams tokens as ``Token`` events when the run streams,
  records usage and a ``model_call`` span (parenting the provider's own spans) and
  ends with a ``ModelCall`` event.
- ``tool_step`` / ``tool_round``: tool calls with the permission check, argument
  validation, a timeout, the result size cap and a ``tool_call`` span; results go
  into the transcript in call order.
- ``Delegation``: a sub-run of a peer agent (``delegate`` or ``handoff``).
- ``record_thought`` / ``record_answer``: the step records and their events.

Every wait is bounded by the run's deadline here, in the steps, so the time a
client takes to read events is never charged to the agent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from astromesh_ray.core.context import RunContext, TurnState
from astromesh_ray.core.events import (
    AnswerStep,
    Delegate,
    DelegateStep,
    Event,
    Handoff,
    HandoffStep,
    ModelCall,
    RunResult,
    Step,
    StepEvent,
    ThoughtStep,
    Token,
    ToolCallEvent,
    ToolResultEvent,
    ToolStep,
)
from astromesh_ray.core.messages import (
    Completion,
    CompletionChunk,
    CompletionRequest,
    Message,
    ToolCall,
    Usage,
)
from astromesh_ray.core.peers import sub_request
from astromesh_ray.core.tools.base import ToolContext, ToolResult
from astromesh_ray.core.trace import Span
from astromesh_ray.errors import RunError, RunTimeout, ToolError

T = TypeVar("T")


# -- limits --------------------------------------------------------------------------


def deadline_exceeded(ctx: RunContext) -> RunTimeout:
    """The error for a run whose deadline passed (the runtime adds the partial trace)."""
    request = ctx.request
    inherited = request.deadline_s is not None and request.parent_run_id is not None
    within = (
        f"the {request.deadline_s:.3g} s its caller had left"
        if inherited
        else "its timeout_seconds"
    )
    return RunTimeout(
        f"agent {ctx.agent!r} did not answer within {within}",
        hint="raise spec.orchestration.timeout_seconds or use a faster model",
        run_id=ctx.run_id,
    )


def iterations_exhausted(ctx: RunContext, state: TurnState) -> RunError:
    """The error for a run that spent ``max_iterations`` model calls without answering."""
    return RunError(
        f"no final answer after max_iterations={ctx.max_iterations} model calls",
        hint="raise spec.orchestration.max_iterations, or make the tools answer "
        "what the model needs",
        run_id=ctx.run_id,
        step=len(state.steps),
        reason="max_iterations",
    )


async def _bounded(ctx: RunContext, awaitable: Awaitable[T], when: float) -> T:
    """``awaitable`` under the deadline ``when``; past the run's own deadline the
    ``TimeoutError`` becomes ``RunTimeout``.  When one timeout already bounds the
    whole run, only a tighter ``when`` (a tool's own limit) needs one here."""
    if ctx.bounded and when >= ctx.deadline:
        return await awaitable
    try:
        async with asyncio.timeout_at(when):
            return await awaitable
    except TimeoutError:
        if ctx.remaining_s() <= 0:
            raise deadline_exceeded(ctx) from None
        raise


# -- the model step ---------------------------------------------------------------------


class ModelStep:
    """One routed model call of ``role``; iterate it for its events, then read
    ``completion``.

        step = ModelStep(ctx, state, role="reasoner")
        async for event in step:
            yield event
        message = step.message
    """

    __slots__ = ("_completion", "ctx", "iteration", "messages", "parent", "role", "state", "tools")

    def __init__(
        self,
        ctx: RunContext,
        state: TurnState,
        *,
        role: str,
        messages: Sequence[Message] | None = None,
        tools: bool = True,
        parent: str | None = None,
    ) -> None:
        self.ctx = ctx
        self.state = state
        self.role = role
        self.messages = messages  # default: the run's transcript
        self.tools = tools  # offer the run's tools
        self.parent = parent
        self.iteration = 0
        self._completion: Completion | None = None

    @property
    def completion(self) -> Completion:
        if self._completion is None:
            raise RuntimeError("ModelStep.completion read before the step ran")
        return self._completion

    @property
    def message(self) -> Message:
        """The assistant message the model answered."""
        return self.completion.message

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._run()

    async def _run(self) -> AsyncIterator[Event]:
        ctx, state = self.ctx, self.state
        if state.iterations >= ctx.max_iterations:
            raise iterations_exhausted(ctx, state)
        state.iterations += 1
        self.iteration = iteration = state.iterations
        provider = ctx.model(self.role)
        span = state.trace.start(
            "model_call", self.parent or ctx.trace.span_id, role=self.role, iteration=iteration
        )
        request = CompletionRequest(
            messages=list(state.messages if self.messages is None else self.messages),
            tools=ctx.tools.schemas if self.tools else [],
            parameters=dict(ctx.parameters),
            trace_parent=span.context.traceparent,
        )
        try:
            if ctx.stream_tokens:
                parts: list[CompletionChunk] = []
                stream = provider.stream(request)
                try:
                    while True:
                        try:
                            chunk = await _bounded(ctx, anext(stream), ctx.deadline)
                        except StopAsyncIteration:
                            break
                        parts.append(chunk)
                        for token in _tokens(chunk, iteration, self.role):
                            yield token
                finally:
                    closing = getattr(stream, "aclose", None)
                    if closing is not None:
                        await closing()
                completion = assemble(parts, provider.name)
            else:
                completion = await _bounded(ctx, provider.complete(request), ctx.deadline)
        except BaseException as exc:
            span.end(exc)
            raise
        state.usage = state.usage + completion.usage
        span.set(
            provider=completion.provider,
            model=completion.model,
            usage=completion.usage.to_dict(),
            finish_reason=completion.finish_reason,
        )
        if completion.route:
            span.set(route=list(completion.route))
        if completion.location:
            span.locate(completion.location)  # the call ran where the provider ran
        if completion.spans:
            state.trace.extend(completion.spans)
        span.end()
        self._completion = completion
        yield ModelCall(
            iteration=iteration,
            role=self.role,
            provider=completion.provider,
            model=completion.model,
            usage=completion.usage,
            finish_reason=completion.finish_reason,
            duration_ms=span.duration_ms or 0.0,
            span_id=span.span_id,
            where=dict(span.where),
        )


def _tokens(chunk: CompletionChunk, iteration: int, role: str) -> list[Token]:
    tokens = []
    if chunk.reasoning:
        tokens.append(
            Token(text=chunk.reasoning, channel="reasoning", iteration=iteration, role=role)
        )
    if chunk.text:
        tokens.append(Token(text=chunk.text, channel="answer", iteration=iteration, role=role))
    for delta in chunk.tool_args:
        tokens.append(
            Token(
                text=delta.arguments,
                channel="tool_args",
                iteration=iteration,
                role=role,
                tool_index=delta.index,
            )
        )
    return tokens


def assemble(chunks: list[CompletionChunk], provider: str) -> Completion:
    """One ``Completion`` from a stream: text concatenated, tool calls, usage, route,
    location and remote spans from the chunks."""
    text = "".join(c.text for c in chunks)
    calls = [call for c in chunks for call in c.tool_calls]
    usage = next((c.usage for c in reversed(chunks) if c.usage), None) or Usage(calls=1)
    finish = next((c.finish_reason for c in reversed(chunks) if c.finish_reason), "stop")
    model = next((c.model for c in chunks if c.model), "")
    location = next((c.location for c in reversed(chunks) if c.location), {})
    return Completion(
        route=[step for c in chunks for step in c.route],
        location=dict(location),
        spans=[span for c in chunks for span in c.spans],
        message=Message(role="assistant", content=text or None, tool_calls=calls),
        usage=usage,
        model=model,
        provider=provider,
        finish_reason=finish,
    )


# -- tool steps ---------------------------------------------------------------------------


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
    span.set(iteration=iteration)
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
        result = await _bounded(ctx, entry.toolset.call(call.name, arguments, tool_ctx), when)
    except ToolError as exc:
        spans = exc.details.get("sub_run_spans")
        if isinstance(spans, list):
            state.trace.extend(s for s in spans if isinstance(s, dict))
        return ToolResult(f"error: {exc}", is_error=True)
    except TimeoutError:  # the tool's own limit, the run still has time
        return ToolResult(
            f"error: tool {call.name!r} did not answer within {tool.timeout_s:g} s",
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


# -- step records ---------------------------------------------------------------------------


def record(state: TurnState, step: Step) -> StepEvent:
    """Add ``step`` to the run's steps; returns the event announcing it."""
    state.steps.append(step)
    return StepEvent(step=step)


def record_thought(state: TurnState, step: ModelStep) -> StepEvent | None:
    """Keep the text a model wrote alongside its tool calls, and the assistant
    message in the transcript (the tool results answer it)."""
    message = step.message
    state.messages.append(message)
    if not message.content:
        return None
    return record(
        state, ThoughtStep(iteration=step.iteration, role=step.role, content=message.content)
    )


def record_answer(state: TurnState, step: ModelStep) -> StepEvent:
    """The model's message is the run's answer: it ends the transcript."""
    message = step.message
    state.messages.append(message)
    state.answer = message.content or ""
    return record(state, AnswerStep(iteration=step.iteration, content=state.answer))


# -- sub-runs of peers ----------------------------------------------------------------------


class Delegation:
    """A sub-run of peer agent ``peer``; iterate it for its events, then read
    ``result``.

    ``handoff=True`` passes the conversation so far and control: the peer's answer
    becomes this run's answer.  Otherwise the peer answers ``query`` on its own and
    the caller decides what to do with the answer.
    """

    __slots__ = ("_result", "ctx", "handoff", "parent", "peer", "query", "reason", "state")

    def __init__(
        self,
        ctx: RunContext,
        state: TurnState,
        peer: str,
        query: str,
        *,
        handoff: bool = False,
        reason: str = "",
        parent: str | None = None,
    ) -> None:
        self.ctx = ctx
        self.state = state
        self.peer = peer
        self.query = query
        self.handoff = handoff
        self.reason = reason
        self.parent = parent
        self._result: RunResult | None = None

    @property
    def result(self) -> RunResult:
        if self._result is None:
            raise RuntimeError("Delegation.result read before the sub-run ended")
        return self._result

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._run()

    async def _run(self) -> AsyncIterator[Event]:
        ctx, state = self.ctx, self.state
        iteration = state.iterations
        name = "handoff" if self.handoff else "delegate"
        span = state.trace.start(name, self.parent or ctx.trace.span_id, peer=self.peer)
        try:
            peer = ctx.peer(self.peer)
            history = [m for m in state.messages if m.role != "system"] if self.handoff else None
            request = sub_request(
                target=self.peer,
                query=self.query,
                run_id=ctx.run_id,
                lineage=ctx.lineage,
                remaining_s=ctx.remaining_s(),
                trace_parent=span.context.traceparent,
                caller=ctx.caller,
                history=history,
                session_id=ctx.session_id if self.handoff else None,
            )
            if self.handoff:
                yield Handoff(
                    iteration=iteration,
                    from_agent=ctx.agent,
                    to_agent=self.peer,
                    reason=self.reason,
                )
            else:
                yield Delegate(
                    iteration=iteration, peer=self.peer, query=self.query, span_id=span.span_id
                )
            result = await _bounded(ctx, peer.run(request), ctx.deadline)
        except BaseException as exc:
            span.end(exc)
            raise
        span.set(sub_run_id=result.run_id)
        span.end()
        state.usage = state.usage + result.usage
        state.trace.extend(result.trace)
        self._result = result
        if self.handoff:
            state.messages.append(Message(role="assistant", content=result.answer))
            state.answer = result.answer
            yield record(
                state,
                HandoffStep(
                    iteration=iteration,
                    to_agent=self.peer,
                    reason=self.reason,
                    sub_run_id=result.run_id,
                ),
            )
        else:
            yield record(
                state,
                DelegateStep(
                    iteration=iteration,
                    peer=self.peer,
                    query=self.query,
                    sub_run_id=result.run_id,
                    answer=result.answer,
                ),
            )
