"""Tasks: the units of a pattern's work that run anywhere the agent runs.

A plan step or a fan-out branch is a small tool-using loop of one model role over
its own messages (``TaskRequest``).  ``TaskRunner`` is where it runs: in this
process (``LocalTaskRunner``: ``astromesh run``, unit tests) or on any replica of
the agent's own Serve application (``serve/tasks.py``), so independent tasks are
concurrent remote calls spread over the replicas.  Either way the caller gets a
``TaskResult`` as a value: the answer or the error, the events (tool calls and
results, model calls), usage, the model calls spent, and the spans, each saying
where and when it ran.

``core/patterns/batch.py`` runs a batch of them concurrently for a pattern.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from astromesh_ray.core.context import Caller, RunContext, RunRequest, TurnState
from astromesh_ray.core.events import (
    Event,
    TaskKind,
    Token,
    event_from_dict,
    event_to_dict,
)
from astromesh_ray.core.messages import Message, Usage
from astromesh_ray.core.trace import Span, Trace, TraceContext, new_trace_id
from astromesh_ray.errors import AstromeshError, RunError

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
        # The run's budget: its turn key lives in the ledger, shared with the run.
        budget=(
            runtime.budget.for_run(request.run_id, request.session_id)
            if runtime.budget is not None
            else None
        ),
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
