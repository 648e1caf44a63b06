"""Memory in every turn, as engine stages (``core/stages.py``).

- ``memory`` (prepare, then finish).  Before the pattern: the session's history as
  its strategy chooses (``state.recall.history`` and ``summary``) and what semantic
  recall finds for the query (``state.recall.semantic``); the ``prompts`` stage that
  follows places them.  After a turn that answered: the turn's whole transcript
  (user message, tool calls and results, answer; not the system prompt nor the
  replayed history) is appended as one record; then the strategy updates its
  summary and the turn is indexed for recall (``semantic.index_turns``), both
  best-effort once the turn is stored (a failure is logged and listed in the run
  span's ``memory_warnings``).  A turn that failed stores nothing.
- ``episodic`` (finish).  Every run, answered or failed, appends its episodes:
  the request, each model call (provider, model, tokens, cost, latency), each tool
  call (arguments and result), and the answer or the error; all through ``redact``,
  so no secret is logged.

A backend outage fails the turn with ``MemoryUnavailable`` (HTTP 503): when loading,
before any model call; when saving, with nothing half stored (a turn is one
record).  Without a ``session_id`` a turn neither loads nor stores history.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from astromesh_ray.core.events import ToolStep
from astromesh_ray.core.memory.base import Episode
from astromesh_ray.core.memory.redact import redact
from astromesh_ray.core.memory.strategies import Summarizer
from astromesh_ray.errors import AstromeshError

if TYPE_CHECKING:
    from astromesh_ray.core.context import RunContext, TurnState
    from astromesh_ray.core.memory.agent import AgentMemory
    from astromesh_ray.core.stages import StageEnv
    from astromesh_ray.core.trace import Span
    from astromesh_ray.spec import AgentSpec

log = logging.getLogger("astromesh.memory")
T = TypeVar("T")

SUMMARIZER_ROLE = "summarizer"
"""The model role that writes conversation summaries (``spec.model.roles``); the
pattern's first role when the agent declares none."""


class MemoryStage:
    """Loads a session's memory before the turn, stores the turn after it."""

    name = "memory"

    def __init__(self, memory: AgentMemory) -> None:
        self.memory = memory

    async def prepare(self, ctx: RunContext, state: TurnState) -> None:
        session = ctx.session_id
        if session is not None:
            replay = await self.memory.replay(session)
            state.recall.history = replay.messages
            state.recall.summary = replay.summary
        state.recall.semantic = await self.memory.recall(session, ctx.request.query)

    async def finish(self, ctx: RunContext, state: TurnState, error: AstromeshError | None) -> None:
        if error is not None or state.answer is None:
            return  # a failed turn stores nothing (the episodic log has it)
        session = ctx.session_id
        memory = self.memory
        if session is None or memory.conversation is None:
            # Indexing is all this turn's memory: its failure fails the turn.
            await memory.index_turn(session, ctx.run_id, ctx.request.query, state.answer)
            return
        messages = state.messages[state.turn_start :]
        meta = {"trace_id": state.trace.trace_id, "usage": state.usage.to_dict()}
        await memory.save_turn(session, ctx.run_id, messages, meta)
        # The turn is stored: what follows only adds to it.  Failing now would report
        # a stored turn as lost (and a retry would store it twice), so a failure is
        # logged and shown in the trace; the summary fold catches up on a later turn.
        usage = await _after_saving(
            state, "summary", memory.update_summary(session, _summarizer(ctx, state))
        )
        if usage is not None:
            state.usage = state.usage + usage
        indexing = memory.index_turn(session, ctx.run_id, ctx.request.query, state.answer)
        await _after_saving(state, "index", indexing)


async def _after_saving(state: TurnState, what: str, work: Awaitable[T]) -> T | None:
    """``work`` after the turn was stored: a failure is logged and recorded on the run
    span (``memory_warnings``), not raised."""
    try:
        return await work
    except AstromeshError as exc:
        log.warning("memory %s after a stored turn failed: %s", what, exc)
        run = state.trace.spans[0]
        run.set(memory_warnings=[*run.attributes.get("memory_warnings", []), f"{what}: {exc}"])
        return None


def _summarizer(ctx: RunContext, state: TurnState) -> Summarizer | None:
    model = ctx.models.get(SUMMARIZER_ROLE)
    if model is None:
        return None
    return Summarizer(model=model, trace=state.trace, parent_span=ctx.trace.span_id)


class EpisodicStage:
    """Appends every run's episodes to the episodic log."""

    name = "episodic"

    def __init__(self, memory: AgentMemory, secrets: Sequence[str] = ()) -> None:
        self.memory = memory
        self.secrets = tuple(secrets)

    async def finish(self, ctx: RunContext, state: TurnState, error: AstromeshError | None) -> None:
        await self.memory.record(self.episodes(ctx, state, error))

    def episodes(
        self, ctx: RunContext, state: TurnState, error: AstromeshError | None
    ) -> list[Episode]:
        """The episodes of one run, in the order they happened."""
        request = ctx.request
        spans = state.trace.spans
        own = _own_spans(spans)

        def episode(kind: str, ts: float, data: dict[str, Any]) -> Episode:
            return Episode(
                namespace=self.memory.namespace,
                agent=self.memory.agent,
                session=ctx.session_id,
                run_id=ctx.run_id,
                trace_id=state.trace.trace_id,
                type=kind,
                data=redact(data, secrets=self.secrets),
                ts=ts,
            )

        found = [
            episode(
                "request",
                spans[0].start_time,
                {
                    "query": request.query,
                    "context": request.context,
                    "caller": request.caller.id,
                    "parent_run_id": request.parent_run_id,
                    "lineage": list(ctx.lineage),
                },
            )
        ]
        found += [
            episode("model_call", span.start_time, _model_call(span))
            for span in own
            if span.name in ("model_call", "memory.summarize")
        ]
        found += [
            episode(
                "guardrail",
                span.start_time,
                {k: span.attributes.get(k) for k in ("guardrail", "direction", "action", "detail")},
            )
            for span in own
            if span.name == "guardrail"
        ]
        tool_spans = {s.attributes.get("call_id"): s for s in own if s.name == "tool_call"}
        for step in state.steps:
            if isinstance(step, ToolStep):
                span = tool_spans.get(step.id)
                found.append(
                    episode(
                        "tool_call",
                        span.start_time if span is not None else spans[0].start_time,
                        {
                            "tool": step.tool,
                            "arguments": step.arguments,
                            "result": step.result,
                            "is_error": step.is_error,
                            "duration_ms": step.duration_ms,
                            "sub_run_id": step.sub_run_id,
                        },
                    )
                )
        end = time.time()  # the run span is still open: it ends after the finish stages
        if error is not None:
            found.append(episode("error", end, {"code": error.code, "message": error.message}))
        elif state.answer is not None:
            found.append(
                episode("answer", end, {"answer": state.answer, "usage": state.usage.to_dict()})
            )
        found.sort(key=lambda e: e.ts)
        return found


def _own_spans(spans: Sequence[Span]) -> list[Span]:
    """The spans of this run itself (``spans[0]`` is its run span): not those its
    sub-runs (other agents) or providers recorded, which the trace also holds."""
    run_span = spans[0].span_id
    by_id = {s.span_id: s for s in spans}
    own = []
    for span in spans[1:]:
        parent = span.parent_id
        while parent is not None and parent != run_span:
            above = by_id.get(parent)
            # Under another agent's run (or a span recorded elsewhere): not ours.
            parent = None if above is None or above.name == "run" else above.parent_id
        if parent == run_span and span.name != "run":
            own.append(span)
    return own


def _model_call(span: Span) -> dict[str, Any]:
    attributes = span.attributes
    return {
        "role": attributes.get("role", SUMMARIZER_ROLE),
        "provider": attributes.get("provider"),
        "model": attributes.get("model"),
        "usage": attributes.get("usage"),
        "finish_reason": attributes.get("finish_reason"),
        "duration_ms": span.duration_ms,
        "status": span.status,
        "error": span.error,
    }


def memory_stage(agent: AgentSpec, env: StageEnv) -> MemoryStage | None:
    """The ``memory`` stage, for agents with conversational or semantic memory."""
    memory = env.memory
    if memory is None or (memory.conversation is None and memory.semantic is None):
        return None
    return MemoryStage(memory)


def episodic_stage(agent: AgentSpec, env: StageEnv) -> EpisodicStage | None:
    """The ``episodic`` stage, for agents with an episodic log."""
    if env.memory is None or env.memory.episodic is None:
        return None
    return EpisodicStage(env.memory, env.secrets)
