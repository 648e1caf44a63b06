"""Swarm: members (other agents) pass control and the conversation by handoff.

The first of ``orchestration.members`` starts.  The member holding control runs a
turn of its own (its prompt, tools and model) over the conversation so far, offered
one handoff tool per other member (``patterns/handoffs.py``).  A member that calls
one ends its turn; the conversation, its tool call and result included, goes to the
member named.  The member that answers without handing off is the last speaker: its
answer is the run's.  Streamed answer tokens are those of the member holding
control, tagged with its name (``Token.task``): text a member writes before handing
off is streamed as it is written, as in a ``react`` turn; the run's answer is the
last speaker's alone.

Members are separate agents: under Serve, each its own application.  The swarm
holds the conversation and passes it to each member in turn, by message, through
its ``Peer`` (A → B → A is three calls from the swarm, not calls nested inside each
other, so no member waits on another).  Every member turn spends model calls from
the swarm's ``max_iterations`` and time from its deadline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence

from astromesh_ray.core.context import RunContext, RunRequest, TurnState
from astromesh_ray.core.events import (
    AnswerStep,
    Event,
    Handoff,
    HandoffStep,
    ModelCall,
    RunFinished,
    RunResult,
    ThoughtStep,
    Token,
    ToolCallEvent,
    ToolResultEvent,
    ToolStep,
)
from astromesh_ray.core.messages import Message
from astromesh_ray.core.peers import sub_request
from astromesh_ray.core.steps.limits import bounded, iterations_exhausted
from astromesh_ray.core.steps.records import record
from astromesh_ray.core.steps.subruns import absorb
from astromesh_ray.core.streams import closing_stream
from astromesh_ray.core.trace import Span

_RELAYED = (ModelCall, ToolCallEvent, ToolResultEvent)


class SwarmPattern:
    """Member turns, linked by handoffs, until one answers."""

    name = "swarm"
    roles: tuple[str, ...] = ("reasoner",)  # asked only to re-shape a structured answer
    final_role = "reasoner"

    def __init__(self, members: Sequence[str]) -> None:
        self.members = list(members)

    async def run(self, ctx: RunContext, state: TurnState) -> AsyncIterator[Event]:
        # The whole conversation: the session's replayed history (when the swarm keeps
        # memory) and this turn's message; each member adds its own system prompt.
        conversation = [m for m in state.messages if m.role != "system"]
        current = self.members[0]
        while True:
            if ctx.iterations_left(state) <= 0:
                raise iterations_exhausted(ctx, state)
            others = [m for m in self.members if m != current]
            span = state.trace.start("member_turn", ctx.trace.span_id, member=current)
            request = sub_request(
                target=current,
                query=ctx.request.query,
                run_id=ctx.run_id,
                lineage=ctx.lineage,
                remaining_s=ctx.remaining_s(),
                trace_parent=span.context.traceparent,
                caller=ctx.caller,
                history=conversation,
                max_iterations=ctx.iterations_left(state),
                handoffs=others,
                continues=True,
            )
            result: RunResult | None = None
            try:
                if ctx.stream_tokens:
                    async for event in self._stream(ctx, current, request):
                        if isinstance(event, RunFinished):
                            result = event.result
                        else:
                            yield event
                else:
                    result = await bounded(ctx, ctx.peer(current).run(request), ctx.deadline)
            except BaseException as exc:
                span.end(exc)
                raise
            assert result is not None, "a member's turn ends with its result"
            new = self._merge(state, span, result, conversation)
            conversation.extend(new)
            if result.status == "handoff" and result.handoff_to:
                yield Handoff(
                    iteration=state.iterations,
                    from_agent=current,
                    to_agent=result.handoff_to,
                    reason=result.handoff_reason,
                )
                yield record(
                    state,
                    HandoffStep(
                        iteration=state.iterations,
                        to_agent=result.handoff_to,
                        reason=result.handoff_reason,
                        sub_run_id=result.run_id,
                    ),
                )
                current = result.handoff_to
                continue
            state.answer = result.answer
            yield record(state, AnswerStep(iteration=state.iterations, content=result.answer))
            return

    async def _stream(
        self, ctx: RunContext, member: str, request: RunRequest
    ) -> AsyncIterator[Event]:
        """The member's events worth relaying (its answer tokens, model and tool
        calls, tagged with its name), then its ``RunFinished``."""
        async with closing_stream(ctx.peer(member).stream(request)) as events:
            while True:
                try:
                    event = await bounded(ctx, anext(events), ctx.deadline)
                except StopAsyncIteration:
                    return
                if (isinstance(event, Token) and event.channel == "answer") or isinstance(
                    event, _RELAYED
                ):
                    yield dataclasses.replace(event, task=member)
                elif isinstance(event, RunFinished):
                    yield event

    def _merge(
        self, state: TurnState, span: Span, result: RunResult, conversation: Sequence[Message]
    ) -> list[Message]:
        absorb(state, span, result)
        span.set(status=result.status)
        span.end()
        for step in result.steps:
            if isinstance(step, ToolStep | ThoughtStep):
                state.steps.append(dataclasses.replace(step, task=result.agent))
        new = [m for m in result.messages if m.role != "system"][len(conversation) :]
        state.messages.extend(new)
        return new
