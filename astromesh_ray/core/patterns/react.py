"""ReAct: the model reasons, calls tools natively, reads their results, and repeats
until it answers without a tool call or ``max_iterations`` model calls are spent."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from astromesh_ray.core.context import RunContext, TurnState
from astromesh_ray.core.events import Event
from astromesh_ray.core.messages import ToolCall
from astromesh_ray.core.steps import (
    ModelStep,
    iterations_exhausted,
    record_answer,
    record_thought,
    tool_round,
)


class ReActPattern:
    """Thought → tool calls → observations, one model call per iteration."""

    name = "react"
    roles: tuple[str, ...] = ("reasoner",)

    def run(self, ctx: RunContext, state: TurnState) -> AsyncIterator[Event]:
        return tool_loop(ctx, state, "reasoner", final=True)


async def tool_loop(
    ctx: RunContext,
    state: TurnState,
    role: str,
    *,
    final: bool = False,
    before_round: Callable[[list[ToolCall]], list[Event]] | None = None,
) -> AsyncIterator[Event]:
    """The ReAct loop of ``role`` over ``state.messages``: what a ``react`` turn, a
    plan step, a fan-out branch and a pipeline prompt stage run.  ``final``: its
    answer is the run's, so it is decoded under ``spec.output_schema`` where the
    model runs without tools."""
    while True:
        schema = ctx.output_schema if final and not ctx.tools.schemas else None
        step = ModelStep(ctx, state, role=role, output_schema=schema)
        async for event in step:
            yield event
        calls = step.message.tool_calls
        if not calls:
            yield record_answer(state, step)
            return
        if state.iterations >= ctx.max_iterations:
            # No model call is left to read the results: don't run the tools.
            raise iterations_exhausted(ctx, state)
        thought = record_thought(state, step)
        if thought is not None:
            yield thought
        if before_round is not None:
            for event in before_round(calls):
                yield event
        async for event in tool_round(ctx, state, calls, iteration=step.iteration):
            yield event
