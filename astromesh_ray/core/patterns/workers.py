"""``WorkerBatch``: plan steps that other agents (workers) carry out, concurrently,
each a sub-run through its ``Peer`` (under Serve: the worker's own application)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

from astromesh_ray.core.context import RunContext, TurnState
from astromesh_ray.core.events import (
    Delegate,
    Event,
    RunResult,
    TaskStarted,
)
from astromesh_ray.core.peers import sub_request
from astromesh_ray.core.steps.limits import bounded, deadline_exceeded
from astromesh_ray.core.steps.subruns import absorb, absorb_failure
from astromesh_ray.core.tasks import TaskOutcome, TaskSpec, task_ended, task_failed
from astromesh_ray.core.tools.agent import OPERATIONAL
from astromesh_ray.core.trace import Span
from astromesh_ray.errors import AstromeshError, RunError, RunTimeout


class WorkerBatch:
    """Run ``specs`` (``tools`` names the worker) as concurrent sub-runs; iterate for
    the events, then read ``outcomes``.  A worker failing operationally (down, slow,
    out of model calls) is that step's error; anything else fails the run."""

    def __init__(
        self,
        ctx: RunContext,
        state: TurnState,
        specs: Sequence[TaskSpec],
        *,
        fail_fast: bool = False,
    ) -> None:
        self.ctx, self.state = ctx, state
        self.specs = list(specs)
        self.fail_fast = fail_fast
        self.outcomes: dict[str, TaskOutcome] = {}

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._run()

    async def _run(self) -> AsyncIterator[Event]:
        if not self.specs:
            return
        ctx, state = self.ctx, self.state
        spans: dict[str, Span] = {}
        for spec in self.specs:
            worker = (spec.tools or [""])[0]
            spans[spec.id] = state.trace.start(
                "task_call", ctx.trace.span_id, task=spec.id, kind=spec.kind, worker=worker
            )
            yield TaskStarted(id=spec.id, kind=spec.kind, name=spec.name, input=spec.input)
            yield Delegate(
                iteration=state.iterations,
                peer=worker,
                query=spec.input,
                span_id=spans[spec.id].span_id,
            )
        futures = {asyncio.ensure_future(self._call(s, spans[s.id])): s for s in self.specs}
        try:
            while futures:
                done, _ = await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    spec = futures.pop(future)
                    result, error = future.result()
                    for event in self._merge(spec, spans[spec.id], result, error):
                        yield event
                    if error is not None and self.fail_fast:
                        raise task_failed(ctx, spec, error)
        finally:
            for future in futures:
                future.cancel()
            await asyncio.gather(*futures, return_exceptions=True)

    async def _call(
        self, spec: TaskSpec, span: Span
    ) -> tuple[RunResult | None, AstromeshError | None]:
        ctx = self.ctx
        worker = (spec.tools or [""])[0]
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
            return await bounded(ctx, ctx.peer(worker).run(request), ctx.deadline), None
        except RunTimeout as exc:
            span.end(exc)
            if ctx.remaining_s() <= 0:
                raise deadline_exceeded(ctx) from None
            return None, exc
        except OPERATIONAL as exc:
            return None, exc
        except RunError as exc:
            if exc.details.get("reason") == "max_iterations":
                return None, exc
            span.end(exc)
            raise

    def _merge(
        self, spec: TaskSpec, span: Span, result: RunResult | None, error: AstromeshError | None
    ) -> list[Event]:
        state = self.state
        where: dict[str, str] = {}
        if result is not None:
            absorb(state, span, result)
            where = dict(result.where)
        elif error is not None:
            absorb_failure(state, error)
        span.end(error.message if error is not None else None)
        output = error.message if error is not None else result.answer if result else ""
        self.outcomes[spec.id] = TaskOutcome(spec, output, error, where)
        return task_ended(
            state,
            spec,
            output=output,
            is_error=error is not None,
            iterations=result.iterations if result else 0,
            where=where,
            start_time=span.start_time or time.time(),
            duration_ms=span.duration_ms or 0.0,
            sub_run_id=result.run_id if result else None,
        )
