"""``AgentRuntime``: one agent turn, end to end, as a stream of typed events.

    ctx = RunContext(...)               # fixed for the run
    state = TurnState(...)              # what the run builds up
    prepare stages                      # input guardrails, memory load, prompts
    pattern.run(ctx, state), after steps → transformers (output guardrails) → events
    finish stages                       # memory save, episodic record
    RunFinished(result)

It runs against interfaces only: whether a model is an HTTP client in this process
or a handle to a Serve replica, whether a peer is another runtime here or another
agent's application, is decided by whoever built it (``core/build.py``).  The
runtime owns its toolsets' lifecycle: ``start`` lists their tools (once), ``aclose``
closes them and the model clients.  What each step of a turn does is in ``turns.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from astromesh_ray.core.context import Caller, RunContext, RunRequest, TurnState, turn_result
from astromesh_ray.core.events import Event, RunFinished, RunResult, RunStarted
from astromesh_ray.core.failures import attach_run, internal_error
from astromesh_ray.core.patterns.base import AfterStep, Pattern
from astromesh_ray.core.patterns.handoffs import handed_off
from astromesh_ray.core.peers import Peer
from astromesh_ray.core.providers.base import Provider
from astromesh_ray.core.runs.paused import PausedRun, PausedRunStore
from astromesh_ray.core.runs.pausing import (
    Answer,
    Checkpoint,
    Pauses,
    Resume,
    check_storable,
    end_paused_span,
    paused_result,
    restore,
)
from astromesh_ray.core.stages import Stages, in_stage, stage_layer
from astromesh_ray.core.steps import bounded, deadline_exceeded
from astromesh_ray.core.steps.tools import HandedOff, RunPaused
from astromesh_ray.core.streams import aclose, closing_stream
from astromesh_ray.core.tasks import (
    LocalTaskRunner,
    TaskRequest,
    TaskResult,
    TaskRunner,
    execute_task,
)
from astromesh_ray.core.tools.base import Toolset, toolsets_health
from astromesh_ray.core.tools.index import ToolIndex
from astromesh_ray.core.trace import Trace, TraceContext, new_trace_id
from astromesh_ray.core.turns import (
    Turn,
    answer,
    end_budget,
    finish_stages,
    new_context,
    new_run_id,
    sub_run_paused,
)
from astromesh_ray.errors import AstromeshError

if TYPE_CHECKING:
    from astromesh_ray.core.guardrails.budget import BudgetPolicy
    from astromesh_ray.core.memory.agent import AgentMemory

log = logging.getLogger("astromesh.runtime")


class Closeable(Protocol):
    """Something the runtime closes when it shuts down."""

    async def aclose(self) -> None: ...


class AgentRuntime:
    """Runs turns of one agent.  Build it with ``build_runtime`` from an ``AgentSpec``."""

    def __init__(
        self,
        *,
        name: str,
        models: Mapping[str, Provider],
        pattern: Pattern,
        stages: Stages,
        max_iterations: int,
        timeout_s: float,
        toolsets: Sequence[Toolset] = (),
        allowed_tools: Sequence[str] | None = None,
        peers: Mapping[str, Peer] | None = None,
        parameters: Mapping[str, Any] | None = None,
        where: Mapping[str, str] | None = None,
        memory: AgentMemory | None = None,
        resources: Sequence[Closeable] = (),
        paused: PausedRunStore | None = None,
        tasks: TaskRunner | None = None,
        output_schema: Mapping[str, Any] | None = None,
        after: Sequence[AfterStep] = (),
        budget: BudgetPolicy | None = None,
    ) -> None:
        self.name = name
        # Where the pattern's tasks (plan steps, branches) run: here, or (under Serve)
        # on any replica of this agent's application.
        self.tasks: TaskRunner = tasks or LocalTaskRunner(self)
        # The final answer's JSON Schema (spec.output_schema), and what runs once the
        # pattern answered (structured output, spec.chain).
        self.output_schema = output_schema
        self.after = list(after)
        # The agent's cost caps (cost_limit guardrails): each run gets its RunBudget.
        self.budget = budget
        # Where runs paused on client tools or approvals wait (None: the agent has
        # no such tools, so none pauses).
        self.paused = paused
        self.pauses = Pauses(name, paused)
        # The agent's memory (what its stages use and the memory API reads), and
        # what the runtime closes with it (the memory backends' owner, ...).
        self.memory = memory
        self.resources = list(resources)
        # Shared by every concurrent run: read-only views.
        self.models: Mapping[str, Provider] = MappingProxyType(dict(models))
        self.pattern = pattern
        self.stages = stages
        self.max_iterations = max_iterations
        self.timeout_s = timeout_s
        self.toolsets = list(toolsets)
        self.allowed_tools = list(allowed_tools) if allowed_tools is not None else None
        self.peers: Mapping[str, Peer] = MappingProxyType(dict(peers or {}))
        self.parameters: Mapping[str, Any] = MappingProxyType(dict(parameters or {}))
        # Where this runtime runs (process, or Ray replica and node): spans carry it.
        self.where = dict(where) if where else None
        self.tools: ToolIndex | None = None
        self._starting: asyncio.Lock | None = None
        self._refresh: asyncio.Future[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """List every toolset's tools (once; later calls return at once), and follow
        the toolsets that say when their tool list changes (MCP ``list_changed``)."""
        if self.tools is not None:
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self.tools is None:
                self.tools = await ToolIndex.build(self.toolsets, self.allowed_tools)
                loop = asyncio.get_running_loop()
                for toolset in self.toolsets:
                    watch = getattr(toolset, "watch", None)
                    if watch is not None:
                        watch(lambda: loop.call_soon_threadsafe(self._tools_changed))

    def _tools_changed(self) -> None:
        # Runs started before the change keep the index they started with.
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self.refresh_tools())

    async def refresh_tools(self) -> None:
        """List every toolset's tools again; runs that start later see the new index.
        A failed listing keeps the current index (and is logged)."""
        try:
            self.tools = await ToolIndex.build(self.toolsets, self.allowed_tools)
        except Exception:
            log.warning("agent %r: refreshing its tools failed", self.name, exc_info=True)

    def health(self) -> dict[str, Any]:
        """Each toolset's health, for toolsets that report one (MCP servers):
        ``{"status": "ok" | "degraded", "toolsets": {name: {...}}}``."""
        return toolsets_health(self.toolsets)

    async def aclose(self) -> None:
        """Close the toolsets and the model clients (each once).  One that fails to
        close is logged, and the others are still closed."""
        closing: list[tuple[str, Awaitable[None]]] = [
            (f"toolset {t.name!r}", t.aclose()) for t in self.toolsets
        ]
        closing += [(f"resource {r!r}", r.aclose()) for r in self.resources]
        seen: set[int] = set()
        for provider in self.models.values():
            if id(provider) not in seen:
                seen.add(id(provider))
                closing.append((f"model {provider.name!r}", provider.aclose()))
        for what, close in closing:
            try:
                await close
            except Exception:  # shutting down: release everything else regardless
                log.warning("agent %r: closing %s failed", self.name, what, exc_info=True)

    # -- turns -----------------------------------------------------------------------------

    async def run(self, request: RunRequest, *, _resume: Resume | None = None) -> RunResult:
        """Run one turn to its answer (no token streaming).

        Nobody else reads these events, so one timeout bounds the turn here and the
        steps need no deadline of their own (``RunContext.bounded``).  The finish
        stages run after the answer, outside that timeout: a turn that answered in
        time is not failed by the saving of it.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s(request)
        turn = Turn()
        result: RunResult | None = None
        events = self._events(request, deadline=deadline, turn=turn, resume=_resume)
        try:
            async with asyncio.timeout_at(deadline) as timeout:
                turn.timeout = timeout
                async for event in events:
                    if isinstance(event, RunFinished):
                        result = event.result
        except TimeoutError:
            if turn.ctx is None or turn.state is None or turn.finishing:
                raise
            if loop.time() < deadline:
                raise
            error = deadline_exceeded(turn.ctx, turn.state)
            await finish_stages(self.stages, turn.ctx, turn.state, error)
            attach_run(error, turn.ctx.run_id, turn.state)
            if turn.checkpoint is not None:
                await self.pauses.interrupted(turn.checkpoint, error)
            raise error from None
        finally:
            await aclose(events)  # stopped by an error or the timeout: closed now
        if result is None:
            raise AssertionError("a run ends with run_finished or raises")
        return result

    def stream(self, request: RunRequest) -> AsyncIterator[Event]:
        """Run one turn, yielding events as they happen; the last is ``RunFinished``.

        The time the reader takes between events is not the agent's: each step (and
        each prepare stage) bounds its own waits by the deadline instead.  Close the
        stream (``aclose``) to abandon the run: what it has open is closed."""
        deadline = asyncio.get_running_loop().time() + self._timeout_s(request)
        return self._events(request, deadline=deadline, turn=None)

    def _timeout_s(self, request: RunRequest) -> float:
        if request.deadline_s is not None:  # a sub-run: what its caller has left
            return min(self.timeout_s, request.deadline_s)
        return self.timeout_s

    async def task(self, request: TaskRequest) -> TaskResult:
        """Run one of a pattern's tasks (a plan step, a branch) for any run of this
        agent, on whichever replica was asked (``core/tasks.py``)."""
        return await execute_task(self, request)

    # -- paused runs -------------------------------------------------------------------

    async def paused_run(self, run_id: str, caller: Caller) -> PausedRun:
        """The paused run ``run_id`` (what it waits on), for the caller that started it."""
        return await self.pauses.get(run_id, caller)

    async def resume(
        self,
        run_id: str,
        decisions: Answer,
        caller: Caller,
        *,
        trace_parent: str | None = None,
    ) -> RunResult:
        """Go on with paused run ``run_id`` once the caller answered every pending
        call (client results, approvals or rejections; none to retry a run whose
        resume failed after its calls were done).  The answer is checked first (a
        refused one changes nothing), then the run is taken from the store: a second
        answer to the same pause finds nothing (``RunNotFound``).  ``trace_parent``:
        the resume request's span (default: the paused run's trace)."""
        resume = await self.pauses.take(run_id, decisions, caller)
        request = dataclasses.replace(resume.run.request, trace_parent=trace_parent)
        return await self.run(request, _resume=resume)

    async def resume_stream(
        self,
        run_id: str,
        decisions: Answer,
        caller: Caller,
        *,
        trace_parent: str | None = None,
    ) -> AsyncIterator[Event]:
        """``resume`` as a stream of events (the last is ``RunFinished``)."""
        resume = await self.pauses.take(run_id, decisions, caller)
        request = dataclasses.replace(resume.run.request, trace_parent=trace_parent)
        deadline = asyncio.get_running_loop().time() + self._timeout_s(request)
        async with closing_stream(
            self._events(request, deadline=deadline, turn=None, resume=resume)
        ) as events:
            async for event in events:
                yield event

    # -- the events of a turn -----------------------------------------------------------

    async def _events(
        self,
        request: RunRequest,
        *,
        deadline: float,
        turn: Turn | None,
        resume: Resume | None = None,
    ) -> AsyncIterator[Event]:
        if self.tools is None:
            await self.start()
        assert self.tools is not None
        request.check()
        # The run's own copy: input guardrails redact its query in place.
        request = dataclasses.replace(request)
        if self.paused is not None and resume is None:
            check_storable(request)
        parent = TraceContext.parse(request.trace_parent)
        trace = Trace(
            parent.trace_id if parent else resume.run.trace_id if resume else new_trace_id(),
            self.where,
            sampled=parent.sampled if parent else True,
        )
        run_span = trace.start("run", parent.span_id if parent else None, agent=self.name)
        run_id = resume.run.run_id if resume else new_run_id()
        run_span.set(run_id=run_id)
        if resume:
            run_span.set(resumed=True)
        ctx = new_context(self, request, trace, run_span.context, run_id, deadline, turn)
        state = TurnState(trace=trace)
        if resume is not None:
            restore(state, resume.run)
        if turn is not None:
            turn.ctx, turn.state = ctx, state
        error: AstromeshError | None = None
        paused: RunPaused | None = None
        handoff: HandedOff | None = None
        checkpoint: Checkpoint | None = None
        layers: list[AsyncIterator[Event]] = []
        try:
            if resume is None:  # a resumed run was prepared before it paused
                for stage in self.stages.prepare:
                    await in_stage(stage.name, bounded(ctx, stage.prepare(ctx, state), deadline))
            yield RunStarted(
                run_id=run_id,
                agent=self.name,
                session_id=request.session_id,
                trace_id=trace.trace_id,
                parent_run_id=request.parent_run_id,
            )
            for event in state.announce:  # what the prepare stages did (guardrails)
                yield event
            state.announce.clear()
            if resume is not None:
                checkpoint = await self.pauses.answer(ctx, state, resume)
                if turn is not None:
                    turn.checkpoint = checkpoint
                for event in checkpoint.events:
                    yield event
            events = answer(self.pattern, self.after, ctx, state)
            layers.append(events)
            if self.stages.transformers:
                events = stage_layer(None, events)
                for transformer in self.stages.transformers:
                    events = stage_layer(
                        transformer.name, transformer.transform(ctx, state, events)
                    )
                    layers.append(events)
            async for event in events:
                yield event
        except HandedOff as exc:
            handoff = exc
        except RunPaused as exc:
            if request.lineage:  # a sub-run: nobody could answer it
                error = sub_run_paused(self.name, request, exc, run_id)
            else:
                paused = exc
        except AstromeshError as exc:
            error = exc
        except Exception as exc:  # a bug: report it as one, with the partial trace
            log.exception("run %s of agent %r failed", run_id, self.name)
            error = internal_error(self.name, exc, run_id, state)
        finally:
            # The pattern, the transformers and the streams the steps have open are
            # closed now, not when the garbage collector finds them: a run abandoned
            # by its reader, cancelled or failed leaves no stream behind.
            for layer in reversed(layers):
                await aclose(layer)
            for stream in reversed(state.open_streams):
                await aclose(stream)
            for span in trace.spans[1:]:
                if span.duration_ms is None:  # its step never resumed to end it
                    span.end("abandoned")
            if ctx.budget is not None:
                await end_budget(ctx)
            if error is None and paused is None and handoff is None and state.answer is None:
                run_span.end("abandoned")  # the reader stopped, or the task was cancelled
        if turn is not None:
            # The turn answered (or failed) in time: what follows is not bounded.
            turn.finishing = True
            if turn.timeout is not None:
                turn.timeout.reschedule(None)
        if paused is not None:
            # Not finished: nothing is stored in memory until the turn answers.
            async for event in self._paused(ctx, state, paused):
                yield event
            return
        if handoff is not None:  # a swarm member's turn ends: the swarm goes on
            run_span.set(handoff_to=handoff.to_agent)
            run_span.end()
            yield RunFinished(result=handed_off(ctx, state, handoff))
            return
        try:
            await finish_stages(self.stages, ctx, state, error)
        except AstromeshError as exc:  # only raised when the run itself succeeded
            error = exc
        if error is not None:
            attach_run(error, run_id, state)
            if checkpoint is not None:
                await self.pauses.interrupted(checkpoint, error)
            raise error
        if resume is not None:
            await self.pauses.done(run_id)
        run_span.set(usage=state.usage.to_dict())
        run_span.end()
        assert state.answer is not None
        yield RunFinished(result=turn_result(ctx, state))

    async def _paused(
        self, ctx: RunContext, state: TurnState, paused: RunPaused
    ) -> AsyncIterator[Event]:
        """Save a run that waits on the caller; its last event says what it waits on."""
        end_paused_span(state, paused.pending)
        try:
            await self.pauses.save(ctx, state, paused.pending)
        except AstromeshError as exc:
            attach_run(exc, ctx.run_id, state)
            raise
        yield RunFinished(result=paused_result(ctx, state, paused.pending))
