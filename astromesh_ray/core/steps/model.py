"""``ModelStep``: one routed model call for a role."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from astromesh_ray.core.context import RunContext, TurnState
from astromesh_ray.core.events import Event, GuardrailEvent, ModelCall, Token
from astromesh_ray.core.messages import (
    Completion,
    CompletionChunk,
    CompletionRequest,
    Message,
    Usage,
)
from astromesh_ray.core.steps.limits import bounded, iterations_exhausted
from astromesh_ray.core.streams import closing_stream


class ModelStep:
    """One routed model call of ``role``; iterate it for its events, then read
    ``completion``.

        step = ModelStep(ctx, state, role="reasoner")
        async for event in step:
            yield event
        message = step.message
    """

    __slots__ = (
        "_completion",
        "ctx",
        "iteration",
        "messages",
        "output_schema",
        "parent",
        "role",
        "state",
        "stream",
        "tools",
    )

    def __init__(
        self,
        ctx: RunContext,
        state: TurnState,
        *,
        role: str,
        messages: Sequence[Message] | None = None,
        tools: bool = True,
        parent: str | None = None,
        output_schema: Mapping[str, Any] | None = None,
        stream: bool | None = None,
    ) -> None:
        self.ctx = ctx
        self.state = state
        self.role = role
        self.messages = messages  # default: the run's transcript
        self.tools = tools  # offer the run's tools
        self.parent = parent
        # The JSON Schema the answer must match (constrained decoding where the
        # provider has it; the caller validates).
        self.output_schema = output_schema
        # Stream tokens (default: when the run streams); a pattern's inner steps
        # (a planner, a splitter) do not stream: only the final speaker does.
        self.stream = ctx.stream_tokens if stream is None else stream and ctx.stream_tokens
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
            response_schema=dict(self.output_schema) if self.output_schema else None,
        )
        hold = None
        if ctx.budget is not None:  # cost caps: an estimate before the call
            try:
                hold = await ctx.budget.before(request, provider)
            except BaseException as exc:
                span.end(exc)
                raise
            request = hold.request  # max_tokens lowered to what is left
            for warning in hold.warnings:
                yield budget_warning(ctx, state, warning)
        try:
            if self.stream:
                parts: list[CompletionChunk] = []
                async with closing_stream(provider.stream(request)) as stream:
                    # If the run is abandoned while this step waits at `yield` (the
                    # reader went away), the runtime closes the stream: a pattern
                    # suspended at its own `yield` never resumes to do it.
                    state.on_abandon(stream)
                    try:
                        while True:
                            try:
                                chunk = await bounded(ctx, anext(stream), ctx.deadline)
                            except StopAsyncIteration:
                                break
                            parts.append(chunk)
                            for token in _tokens(chunk, iteration, self.role):
                                yield token
                    finally:
                        state.forget(stream)
                completion = assemble(parts, provider.name)
            else:
                completion = await bounded(ctx, provider.complete(request), ctx.deadline)
        except BaseException as exc:
            span.end(exc)
            if hold is not None:  # nothing was spent that the provider reported
                await _release(ctx, hold)
            raise
        state.usage = state.usage + completion.usage
        if hold is not None and ctx.budget is not None:  # and the actual usage after it
            try:
                warnings = await ctx.budget.after(hold, completion.usage)
            except BaseException as exc:
                span.end(exc)
                raise
            for warning in warnings:
                yield budget_warning(ctx, state, warning)
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
            task=ctx.task,
        )


def budget_warning(ctx: RunContext, state: TurnState, warning: str) -> GuardrailEvent:
    """A cost cap with action warn was passed: recorded, the run goes on."""
    from astromesh_ray.core.guardrails.chain import note

    return note(ctx, state, "cost_limit", "output", "warn", warning)


async def _release(ctx: RunContext, hold: Any) -> None:
    """Settle a failed call's hold at zero (its estimate is not spend)."""
    assert ctx.budget is not None
    with contextlib.suppress(Exception):  # the call's own error is the one to report
        await ctx.budget.after(hold, Usage())


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
