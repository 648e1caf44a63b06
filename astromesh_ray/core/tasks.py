"""Tasks: the units of a pattern's work that run anywhere the agent runs.

A plan step or a fan-out branch is a small tool-using loop of one model role over
its own messages (``TaskRequest``).  ``TaskRunner`` is where it runs: in this
process (``LocalTaskRunner``: ``astromesh run``, unit tests) or on any replica of
the agent's own Serve application (``serve/tasks.py``), so independent tasks are
concurrent remote calls spread over the replicas.  Either way the caller gets a
``TaskResult`` as a value: the answer or the error, the events (tool calls and
results, model calls), usage, the model calls spent, and the spans, each saying
where and when it ran.

``run_tasks`` runs a batch of them concurrently for a pattern: it announces each
(``TaskStarted``), relays their events as each ends, records a ``task`` step with
where and when it ran, and adds their usage, spans and model calls to the run's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from astromesh_ray.core.context import Caller, RunContext, RunRequest, TurnState
from astromesh_ray.core.events import (
    AnswerStep,
    Delegate,
    Event,
    StepEvent,
    TaskFinished,
    TaskKind,
    TaskStarted,
    TaskStep,
    Token,
    event_from_dict,
    event_to_dict,
)
from astromesh_ray.core.messages import Message, Usage
from astromesh_ray.core.peers import sub_request
from astromesh_ray.core.steps.limits import bounded, deadline_exceeded
from astromesh_ray.core.steps.records import record
from astromesh_ray.core.tools.agent import OPERATIONAL
from astromesh_ray.core.trace import Span, Trace, TraceContext, new_trace_id
from astromesh_ray.errors import AstromeshError, RunError, RunLimitExceeded, RunTimeout

if TYPE_CHECKING:
    from astromesh_ray.core.runtime import AgentRuntime


@dataclass(slots=True, kw_only=True)
class TaskRequest:
    """One task: a tool-using loop of ``role`` over ``messages``, offered ``tools``
    (``None``: every tool of the agent; a list: only those), within
    ``max_iterations`` model calls and ``deadline_s`` seconds."""

    task_id: str
    kind: TaskKind
    name: str
    input: str
    role: str
    messages: list[Message]
    tools: list[str] | None
    max_iterations: int
    deadline_s: float
    run_id: str
    trace_parent: str
    lineage: tuple[str, ...]
    caller: Caller
    session_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "kind": self.kind,
            "name": self.name,
            "input": self.input,
            "role": self.role,
            "messages": [m.to_dict() for m in self.messages],
            "tools": self.tools,
            "max_iterations": self.max_iterations,
            "deadline_s": self.deadline_s,
            "run_id": self.run_id,
            "trace_parent": self.trace_parent,
            "lineage": list(self.lineage),
            "caller": self.caller.to_dict(),
            "session_id": self.session_id,
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> TaskRequest:
        return TaskRequest(
            task_id=str(data["task_id"]),
            kind=data["kind"],
            name=str(data["name"]),
            input=str(data.get("input") or ""),
            role=str(data["role"]),
            messages=[Message.from_dict(m) for m in data["messages"]],
            tools=None if data.get("tools") is None else [str(t) for t in data["tools"]],
            max_iterations=int(data["max_iterations"]),
            deadline_s=float(data["deadline_s"]),
            run_id=str(data["run_id"]),
            trace_parent=str(data["trace_parent"]),
            lineage=tuple(data.get("lineage") or ()),
            caller=Caller.from_dict(data.get("caller")),
            session_id=data.get("session_id"),
        )


@dataclass(slots=True, kw_only=True)
class TaskResult:
    """How a task ended: ``answer``, or ``error`` (the API error body); its events
    (no tokens), usage, model calls spent and spans; where and when it ran."""

    task_id: str
    answer: str
    error: dict[str, Any] | None
    events: list[Event] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    iterations: int = 0
    trace: list[Span] = field(default_factory=list)
    where: dict[str, str] = field(default_factory=dict)
    start_time: float = 0.0
    duration_ms: float = 0.0
    sub_run_id: str | None = None  # a worker's run (a plan step another agent did)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sub_run_id": self.sub_run_id,
            "task_id": self.task_id,
            "answer": self.answer,
            "error": self.error,
            "events": [event_to_dict(e) for e in self.events],
            "usage": self.usage.to_dict(),
            "iterations": self.iterations,
            "trace": [s.to_dict() for s in self.trace],
            "where": dict(self.where),
            "start_time": self.start_time,
            "duration_ms": self.duration_ms,
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> TaskResult:
        usage = {k: v for k, v in dict(data.get("usage") or {}).items() if k != "total_tokens"}
        return TaskResult(
            task_id=str(data["task_id"]),
            answer=str(data.get("answer") or ""),
            error=data.get("error"),
            events=[event_from_dict(e) for e in data.get("events") or []],
            usage=Usage(**usage),
            iterations=int(data.get("iterations") or 0),
            trace=[Span.from_dict(s) for s in data.get("trace") or []],
            where=dict(data.get("where") or {}),
            start_time=float(data.get("start_time") or 0.0),
            duration_ms=float(data.get("duration_ms") or 0.0),
            sub_run_id=data.get("sub_run_id"),
        )


class TaskRunner(Protocol):
    """Where a pattern's tasks run.  Implementations: ``LocalTaskRunner``,
    ``ServeTaskRunner`` (any replica of the agent's application)."""

    async def run(self, request: TaskRequest) -> TaskResult:
        """Run one task to its end; a task that fails returns its error as a value."""
        ...


class LocalTaskRunner:
    """Tasks run by the runtime in this process (concurrently, on its event loop)."""

    def __init__(self, runtime: AgentRuntime) -> None:
        self._runtime = runtime

    async def run(self, request: TaskRequest) -> TaskResult:
        return await self._runtime.task(request)


async def execute_task(runtime: AgentRuntime, request: TaskRequest) -> TaskResult:
    """Run ``request`` with ``runtime``'s models, tools and peers (what
    ``AgentRuntime.task`` does, wherever it is called)."""
    from astromesh_ray.core.patterns.react import tool_loop
    from astromesh_ray.core.steps.tools import RunPaused

    if runtime.tools is None:
        await runtime.start()
    assert runtime.tools is not None
    loop = asyncio.get_running_loop()
    parent = TraceContext.parse(request.trace_parent)
    trace = Trace(parent.trace_id if parent else new_trace_id(), runtime.where)
    span = trace.start(
        "task",
        parent.span_id if parent else None,
        agent=runtime.name,
        task=request.task_id,
        kind=request.kind,
        task_name=request.name,
        role=request.role,
    )
    tools = runtime.tools if request.tools is None else runtime.tools.only(request.tools)
    ctx = RunContext(
        run_id=request.run_id,
        agent=runtime.name,
        request=RunRequest(
            query=request.input,
            session_id=request.session_id,
            deadline_s=request.deadline_s,
            lineage=request.lineage[:-1],
            caller=request.caller,
        ),
        models=runtime.models,
        tools=tools,
        peers=runtime.peers,
        deadline=loop.time() + request.deadline_s,
        trace=span.context,
        lineage=request.lineage,
        max_iterations=request.max_iterations,
        parameters=runtime.parameters,
        stream_tokens=False,
        bounded=False,
        deadline_from_caller=True,
        where=trace.where,
        tasks=runtime.tasks,
        task=request.task_id,
    )
    state = TurnState(trace=trace, messages=list(request.messages))
    events: list[Event] = []
    error: AstromeshError | None = None
    try:
        async for event in tool_loop(ctx, state, request.role):
            if not isinstance(event, Token):
                events.append(event)
    except RunPaused as exc:
        error = RunError(
            f"{request.kind.replace('_', ' ')} {request.name!r} called "
            f"{', '.join(p.name for p in exc.pending)}, which need(s) the caller: only "
            "react and supervisor turns can pause",
            run_id=request.run_id,
            reason="task_paused",
        )
    except AstromeshError as exc:
        error = exc
    span.set(iterations=state.iterations)
    span.end(error)
    return TaskResult(
        task_id=request.task_id,
        answer=state.answer or "",
        error=error.to_dict() if error is not None else None,
        events=events,
        usage=state.usage,
        iterations=state.iterations,
        trace=trace.spans,
        where=dict(trace.where),
        start_time=span.start_time,
        duration_ms=span.duration_ms or 0.0,
    )


@dataclass(slots=True, kw_only=True)
class TaskSpec:
    """What a pattern asks ``run_tasks`` to run (the rest comes from the run)."""

    id: str
    kind: TaskKind
    name: str
    input: str
    role: str
    messages: list[Message]
    tools: list[str] | None = None
    max_iterations: int = 1
    # Another agent does it instead (a plan step naming a worker): a sub-run of that
    # agent through its Peer, asked the last message, within ``max_iterations``.
    worker: str | None = None


@dataclass(slots=True)
class TaskOutcome:
    """A task ended: its output, or its error (``AstromeshError``)."""

    spec: TaskSpec
    output: str
    error: AstromeshError | None
    where: dict[str, str]


class Batch:
    """A batch of tasks run concurrently; iterate it for the events, then read
    ``outcomes`` (by task id).  A task whose runner is down (``AgentUnavailable``...)
    failed like one that failed itself.  ``fail_fast``: the first failed task cancels
    the others and the run fails naming it (``task_failed``).  The run's deadline
    passing in any task raises ``RunTimeout`` for the run."""

    def __init__(
        self,
        ctx: RunContext,
        state: TurnState,
        specs: Sequence[TaskSpec],
        *,
        fail_fast: bool = False,
        parent: str | None = None,
    ) -> None:
        self.ctx = ctx
        self.state = state
        self.specs = list(specs)
        self.fail_fast = fail_fast
        self.parent = parent
        self.outcomes: dict[str, TaskOutcome] = {}

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._run()

    async def _run(self) -> AsyncIterator[Event]:
        ctx, state = self.ctx, self.state
        spans: dict[str, Span] = {}
        for spec in self.specs:
            spans[spec.id] = state.trace.start(
                "task_call",
                self.parent or ctx.trace.span_id,
                task=spec.id,
                kind=spec.kind,
                task_name=spec.name,
            )
            yield TaskStarted(id=spec.id, kind=spec.kind, name=spec.name, input=spec.input)
            if spec.worker is not None:
                yield Delegate(
                    iteration=state.iterations,
                    peer=spec.worker,
                    query=spec.input,
                    span_id=spans[spec.id].span_id,
                )
        pending: dict[asyncio.Task[TaskResult], TaskSpec] = {
            asyncio.ensure_future(self._call(spec, spans[spec.id])): spec for spec in self.specs
        }
        try:
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    spec = pending.pop(future)
                    result = future.result()
                    for event in self._merge(spec, spans[spec.id], result):
                        yield event
                    outcome = self.outcomes[spec.id]
                    if outcome.error is not None and (
                        self.fail_fast or isinstance(outcome.error, RunTimeout)
                    ):
                        if isinstance(outcome.error, RunTimeout):
                            raise deadline_exceeded(ctx)
                        raise task_failed(ctx, spec, outcome.error)
        finally:
            for future in pending:
                future.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _call(self, spec: TaskSpec, span: Span) -> TaskResult:
        if spec.worker is not None:
            return await self._worker(spec, spec.worker, span)
        ctx = self.ctx
        request = TaskRequest(
            task_id=spec.id,
            kind=spec.kind,
            name=spec.name,
            input=spec.input,
            role=spec.role,
            messages=spec.messages,
            tools=spec.tools,
            max_iterations=spec.max_iterations,
            deadline_s=max(ctx.remaining_s(), 0.001),
            run_id=ctx.run_id,
            trace_parent=span.context.traceparent,
            lineage=ctx.lineage,
            caller=ctx.caller,
            session_id=ctx.session_id,
        )
        try:
            return await bounded(ctx, ctx.tasks.run(request), ctx.deadline)
        except RunTimeout:
            span.end("run timeout")
            raise
        except OPERATIONAL as exc:  # where it runs is down or failing: the task failed
            return TaskResult(task_id=spec.id, answer="", error=exc.to_dict())
        except BaseException as exc:
            span.end(exc)
            raise

    async def _worker(self, spec: TaskSpec, worker: str, span: Span) -> TaskResult:
        """The task as a sub-run of agent ``worker``.  The worker failing
        operationally (down, slow, out of model calls) is the task's error; anything
        else (a cycle, a bug) fails the run."""
        ctx = self.ctx
        request = sub_request(
            target=worker,
            query=spec.messages[-1].content or spec.input,
            run_id=ctx.run_id,
            lineage=ctx.lineage,
            remaining_s=ctx.remaining_s(),
            trace_parent=span.context.traceparent,
            caller=ctx.caller,
            max_iterations=spec.max_iterations,
        )
        try:
            result = await bounded(ctx, ctx.peer(worker).run(request), ctx.deadline)
        except RunTimeout as exc:
            if ctx.remaining_s() <= 0:
                span.end("run timeout")
                raise deadline_exceeded(ctx) from None
            return _failed_worker(spec, exc)  # the worker's own, shorter, timeout
        except OPERATIONAL as exc:
            return _failed_worker(spec, exc)
        except RunError as exc:
            if exc.details.get("reason") != "max_iterations":
                span.end(exc)
                raise
            return _failed_worker(spec, exc)
        return TaskResult(
            task_id=spec.id,
            answer=result.answer,
            error=None,
            usage=result.usage,
            iterations=result.iterations,
            trace=result.trace,
            where=dict(result.where),
            start_time=span.start_time,
            duration_ms=(time.time() - span.start_time) * 1000,
            sub_run_id=result.run_id,
        )

    def _merge(self, spec: TaskSpec, span: Span, result: TaskResult) -> list[Event]:
        state = self.state
        error = AstromeshError.from_dict(result.error) if result.error is not None else None
        state.usage = state.usage + result.usage
        state.iterations += result.iterations
        state.trace.extend(result.trace)
        span.locate(result.where)
        span.set(iterations=result.iterations)
        if result.sub_run_id is not None:
            span.set(sub_run_id=result.sub_run_id)
        span.end(error.message if error is not None else None)
        events: list[Event] = []
        for event in result.events:
            if isinstance(event, StepEvent):
                if isinstance(event.step, AnswerStep):
                    continue  # the task's answer is its output (the task step), not the run's
                state.steps.append(event.step)
            events.append(event)
        output = error.message if error is not None else result.answer
        self.outcomes[spec.id] = TaskOutcome(spec, result.answer, error, dict(result.where))
        events += task_ended(
            state,
            spec,
            output=output,
            is_error=error is not None,
            iterations=result.iterations,
            where=dict(result.where),
            start_time=result.start_time or time.time(),
            duration_ms=result.duration_ms,
            sub_run_id=result.sub_run_id,
        )
        return events


def _failed_worker(spec: TaskSpec, error: AstromeshError) -> TaskResult:
    """A worker's failure as the task's result: its spans and model calls kept."""
    details = error.details
    return TaskResult(
        task_id=spec.id,
        answer="",
        error={k: v for k, v in error.to_dict().items() if k not in ("trace", "steps")},
        iterations=int(details.get("iterations") or 0),
        trace=[Span.from_dict(s) for s in details.get("trace") or [] if isinstance(s, dict)],
    )


def task_ended(
    state: TurnState,
    spec: TaskSpec,
    *,
    output: str,
    is_error: bool,
    iterations: int,
    where: dict[str, str],
    start_time: float,
    duration_ms: float,
    sub_run_id: str | None = None,
) -> list[Event]:
    """A task's ``task_finished`` event and its recorded ``task`` step."""
    return [
        TaskFinished(
            id=spec.id,
            kind=spec.kind,
            name=spec.name,
            is_error=is_error,
            output=output,
            where=where,
            duration_ms=duration_ms,
        ),
        record(
            state,
            TaskStep(
                id=spec.id,
                kind=spec.kind,
                name=spec.name,
                input=spec.input,
                output=output,
                is_error=is_error,
                iterations=iterations,
                where=where,
                start_time=start_time,
                duration_ms=duration_ms,
                sub_run_id=sub_run_id,
            ),
        ),
    ]


def task_failed(ctx: RunContext, spec: TaskSpec, error: AstromeshError) -> AstromeshError:
    """The run's error for a failed task under ``fail_fast``: it names the task and
    keeps the class of a limit (``RunLimitExceeded``, 504), else a ``RunError``."""
    what = spec.kind.replace("_", " ")
    cls: type[AstromeshError] = (
        RunLimitExceeded if isinstance(error, RunLimitExceeded) else RunError
    )
    return cls(
        f"{what} {spec.name!r} failed: {error.message}",
        hint=error.hint or "see the task's steps in the trace",
        run_id=ctx.run_id,
        reason="max_iterations" if cls is RunLimitExceeded else f"{spec.kind}_failed",
        task=spec.id,
        cause=error.code,
    )
