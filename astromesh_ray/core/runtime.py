"""``AgentRuntime``: one agent turn, end to end, as a stream of typed events.

    ctx = RunContext(...)               # fixed for the run
    state = TurnState(...)              # what the run builds up
    prepare stages                      # prompts (memory and input guardrails later)
    pattern.run(ctx, state) → transformers → events
    finish stages                       # (memory save, episodic record later)
    RunFinished(result)

It runs against interfaces only: whether a model is an HTTP client in this process
or a handle to a Serve replica, whether a peer is another runtime here or another
agent's application, is decided by whoever built it (``core/build.py``).  The
runtime owns its toolsets' lifecycle: ``start`` lists their tools (once), ``aclose``
closes them and the model clients.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from astromesh_ray.core.context import RunContext, RunRequest, TurnState
from astromesh_ray.core.events import Event, RunFinished, RunResult, RunStarted
from astromesh_ray.core.patterns.base import Pattern
from astromesh_ray.core.peers import Peer
from astromesh_ray.core.providers.base import Provider
from astromesh_ray.core.stages import Stages
from astromesh_ray.core.steps import deadline_exceeded
from astromesh_ray.core.tools.base import Toolset
from astromesh_ray.core.tools.index import ToolIndex
from astromesh_ray.core.trace import Trace, TraceContext, new_trace_id
from astromesh_ray.errors import AstromeshError, RunError

log = logging.getLogger("astromesh.runtime")


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
    ) -> None:
        self.name = name
        self.models = dict(models)
        self.pattern = pattern
        self.stages = stages
        self.max_iterations = max_iterations
        self.timeout_s = timeout_s
        self.toolsets = list(toolsets)
        self.allowed_tools = list(allowed_tools) if allowed_tools is not None else None
        self.peers = dict(peers or {})
        self.parameters = dict(parameters or {})
        # Where this runtime runs (process, or Ray replica and node): spans carry it.
        self.where = dict(where) if where else None
        self.tools: ToolIndex | None = None
        self._starting: asyncio.Lock | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """List every toolset's tools (once; later calls return at once)."""
        if self.tools is not None:
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self.tools is None:
                self.tools = await ToolIndex.build(self.toolsets, self.allowed_tools)

    async def aclose(self) -> None:
        """Close the toolsets and the model clients (each once)."""
        for toolset in self.toolsets:
            await toolset.aclose()
        closed: set[int] = set()
        for provider in self.models.values():
            if id(provider) not in closed:
                closed.add(id(provider))
                await provider.aclose()

    # -- turns -----------------------------------------------------------------------------

    async def run(self, request: RunRequest) -> RunResult:
        """Run one turn to its answer (no token streaming).

        Nobody else reads these events, so one timeout bounds the whole turn here and
        the steps need no deadline of their own (``RunContext.bounded``).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s(request)
        turn = _Turn()
        result: RunResult | None = None
        try:
            async with asyncio.timeout_at(deadline):
                async for event in self._events(request, deadline=deadline, turn=turn):
                    if isinstance(event, RunFinished):
                        result = event.result
        except TimeoutError:
            if turn.ctx is None or turn.state is None or loop.time() < deadline:
                raise
            error = deadline_exceeded(turn.ctx)
            await self._finish(turn.ctx, turn.state, error)
            _attach(error, turn.ctx.run_id, turn.state, True)
            raise error from None
        if result is None:
            raise AssertionError("a run ends with run_finished or raises")
        return result

    def stream(self, request: RunRequest) -> AsyncIterator[Event]:
        """Run one turn, yielding events as they happen; the last is ``RunFinished``.

        The time the reader takes between events is not the agent's: each step
        bounds its own waits by the deadline instead."""
        deadline = asyncio.get_running_loop().time() + self._timeout_s(request)
        return self._events(request, deadline=deadline, turn=None)

    def _timeout_s(self, request: RunRequest) -> float:
        if request.deadline_s is not None:  # a sub-run: what its caller has left
            return min(self.timeout_s, request.deadline_s)
        return self.timeout_s

    async def _events(
        self, request: RunRequest, *, deadline: float, turn: _Turn | None
    ) -> AsyncIterator[Event]:
        if self.tools is None:
            await self.start()
        assert self.tools is not None
        request.check()
        parent = TraceContext.parse(request.trace_parent)
        trace = Trace(parent.trace_id if parent else new_trace_id(), self.where)
        run_span = trace.start("run", parent.span_id if parent else None, agent=self.name)
        run_id = new_run_id()
        run_span.set(run_id=run_id)
        ctx = RunContext(
            run_id=run_id,
            agent=self.name,
            request=request,
            models=self.models,
            tools=self.tools,
            peers=self.peers,
            deadline=deadline,
            trace=run_span.context,
            lineage=(*request.lineage, self.name),
            max_iterations=self.max_iterations,
            parameters=self.parameters,
            stream_tokens=turn is None,
            bounded=turn is not None,
            where=trace.where,
        )
        state = TurnState(trace=trace)
        if turn is not None:
            turn.ctx, turn.state = ctx, state
        error: AstromeshError | None = None
        started = False
        try:
            for stage in self.stages.prepare:
                await _in_stage(stage.name, stage.prepare(ctx, state))
            yield RunStarted(
                run_id=run_id,
                agent=self.name,
                session_id=request.session_id,
                trace_id=trace.trace_id,
                parent_run_id=request.parent_run_id,
            )
            started = True
            events = self.pattern.run(ctx, state)
            for transformer in self.stages.transformers:
                events = transformer.transform(ctx, state, events)
            async for event in events:
                yield event
            if state.answer is None:
                raise RunError(
                    f"pattern {self.pattern.name!r} ended without an answer", run_id=run_id
                )
        except AstromeshError as exc:
            error = exc
        except Exception as exc:  # a bug: report it as one, with the partial trace
            log.exception("run %s of agent %r failed", run_id, self.name)
            error = RunError(
                f"internal error in agent {self.name!r}: {type(exc).__name__}: {exc}",
                run_id=run_id,
                step=len(state.steps),
            )
            error.__cause__ = exc
        finally:
            if error is None and state.answer is None:
                # The consumer stopped early (closed the stream) or the task was
                # cancelled: the run span still ends.
                run_span.end("abandoned")
        await self._finish(ctx, state, error)
        if error is not None:
            _attach(error, run_id, state, started)
            raise error
        run_span.set(usage=state.usage.to_dict())
        run_span.end()
        assert state.answer is not None
        yield RunFinished(
            result=RunResult(
                run_id=run_id,
                agent=self.name,
                answer=state.answer,
                steps=state.steps,
                usage=state.usage,
                trace=trace.spans,
                trace_id=trace.trace_id,
                session_id=request.session_id,
                parent_run_id=request.parent_run_id,
                messages=state.messages,
                where=dict(trace.where),
            )
        )

    async def _finish(
        self, ctx: RunContext, state: TurnState, error: AstromeshError | None
    ) -> None:
        for stage in self.stages.finish:
            try:
                await _in_stage(stage.name, stage.finish(ctx, state, error))
            except AstromeshError as exc:
                if error is None:
                    raise
                # The run already failed: that error is the one to report.
                log.warning("finish stage %r failed after a failed run: %s", stage.name, exc)


async def _in_stage(name: str, work: Any) -> None:
    """Await a stage's coroutine; its errors name the stage."""
    try:
        await work
    except AstromeshError as exc:
        exc.details.setdefault("stage", name)
        raise
    except Exception as exc:  # a bug in a stage: say which one
        raise RunError(f"stage {name!r} failed: {type(exc).__name__}: {exc}", stage=name) from exc


@dataclass(slots=True)
class _Turn:
    """Where ``run`` finds the context and state of the turn it bounds."""

    ctx: RunContext | None = None
    state: TurnState | None = None


def new_run_id() -> str:
    """A unique run id (32 hex digits)."""
    return new_trace_id()


def _attach(error: AstromeshError, run_id: str, state: TurnState, started: bool) -> None:
    # The run span (the first) ends with the error, and the partial trace goes with
    # the error: it is what a user debugs from.
    state.trace.spans[0].end(error.message)
    error.details.setdefault("run_id", run_id)
    error.details.setdefault("trace_id", state.trace.trace_id)
    if started or state.steps:
        error.details.setdefault("steps", [_step_dict(s) for s in state.steps])
    error.details.setdefault("trace", [s.to_dict() for s in state.trace.spans])


def _step_dict(step: Any) -> dict[str, Any]:
    from astromesh_ray.core.events import StepEvent, event_to_dict

    data: dict[str, Any] = event_to_dict(StepEvent(step=step))["step"]
    return data
