"""``Delegation``: a sub-run of a peer agent (``delegate`` or ``handoff``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from astromesh_ray.core.context import RunContext, TurnState
from astromesh_ray.core.events import (
    Delegate,
    DelegateStep,
    Event,
    Handoff,
    HandoffStep,
    RunResult,
)
from astromesh_ray.core.messages import Message
from astromesh_ray.core.peers import sub_request
from astromesh_ray.core.steps.limits import bounded
from astromesh_ray.core.steps.records import record
from astromesh_ray.core.steps.subruns import absorb


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
                max_iterations=ctx.iterations_left(state),
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
            result = await bounded(ctx, peer.run(request), ctx.deadline)
        except BaseException as exc:
            span.end(exc)
            raise
        absorb(state, span, result)
        span.end()
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
