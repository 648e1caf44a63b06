"""``spec.chain``: agents run after this one answered (original Astromesh).

Each ``on_complete`` step renders its ``when`` over ``output`` (``answer`` and the
structured ``data``); when it is truthy, the step's agent is asked ``input``
through its ``Peer``, as a sub-run in this run's trace, with retries and its own
timeout.  A ``when`` or ``input`` that cannot be rendered (``output.data.score``
without an output schema) is that step's error, never a silent skip.  With
``on_error: continue`` a failed step is recorded and the turn keeps its answer;
with ``fail`` the turn fails.  A sub-run that times out (the step's
``timeout_seconds``, or the peer's own) is the step's failure; only this turn's
own deadline fails the turn.  Every step, run or not, is a ``chain`` step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import jinja2

from astromesh_ray.core.context import RunContext, TurnState
from astromesh_ray.core.events import ChainStepRecord, Delegate, Event
from astromesh_ray.core.peers import sub_request
from astromesh_ray.core.steps.limits import LimitReached, bounded
from astromesh_ray.core.steps.records import record
from astromesh_ray.core.steps.subruns import absorb, absorb_failure
from astromesh_ray.errors import AstromeshError, RunError, RunTimeout
from astromesh_ray.spec.chain import ChainStepSpec
from astromesh_ray.spec.templates import evaluate, is_template, render

_FALSE = ("", "false", "0", "none", "no", "off")


class ChainSteps:
    """The ``spec.chain`` steps of an agent, run after each answered turn."""

    name = "chain"

    def __init__(self, steps: Sequence[ChainStepSpec], *, sleep: Any = asyncio.sleep) -> None:
        self.steps = list(steps)
        self._sleep = sleep  # injectable: tests do not wait out the backoff

    async def run(self, ctx: RunContext, state: TurnState) -> AsyncIterator[Event]:
        variables = {
            "output": {"answer": state.answer or "", "data": state.data},
            "query": ctx.request.query,
        }
        for index, step in enumerate(self.steps):
            where = f"spec.chain.on_complete[{index}]"
            try:
                go = _holds(step.when, variables)
                text = render(step.input, **variables) if go else ""
            except jinja2.TemplateError as exc:
                problem = f"{where}: cannot render: {exc}"
                async for event in self._failed(ctx, state, step, "", problem, 0):
                    yield event
                continue
            if not go:
                yield record(
                    state,
                    ChainStepRecord(
                        agent=step.agent, ran=False, input="", answer=None, error=None, attempts=0
                    ),
                )
                continue
            yield Delegate(iteration=state.iterations, peer=step.agent, query=text)
            answer, sub_run, error, attempts = await self._attempts(ctx, state, step, text)
            if error is not None:
                async for event in self._failed(ctx, state, step, text, error, attempts):
                    yield event
                continue
            yield record(
                state,
                ChainStepRecord(
                    agent=step.agent,
                    ran=True,
                    input=text,
                    answer=answer,
                    error=None,
                    attempts=attempts,
                    sub_run_id=sub_run,
                ),
            )

    async def _attempts(
        self, ctx: RunContext, state: TurnState, step: ChainStepSpec, text: str
    ) -> tuple[str | None, str | None, str | None, int]:
        """(answer, sub-run id, error, attempts made) of running ``step``'s agent.
        Retrying stops early when the wait before the next try would outlast the turn."""
        error: str | None = None
        made = 0
        for attempt in range(1, step.retry.max_attempts + 1):
            if attempt > 1:
                delay = step.retry.initial_delay_s * (
                    0
                    if step.retry.backoff == "none"
                    else 1
                    if step.retry.backoff == "fixed"
                    else 2 ** (attempt - 2)
                )
                if delay >= ctx.remaining_s():
                    error = f"{error} (no time left to wait {delay:.3g} s for another try)"
                    break
                await self._sleep(delay)
            made = attempt
            span = state.trace.start("chain", ctx.trace.span_id, agent=step.agent, attempt=attempt)
            limit = (
                ctx.remaining_s()
                if step.timeout_s is None
                else min(step.timeout_s, ctx.remaining_s())
            )
            try:
                request = sub_request(
                    target=step.agent,
                    query=text,
                    run_id=ctx.run_id,
                    lineage=ctx.lineage,
                    remaining_s=limit,
                    trace_parent=span.context.traceparent,
                    caller=ctx.caller,
                )
                loop = asyncio.get_running_loop()
                result = await bounded(ctx, ctx.peer(step.agent).run(request), loop.time() + limit)
            except LimitReached:
                error = f"agent {step.agent!r} did not answer within {limit:.3g} s"
                span.end(error)
                continue
            except AstromeshError as exc:
                if isinstance(exc, RunTimeout) and ctx.remaining_s() <= 0:
                    span.end("run timeout")  # this turn's own deadline: the turn fails
                    raise
                # Any other failure of the sub-run is this step's (a RunTimeout with
                # time left is the peer's own, shorter, timeout_seconds).
                error = f"agent {step.agent!r} failed: {exc.message}"
                span.end(error)
                absorb_failure(state, exc)
                continue
            # Its model calls are counted in the turn's iterations (not bounded by
            # them: the turn answered).
            absorb(state, span, result)
            span.end()
            return result.answer, result.run_id, None, attempt
        return None, None, error, made

    async def _failed(
        self,
        ctx: RunContext,
        state: TurnState,
        step: ChainStepSpec,
        text: str,
        error: str,
        attempts: int,
    ) -> AsyncIterator[Event]:
        yield record(
            state,
            ChainStepRecord(
                agent=step.agent,
                ran=attempts > 0,
                input=text,
                answer=None,
                error=error,
                attempts=attempts,
            ),
        )
        if step.on_error == "fail":
            raise RunError(
                f"chain step to agent {step.agent!r} failed: {error}",
                hint="set on_error: continue to keep the answer when it fails",
                run_id=ctx.run_id,
                reason="chain_failed",
            )


def _holds(when: str | None, variables: dict[str, Any]) -> bool:
    """Whether a step's ``when`` holds: a bare expression by its value, a template
    by what it renders (``False``, ``0``, ``no``... and empty are false)."""
    if when is None:
        return True
    if is_template(when):
        return render(when, **variables).strip().lower() not in _FALSE
    return bool(evaluate(when, **variables))
