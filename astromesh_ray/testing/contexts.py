"""A bare ``RunContext`` for tests of one piece of a turn (a guardrail, a step)
outside a runtime: no tools, no peers, no tasks, a minute to its deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from astromesh_ray.core.context import RunContext, RunRequest, TurnState
from astromesh_ray.core.providers.base import Provider
from astromesh_ray.core.tools.index import ToolIndex
from astromesh_ray.core.trace import Trace, new_trace_id

__all__ = ["bare_context", "bare_state"]


class _NoTasks:
    async def run(self, request: Any) -> Any:
        raise AssertionError("a bare context runs no tasks")


def bare_context(models: Mapping[str, Provider] | None = None, query: str = "q") -> RunContext:
    """A context for run ``run-1`` of agent ``agent`` (call inside an event loop)."""
    trace = Trace(new_trace_id())
    span = trace.start("run", None)
    return RunContext(
        run_id="run-1",
        agent="agent",
        request=RunRequest(query=query),
        models=dict(models or {}),
        tools=ToolIndex({}),
        peers={},
        deadline=asyncio.get_running_loop().time() + 60,
        trace=span.context,
        lineage=("agent",),
        max_iterations=5,
        parameters={},
        stream_tokens=False,
        bounded=False,
        deadline_from_caller=False,
        where=trace.where,
        tasks=_NoTasks(),
    )


def bare_state() -> TurnState:
    """An empty turn state with its own trace."""
    return TurnState(trace=Trace(new_trace_id()))
