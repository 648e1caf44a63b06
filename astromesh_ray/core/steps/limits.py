"""The run's limits, as every step enforces them: the deadline and ``max_iterations``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from astromesh_ray.core.context import RunContext, TurnState
from astromesh_ray.errors import RunLimitExceeded, RunTimeout

T = TypeVar("T")


def deadline_exceeded(ctx: RunContext, state: TurnState | None = None) -> RunTimeout:
    """The error for a run whose deadline passed (the runtime adds the partial trace),
    naming what it was doing when a pattern said (``TurnState.doing``)."""
    within = (
        f"the {ctx.request.deadline_s:.3g} s its caller had left"
        if ctx.deadline_from_caller
        else "its timeout_seconds"
    )
    doing = state.doing if state is not None else None
    return RunTimeout(
        f"agent {ctx.agent!r} did not answer within {within}" + (f" (in {doing})" if doing else ""),
        hint="raise spec.orchestration.timeout_seconds or use a faster model",
        run_id=ctx.run_id,
    )


def iterations_exhausted(ctx: RunContext, state: TurnState) -> RunLimitExceeded:
    """The error for a run that spent ``max_iterations`` model calls without answering."""
    return RunLimitExceeded(
        f"no final answer after max_iterations={ctx.max_iterations} model calls",
        hint="raise spec.orchestration.max_iterations, or make the tools answer "
        "what the model needs",
        run_id=ctx.run_id,
        step=len(state.steps),
        reason="max_iterations",
    )


class LimitReached(Exception):
    """A step's own limit, shorter than the run's deadline, passed (``bounded``)."""


async def bounded(ctx: RunContext, awaitable: Awaitable[T], when: float) -> T:
    """``awaitable`` under the deadline ``when``.  When ``when`` passes: past the run's
    own deadline, ``RunTimeout``; before it (a tool's own limit), ``LimitReached``.  A
    ``TimeoutError`` that ``awaitable`` raises itself is not ours: it propagates.  When
    one timeout already bounds the whole run, only a tighter ``when`` needs one here."""
    if ctx.bounded and when >= ctx.deadline:
        return await awaitable
    try:
        async with asyncio.timeout_at(when) as timeout:
            return await awaitable
    except TimeoutError:
        if not timeout.expired():
            raise
        if when >= ctx.deadline or ctx.remaining_s() <= 0:
            raise deadline_exceeded(ctx) from None
        raise LimitReached() from None
