"""ReAct: the model reasons, calls tools natively, reads their results, and repeats
until it answers without a tool call or ``max_iterations`` model calls are spent."""

from __future__ import annotations

from collections.abc import AsyncIterator

from astromesh_ray.core.context import RunContext, TurnState
from astromesh_ray.core.events import Event
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

    async def run(self, ctx: RunContext, state: TurnState) -> AsyncIterator[Event]:
        while True:
            step = ModelStep(ctx, state, role="reasoner")
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
            async for event in tool_round(ctx, state, calls, iteration=step.iteration):
                yield event
