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
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from astromesh_ray.core.context import RunContext, RunRequest, TurnState
from astromesh_ray.core.events import Event, RunFinished, RunResult, RunStarted
from astromesh_ray.core.patterns.base import Pattern
from astromesh_ray.core.peers import Peer
from astromesh_ray.core.providers.base import Provider
from astromesh_ray.core.stages import Stages
from astromesh_ray.core.steps import bounded, deadline_exceeded
from astromesh_ray.core.streams import aclose, closing_stream
from astromesh_ray.core.tools.base import Toolset
from astromesh_ray.core.tools.index import ToolIndex
from astromesh_ray.core.trace import Trace, TraceContext, new_trace_id
from astromesh_ray.errors import AstromeshError, RunError

if TYPE_CHECKING:
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
    ) -> None:
        self.name = name
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

    async def run(self, request: RunRequest) -> RunResult:
        """Run one turn to its answer (no token streaming).

        Nobody else reads these events, so one timeout bounds the turn here and the
        steps need no deadline of their own (``RunContext.bounded``).  The finish
        stages run after the answer, outside that timeout: a turn that answered in
        time is not failed by the saving of it.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s(request)
        turn = _Turn()
        result: RunResult | None = None
        events = self._events(request, deadline=deadline, turn=turn)
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
            error = deadline_exceeded(turn.ctx)
            await self._finish(turn.ctx, turn.state, error)
            _attach(error, turn.ctx.run_id, turn.state)
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

    async def _events(
        self, request: RunRequest, *, deadline: float, turn: _Turn | None
    ) -> AsyncIterator[Event]:
        if self.tools is None:
            await self.start()
        assert self.tools is not None
        request.check()
        parent = TraceContext.parse(request.trace_parent)
        trace = Trace(
            parent.trace_id if parent else new_trace_id(),
            self.where,
            sampled=parent.sampled if parent else True,
        )
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
            deadline_from_caller=(
                request.deadline_s is not None and request.deadline_s < self.timeout_s
            ),
            where=trace.where,
        )
        state = TurnState(trace=trace)
        if turn is not None:
            turn.ctx, turn.state = ctx, state
        error: AstromeshError | None = None
        layers: list[AsyncIterator[Event]] = []
        try:
            for stage in self.stages.prepare:
                await _in_stage(stage.name, bounded(ctx, stage.prepare(ctx, state), deadline))
            yield RunStarted(
                run_id=run_id,
                agent=self.name,
                session_id=request.session_id,
                trace_id=trace.trace_id,
                parent_run_id=request.parent_run_id,
            )
            events = self.pattern.run(ctx, state)
            layers.append(events)
            if self.stages.transformers:
                events = _layer(None, events)
                for transformer in self.stages.transformers:
                    events = _layer(transformer.name, transformer.transform(ctx, state, events))
                    layers.append(events)
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
            error = _internal(self.name, exc, run_id, state)
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
            if error is None and state.answer is None:
                run_span.end("abandoned")  # the reader stopped, or the task was cancelled
        if turn is not None:
            # The turn answered (or failed) in time: what follows is not bounded.
            turn.finishing = True
            if turn.timeout is not None:
                turn.timeout.reschedule(None)
        try:
            await self._finish(ctx, state, error)
        except AstromeshError as exc:  # only raised when the run itself succeeded
            error = exc
        if error is not None:
            _attach(error, run_id, state)
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
        """Run every finish stage, each once.  A stage that fails does not stop the
        later ones, which are told the run failed with its error (the episodic log
        records a turn whose saving failed); that first failure is raised at the end,
        unless the run had already failed, whose error is the one to report."""
        failed: AstromeshError | None = None
        for stage in self.stages.finish:
            try:
                await _in_stage(stage.name, stage.finish(ctx, state, error or failed))
            except AstromeshError as exc:
                if error is None and failed is None:
                    failed = exc
                else:
                    log.warning("finish stage %r failed after a failed run: %s", stage.name, exc)
        if failed is not None:
            raise failed


def _stage_error(name: str, exc: Exception) -> AstromeshError:
    """``exc``, raised inside stage ``name``, as an error naming the stage."""
    if isinstance(exc, AstromeshError):
        exc.details.setdefault("stage", name)
        return exc
    # A bug in a stage: say which one.
    error = RunError(f"stage {name!r} failed: {type(exc).__name__}: {exc}", stage=name)
    error.__cause__ = exc
    return error


async def _in_stage(name: str, work: Awaitable[None]) -> None:
    """Await a stage's work; its errors name the stage."""
    try:
        await work
    except Exception as exc:
        raise _stage_error(name, exc) from exc


# Set on an error that came up through a transformer from below it (the pattern or
# an earlier transformer): it is not that transformer's failure.
_FROM_BELOW = "__astromesh_from_below__"


async def _layer(name: str | None, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """``events`` with what goes wrong in them named: by transformer ``name``, unless
    it came from below (``name`` None: the pattern, only marked)."""
    try:
        async with closing_stream(events) as inner:
            async for event in inner:
                yield event
    except Exception as exc:
        if name is None or getattr(exc, _FROM_BELOW, False):
            setattr(exc, _FROM_BELOW, True)
            raise
        error = _stage_error(name, exc)
        setattr(error, _FROM_BELOW, True)
        raise error from exc


def _internal(agent: str, exc: Exception, run_id: str, state: TurnState) -> RunError:
    error = RunError(
        f"internal error in agent {agent!r}: {type(exc).__name__}: {exc}",
        run_id=run_id,
        step=len(state.steps),
    )
    error.__cause__ = exc
    return error


@dataclass(slots=True)
class _Turn:
    """Where ``run`` finds the context and state of the turn it bounds."""

    ctx: RunContext | None = None
    state: TurnState | None = None
    timeout: asyncio.Timeout | None = None
    finishing: bool = False


def new_run_id() -> str:
    """A unique run id (32 hex digits)."""
    return new_trace_id()


def _attach(error: AstromeshError, run_id: str, state: TurnState) -> None:
    """End the run span with ``error`` and give the error this run's id, steps and
    partial trace: what a user debugs from.  An error that came up from a sub-run
    (another agent) carries that run's details: its spans join this run's trace (one
    trace id) and its run id moves to ``sub_run_id``."""
    details = error.details
    child_run = details.get("run_id")
    if child_run is not None and child_run != run_id:
        seen = {span.span_id for span in state.trace.spans}
        child_trace = details.get("trace")
        if isinstance(child_trace, list):
            state.trace.extend(
                s for s in child_trace if isinstance(s, dict) and s.get("span_id") not in seen
            )
        details.setdefault("sub_run_id", child_run)
    state.trace.spans[0].end(error.message)
    details["run_id"] = run_id
    details["trace_id"] = state.trace.trace_id
    details["steps"] = [_step_dict(s) for s in state.steps]
    details["trace"] = [s.to_dict() for s in state.trace.spans]


def _step_dict(step: Any) -> dict[str, Any]:
    from astromesh_ray.core.events import StepEvent, event_to_dict

    data: dict[str, Any] = event_to_dict(StepEvent(step=step))["step"]
    return data
