"""What a sub-run of another agent (a worker, an agent stage, a swarm member, a chain
step, a delegation) leaves its caller: one way, for every pattern."""

from __future__ import annotations

from astromesh_ray.core.context import TurnState
from astromesh_ray.core.events import RunResult
from astromesh_ray.core.trace import Span
from astromesh_ray.errors import AstromeshError


def absorb(state: TurnState, span: Span, result: RunResult) -> None:
    """A finished sub-run's usage, model calls and spans become the caller's; its
    span records the sub-run's id and where it ran."""
    state.usage = state.usage + result.usage
    state.iterations += result.iterations
    state.trace.extend(result.trace)
    span.locate(result.where)
    span.set(sub_run_id=result.run_id)


def absorb_failure(state: TurnState, error: AstromeshError) -> None:
    """A failed sub-run's spans and model calls (its error carries them) become the
    caller's, when the caller goes on without it."""
    state.trace.extend(s for s in error.details.get("trace") or [] if isinstance(s, dict))
    state.iterations += int(error.details.get("iterations") or 0)
