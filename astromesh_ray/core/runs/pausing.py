"""The runtime's side of paused runs: saving a run that waits on its caller, the
``requires_action`` result it answers with, and taking it back (once, checked) when
the caller answers."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from astromesh_ray.core.context import Caller, RunContext, RunRequest, TurnState, turn_result
from astromesh_ray.core.events import Event, PendingToolCall, RunResult
from astromesh_ray.core.runs.paused import PausedRun, PausedRunStore, ToolDecision
from astromesh_ray.core.runs.resume import check_answer, complete_pending
from astromesh_ray.errors import AstromeshError, InvalidRequest, RunNotFound

log = logging.getLogger("astromesh.runtime")


Answer = Sequence[ToolDecision] | Callable[[PausedRun], Sequence[ToolDecision]]
"""A caller's answer to a paused run: its decisions, or how to make them from it."""


@dataclass(slots=True)
class Checkpoint:
    """What a resumed run saved once its pending calls were done, and the events of
    those calls."""

    run: PausedRun
    events: list[Event]


@dataclass(slots=True)
class Resume:
    """A paused run taken from the store, and the caller's answer to it."""

    run: PausedRun
    decisions: list[ToolDecision]


class Pauses:
    """Agent ``agent``'s paused runs in ``store`` (``None``: the agent has no tool
    that pauses, so asking for one of its paused runs finds none)."""

    def __init__(self, agent: str, store: PausedRunStore | None) -> None:
        self.agent = agent
        self.store = store

    def _store(self) -> PausedRunStore:
        if self.store is None:
            raise RunNotFound(
                f"agent {self.agent!r} has no client tools nor tools that require "
                "approval: none of its runs pauses",
            )
        return self.store

    async def get(self, run_id: str, caller: Caller) -> PausedRun:
        """The paused run, for the caller that started it (for anyone else it does
        not exist: a run id is not proof of anything)."""
        run = await self._store().get(self.agent, run_id)
        if run is None or run.caller.id != caller.id:
            raise self._missing(run_id)
        return run

    async def take(self, run_id: str, answer: Answer, caller: Caller) -> Resume:
        """Check the caller's answer against the paused run (a refused one changes
        nothing), then take the run from the store: of two answers, one gets it.  If
        what was taken is a newer pause than the one checked (another answer's run
        paused again meanwhile) and the answer does not fit it, it is put back.
        ``answer``: the decisions, or how to make them from the paused run (an API
        request that says "approve all")."""
        store = self._store()
        run = await self.get(run_id, caller)
        decisions = list(answer(run) if callable(answer) else answer)
        check_answer(run, decisions)
        taken = await store.take(self.agent, run_id)
        if taken is None:  # another answer took it meanwhile
            raise self._missing(run_id)
        try:
            check_answer(taken, decisions)
        except InvalidRequest:
            await store.save(self.agent, taken)
            raise
        return Resume(taken, list(decisions))

    async def save(
        self,
        ctx: RunContext,
        state: TurnState,
        pending: Sequence[PendingToolCall],
        *,
        error: str | None = None,
    ) -> PausedRun:
        """Keep the run, which waits on ``pending`` (nothing: a checkpoint of a
        resumed run whose calls are done, kept until it answers)."""
        run = PausedRun(
            run_id=ctx.run_id,
            agent=self.agent,
            request=ctx.request,
            messages=list(state.messages),
            steps=list(state.steps),
            usage=state.usage,
            iterations=state.iterations,
            turn_start=state.turn_start,
            trace_id=state.trace.trace_id,
            pending=list(pending),
            spans=[s.to_dict() for s in state.trace.spans if s.duration_ms is not None],
            error=error,
        )
        await self._store().save(self.agent, run)
        return run

    async def put_back(self, run: PausedRun) -> None:
        """Save ``run`` again as it was taken (its resume stopped before anything it
        waited on was done)."""
        await self._store().save(self.agent, run)

    async def done(self, run_id: str) -> None:
        """The resumed run answered: its checkpoint goes.  Best effort: a checkpoint
        left behind only lets a retry answer again (its turn is stored once)."""
        if self.store is None:
            return
        try:
            await self.store.take(self.agent, run_id)
        except AstromeshError as exc:
            log.warning(
                "agent %r: removing the checkpoint of run %s failed: %s", self.agent, run_id, exc
            )

    async def answer(self, ctx: RunContext, state: TurnState, resume: Resume) -> Checkpoint:
        """Complete the calls the run waited on, then save a checkpoint of it (nothing
        pending): a failure from here on leaves a run the caller can retry without
        those calls running again.  A failure before the checkpoint puts the run
        back as it was taken (a call it interrupted may then run again)."""
        events: list[Event] = []
        try:
            async for event in complete_pending(ctx, state, resume.run.pending, resume.decisions):
                events.append(event)
            saved = await self.save(ctx, state, [])
        except BaseException:
            with contextlib.suppress(Exception):
                await self.put_back(resume.run)
            raise
        return Checkpoint(saved, events)

    async def interrupted(self, checkpoint: Checkpoint, error: AstromeshError) -> None:
        """The resumed run failed after its checkpoint: say so on the checkpoint and
        in the error (the caller can retry the run)."""
        error.details["resumable"] = True
        error.hint = ((error.hint + "; ") if error.hint else "") + (
            f"POST /v1/agents/{self.agent}/runs/{checkpoint.run.run_id}/retry goes on from "
            "the answered tool calls"
        )
        with contextlib.suppress(AstromeshError):
            await self.put_back(dataclasses.replace(checkpoint.run, error=error.message))

    def _missing(self, run_id: str) -> RunNotFound:
        return RunNotFound(
            f"agent {self.agent!r} has no paused run {run_id!r}",
            hint="it was never paused, was already resumed (an answer is single-use), or expired",
            run_id=run_id,
        )


def end_paused_span(state: TurnState, pending: Sequence[PendingToolCall]) -> None:
    """End the run span of a run that pauses (the resumed run has a run span of its
    own, in the same trace, and keeps this one)."""
    run_span = state.trace.spans[0]
    run_span.set(usage=state.usage.to_dict(), paused_on=[p.id for p in pending])
    run_span.end()


def paused_result(
    ctx: RunContext, state: TurnState, pending: Sequence[PendingToolCall]
) -> RunResult:
    """The ``requires_action`` result of a run that waits on ``pending``."""
    return turn_result(ctx, state, answer="", status="requires_action", pending=list(pending))


def restore(state: TurnState, run: PausedRun) -> None:
    """Put a paused run's transcript, steps, usage, model call count and the spans
    it recorded before the pause back."""
    state.trace.extend(run.spans)
    state.messages = list(run.messages)
    state.steps = list(run.steps)
    state.usage = run.usage
    state.iterations = run.iterations
    state.turn_start = run.turn_start


def check_storable(request: RunRequest) -> None:
    """A run that may pause is saved as JSON: its ``context`` must be JSON (checked
    before the run starts, not when it pauses, after tools ran)."""
    try:
        json.dumps(request.context)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(
            f"context must be JSON (this agent's runs may pause and are saved): {exc}",
            field="context",
        ) from None
