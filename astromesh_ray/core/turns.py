"""The pieces of one turn that ``AgentRuntime._events`` puts together: the run's
context, the answer (pattern, then after steps), the finish stages, and the
bookkeeping around them (``Turn``, run ids, the budget's end).

Kept apart from ``runtime.py`` so the runtime reads as the order of a turn and
these as what each step of it does.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from astromesh_ray.core.context import RunContext, RunRequest, TurnState
from astromesh_ray.core.events import Event
from astromesh_ray.core.messages import Message
from astromesh_ray.core.patterns.base import AfterStep, Pattern
from astromesh_ray.core.patterns.handoffs import with_handoffs
from astromesh_ray.core.stages import Stages, in_stage
from astromesh_ray.core.streams import closing_stream
from astromesh_ray.core.trace import Trace, TraceContext
from astromesh_ray.errors import AstromeshError, RunError

if TYPE_CHECKING:
    from astromesh_ray.core.runs.pausing import Checkpoint
    from astromesh_ray.core.runtime import AgentRuntime
    from astromesh_ray.core.steps.tools import RunPaused

log = logging.getLogger("astromesh.runtime")


@dataclass(slots=True)
class Turn:
    """Where ``AgentRuntime.run`` finds the context and state of the turn it bounds."""

    ctx: RunContext | None = None
    state: TurnState | None = None
    timeout: asyncio.Timeout | None = None
    finishing: bool = False
    checkpoint: Checkpoint | None = None  # a resumed run's, once its calls are done


def new_context(
    rt: AgentRuntime,
    request: RunRequest,
    trace: Trace,
    span: TraceContext,
    run_id: str,
    deadline: float,
    turn: Turn | None,
) -> RunContext:
    """The context of one run of ``rt`` (``turn``: None when it is streamed)."""
    assert rt.tools is not None
    return RunContext(
        run_id=run_id,
        agent=rt.name,
        request=request,
        models=rt.models,
        tools=with_handoffs(rt.tools, request.handoffs),
        peers=rt.peers,
        deadline=deadline,
        trace=span,
        lineage=(*request.lineage, rt.name),
        max_iterations=min(rt.max_iterations, request.max_iterations or rt.max_iterations),
        parameters=rt.parameters,
        stream_tokens=turn is None,
        bounded=turn is not None,
        deadline_from_caller=(request.deadline_s is not None and request.deadline_s < rt.timeout_s),
        where=trace.where,
        tasks=rt.tasks,
        output_schema=rt.output_schema,
        budget=rt.budget.for_run(run_id, request.session_id) if rt.budget is not None else None,
    )


async def answer(
    pattern: Pattern, after: Sequence[AfterStep], ctx: RunContext, state: TurnState
) -> AsyncIterator[Event]:
    """The pattern's events, then the after steps' (structured output, chain): what
    the transformers (output guardrails) see.  An input refused by a guardrail
    answers with its refusal: the pattern does not run."""
    if state.refusal is not None:
        state.answer = state.refusal
        state.messages.append(Message(role="assistant", content=state.refusal))
        return
    async with closing_stream(pattern.run(ctx, state)) as events:
        async for event in events:
            yield event
    if state.answer is None:
        raise RunError(f"pattern {pattern.name!r} ended without an answer", run_id=ctx.run_id)
    for step in after:
        async for event in step.run(ctx, state):
            yield event


async def finish_stages(
    stages: Stages, ctx: RunContext, state: TurnState, error: AstromeshError | None
) -> None:
    """Run every finish stage, each once.  A stage that fails does not stop the later
    ones, which are told the run failed with its error (the episodic log records a
    turn whose saving failed); that first failure is raised at the end, unless the
    run had already failed, whose error is the one to report."""
    failed: AstromeshError | None = None
    for stage in stages.finish:
        try:
            await in_stage(stage.name, stage.finish(ctx, state, error or failed))
        except AstromeshError as exc:
            if error is None and failed is None:
                failed = exc
            else:
                log.warning("finish stage %r failed after a failed run: %s", stage.name, exc)
    if failed is not None:
        raise failed


def sub_run_paused(agent: str, request: RunRequest, exc: RunPaused, run_id: str) -> RunError:
    """A sub-run called tools that need the caller: nobody could answer them."""
    return RunError(
        f"agent {agent!r} runs as a sub-run of {request.lineage[-1]!r} and "
        f"called {', '.join(p.name for p in exc.pending)}, which need(s) the "
        "caller (a client tool or an approval): a sub-run cannot pause",
        hint="give the calling agent those tools instead",
        run_id=run_id,
        reason="sub_run_paused",
    )


async def end_budget(ctx: RunContext) -> None:
    """Drop the turn's entries from the budget ledger (a failure is only logged: the
    turn's spend is already settled, and the entries expire)."""
    assert ctx.budget is not None
    try:
        await ctx.budget.end()
    except Exception:
        log.warning("run %s: ending its budget failed", ctx.run_id, exc_info=True)


def new_run_id() -> str:
    """A unique run id: 32 hex digits from the OS's CSPRNG (a paused run is resumed by
    its id, so ids must not be guessable from the trace ids a reply shows)."""
    return secrets.token_hex(16)
