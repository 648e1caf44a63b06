"""``Batch``: a pattern's tasks run concurrently (plan steps, fan-out branches).

It announces each task (``task_started``; a ``delegate`` for a step a worker agent
does), relays their events as each ends, records a ``task`` step with where and
when it ran, and adds their usage, spans and model calls to the run's.  Tasks run
through the run's ``TaskRunner`` (``core/tasks.py``: here, or on any replica of the
agent's application); a worker's step is a sub-run of that agent through its
``Peer``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from astromesh_ray.core.context import RunContext, TurnState
from astromesh_ray.core.events import (
    AnswerStep,
    Delegate,
    Event,
    StepEvent,
    TaskFinished,
    TaskKind,
    TaskStarted,
    TaskStep,
)
from astromesh_ray.core.messages import Message
from astromesh_ray.core.peers import sub_request
from astromesh_ray.core.steps.limits import bounded, deadline_exceeded
from astromesh_ray.core.steps.records import record
from astromesh_ray.core.tasks import TaskRequest, TaskResult
from astromesh_ray.core.tools.agent import OPERATIONAL
from astromesh_ray.core.trace import Span
from astromesh_ray.errors import AstromeshError, RunError, RunLimitExceeded, RunTimeout


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
