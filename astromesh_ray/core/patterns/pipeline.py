"""Pipeline: the stages of ``orchestration.stages`` in order, each one's output
the next one's input (the user's message for the first).

A stage is a ``prompt`` (a tool-using loop of the ``reasoner`` role over the
rendered prompt), a ``tool`` (called with ``arguments``, or with the input as its
one required string parameter) or an ``agent`` (asked the input, as a sub-run).
The last stage's output is the answer; only a last prompt stage streams tokens.  A
failing stage names itself (and its position) in the error, which keeps its class:
a stage that runs out of time is still a ``RunTimeout``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import jinja2

from astromesh_ray.core.context import RunContext, TurnState
from astromesh_ray.core.events import (
    AnswerStep,
    Event,
    StepEvent,
    TaskFinished,
    TaskStarted,
    TaskStep,
    ToolCallEvent,
    ToolResultEvent,
    ToolStep,
)
from astromesh_ray.core.messages import Message, ToolCall
from astromesh_ray.core.patterns.common import base_prompt
from astromesh_ray.core.patterns.react import tool_loop
from astromesh_ray.core.peers import sub_request
from astromesh_ray.core.steps.limits import bounded
from astromesh_ray.core.steps.records import record
from astromesh_ray.core.steps.subruns import absorb
from astromesh_ray.core.steps.tools import tool_step
from astromesh_ray.core.trace import Span
from astromesh_ray.errors import AstromeshError, RunError
from astromesh_ray.spec.orchestration import StageSpec
from astromesh_ray.spec.templates import render


class PipelinePattern:
    """Stage after stage."""

    name = "pipeline"
    roles: tuple[str, ...] = ("reasoner",)
    final_role = "reasoner"

    def __init__(self, stages: Sequence[StageSpec]) -> None:
        self.stages = list(stages)

    async def run(self, ctx: RunContext, state: TurnState) -> AsyncIterator[Event]:
        text = ctx.request.query
        count = len(self.stages)
        for index, stage in enumerate(self.stages, start=1):
            last = index == count
            span = state.trace.start("stage", ctx.trace.span_id, stage=stage.name, index=index)
            yield TaskStarted(id=stage.name, kind="stage", name=stage.name, input=text)
            before = state.iterations
            state.doing = f"pipeline stage {stage.name!r} ({index} of {count})"
            try:
                if stage.prompt is not None:
                    output = ""
                    async for event in self._prompt(ctx, state, stage, text, last, span):
                        if isinstance(event, _Output):
                            output = event.text
                        else:
                            yield event
                elif stage.tool is not None:
                    output = ""
                    async for event in self._tool(ctx, state, stage, text, span):
                        if isinstance(event, _Output):
                            output = event.text
                        else:
                            yield event
                else:
                    # Later prompt stages need a model call each: keep them.
                    keep = sum(1 for s in self.stages[index:] if s.prompt is not None)
                    output, sub_run = await self._agent(ctx, state, stage, text, span, keep)
                    span.set(sub_run_id=sub_run)
            except AstromeshError as exc:
                span.end(exc)
                state.doing = None
                named = _named(exc, stage, index, count)
                yield TaskFinished(
                    id=stage.name,
                    kind="stage",
                    name=stage.name,
                    is_error=True,
                    output=named.message,
                    where=dict(span.where),
                    duration_ms=span.duration_ms or 0.0,
                )
                raise named from None
            span.end()
            state.doing = None
            yield TaskFinished(
                id=stage.name,
                kind="stage",
                name=stage.name,
                is_error=False,
                output=output,
                where=dict(span.where),
                duration_ms=span.duration_ms or 0.0,
            )
            yield record(
                state,
                TaskStep(
                    id=stage.name,
                    kind="stage",
                    name=stage.name,
                    input=text,
                    output=output,
                    is_error=False,
                    iterations=state.iterations - before,
                    where=dict(span.where),
                    start_time=span.start_time or time.time(),
                    duration_ms=span.duration_ms or 0.0,
                    sub_run_id=span.attributes.get("sub_run_id"),
                ),
            )
            text = output
        state.messages.append(Message(role="assistant", content=text))
        state.answer = text
        yield record(state, AnswerStep(iteration=state.iterations, content=text))

    async def _prompt(
        self,
        ctx: RunContext,
        state: TurnState,
        stage: StageSpec,
        text: str,
        last: bool,
        span: Span,
    ) -> AsyncIterator[Event | _Output]:
        assert stage.prompt is not None
        prompt = _render(stage.prompt, text, ctx)
        # The stage's own transcript; steps, usage and open streams are the run's.
        sub = TurnState(
            trace=state.trace,
            messages=[*base_prompt(state), Message(role="user", content=prompt)],
            steps=state.steps,
            usage=state.usage,
            iterations=state.iterations,
            open_streams=state.open_streams,
        )
        stage_ctx = dataclasses.replace(
            ctx,
            trace=span.context,
            task=stage.name,
            stream_tokens=ctx.stream_tokens and last,
            output_schema=ctx.output_schema if last else None,
        )
        try:
            async for event in tool_loop(stage_ctx, sub, "reasoner", final=last):
                if not (isinstance(event, StepEvent) and isinstance(event.step, AnswerStep)):
                    yield event
        finally:
            state.usage, state.iterations = sub.usage, sub.iterations
        if state.steps and isinstance(state.steps[-1], AnswerStep):
            state.steps.pop()  # the stage's answer is its output, not the run's
        yield _Output(sub.answer or "")

    async def _tool(
        self, ctx: RunContext, state: TurnState, stage: StageSpec, text: str, span: Span
    ) -> AsyncIterator[Event | _Output]:
        """The stage's tool call, announced and recorded like a model's (events and a
        ``tool_call`` step; not in the transcript, which has no call it answers)."""
        assert stage.tool is not None
        arguments = self._arguments(ctx, stage, text)
        call = ToolCall(id=f"stage-{stage.name}", name=stage.tool, arguments=arguments)
        iteration = state.iterations
        yield ToolCallEvent(
            iteration=iteration, id=call.id, name=call.name, arguments=arguments, task=stage.name
        )
        outcome = await tool_step(ctx, state, call, iteration=iteration, parent=span.span_id)
        result = outcome.result
        yield ToolResultEvent(
            iteration=iteration,
            id=call.id,
            name=call.name,
            content=result.content,
            is_error=result.is_error,
            duration_ms=outcome.duration_ms,
            task=stage.name,
        )
        yield record(
            state,
            ToolStep(
                iteration=iteration,
                id=call.id,
                tool=call.name,
                arguments=arguments,
                result=result.content,
                is_error=result.is_error,
                duration_ms=outcome.duration_ms,
                task=stage.name,
            ),
        )
        if result.is_error:
            raise RunError(result.content, run_id=ctx.run_id)
        yield _Output(result.content)

    def _arguments(self, ctx: RunContext, stage: StageSpec, text: str) -> dict[str, Any]:
        if stage.arguments is not None:
            return {
                k: _render(v, text, ctx) if isinstance(v, str) else v
                for k, v in stage.arguments.items()
            }
        entry = ctx.tools.get(stage.tool or "")
        if entry is None:
            return {}
        params = entry.tool.schema.parameters
        required = list(params.get("required") or [])
        props = params.get("properties") or {}
        strings = [r for r in required if (props.get(r) or {}).get("type") == "string"]
        if len(required) == 1 and strings:
            return {strings[0]: text}
        raise RunError(
            f"tool {stage.tool!r} does not take one required string parameter: give the "
            "stage its arguments",
            run_id=ctx.run_id,
        )

    async def _agent(
        self,
        ctx: RunContext,
        state: TurnState,
        stage: StageSpec,
        text: str,
        span: Span,
        keep: int,
    ) -> tuple[str, str]:
        assert stage.agent is not None
        request = sub_request(
            target=stage.agent,
            query=text,
            run_id=ctx.run_id,
            lineage=ctx.lineage,
            remaining_s=ctx.remaining_s(),
            trace_parent=span.context.traceparent,
            caller=ctx.caller,
            max_iterations=max(ctx.iterations_left(state) - keep, 0),
        )
        result = await bounded(ctx, ctx.peer(stage.agent).run(request), ctx.deadline)
        absorb(state, span, result)
        return result.answer, result.run_id


@dataclasses.dataclass(frozen=True, slots=True)
class _Output:
    text: str


def _render(template: str, text: str, ctx: RunContext) -> str:
    try:
        return render(template, input=text, query=ctx.request.query)
    except jinja2.TemplateError as exc:
        raise RunError(f"cannot render: {exc}", run_id=ctx.run_id) from None


def _named(exc: AstromeshError, stage: StageSpec, index: int, count: int) -> AstromeshError:
    details = {k: v for k, v in exc.details.items() if k != "stage"}
    return type(exc)(
        f"pipeline stage {stage.name!r} ({index} of {count}) failed: {exc.message}",
        hint=exc.hint,
        **details,
        stage=stage.name,
    )
