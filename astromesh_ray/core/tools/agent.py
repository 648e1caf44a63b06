"""``AgentToolset``: other agents as tools (``type: agent``).

The model calls the tool with ``{"query": ...}``; the other agent answers in a
sub-run (a ``Peer``) that gets the remaining deadline, the tool span as its trace
parent and the call chain, so its spans join this run's trace and its model usage
counts toward this run's.  A sub-run that fails operationally (its models down or
slow, its guardrails or budget refusing, its application unavailable, no answer
within its ``max_iterations``) is a tool error the model reads; any other failure
fails this run too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from astromesh_ray.core.messages import ToolSchema
from astromesh_ray.core.peers import Peer, sub_request
from astromesh_ray.core.tools.base import ToolContext, ToolDef, ToolResult
from astromesh_ray.core.tools.function import ToolLimits
from astromesh_ray.core.tools.validation import compile_validator
from astromesh_ray.core.trace import Span
from astromesh_ray.errors import (
    AgentUnavailable,
    AstromeshError,
    BudgetExceeded,
    GuardrailViolation,
    ProviderError,
    RunError,
    RunTimeout,
    ToolError,
)

# A sub-run failing for one of these is the other agent not answering this time:
# the model reads it and may do without.  Anything else (its configuration, a bad
# request to it, a bug, a cycle) fails the run.
OPERATIONAL: tuple[type[AstromeshError], ...] = (
    ProviderError,
    RunTimeout,
    AgentUnavailable,
    GuardrailViolation,
    BudgetExceeded,
)

QUERY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"query": {"type": "string", "description": "What to ask the agent."}},
    "required": ["query"],
    "additionalProperties": False,
}


@dataclass(frozen=True, slots=True)
class AgentTool:
    """One ``type: agent`` entry: the tool name, the agent it runs, and its text."""

    name: str
    agent: str
    description: str
    limits: ToolLimits = field(default_factory=ToolLimits)


class AgentToolset:
    """Tools that run other agents through their ``Peer``."""

    name = "agents"

    def __init__(self, tools: Sequence[AgentTool], peers: Mapping[str, Peer]) -> None:
        self._tools = {t.name: t for t in tools}
        self._peers = peers

    async def list_tools(self) -> Sequence[ToolDef]:
        return [
            ToolDef(
                schema=ToolSchema(name=t.name, description=t.description, parameters=QUERY_SCHEMA),
                validate=compile_validator(t.name, QUERY_SCHEMA),
                timeout_s=t.limits.timeout_s,
                max_result_chars=t.limits.max_result_chars,
                sub_run=True,
            )
            for t in self._tools.values()
        ]

    async def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        tool = self._tools[name]
        try:
            request = sub_request(
                target=tool.agent,
                query=str(arguments["query"]),
                run_id=ctx.run_id,
                lineage=ctx.lineage,
                remaining_s=ctx.remaining_s(),
                trace_parent=ctx.trace_parent,
                caller=ctx.caller,
                max_iterations=ctx.iterations_left,
            )
            result = await self._peers[tool.agent].run(request)
        except OPERATIONAL as exc:
            raise _failed(tool, exc) from exc
        except RunError as exc:
            if exc.details.get("reason") == "max_iterations":
                raise _failed(tool, exc) from exc
            raise  # a cycle, or a bug: not something the model can fix
        return ToolResult(
            content=result.answer,
            data=result.answer,
            usage=result.usage,
            spans=result.trace,
            sub_run_id=result.run_id,
            iterations=result.iterations,
        )

    async def aclose(self) -> None:
        return None


def _failed(tool: AgentTool, exc: AstromeshError) -> ToolError:
    # The sub-run's partial trace still belongs to this run's trace.
    spans = [Span.from_dict(s) for s in exc.details.get("trace") or [] if isinstance(s, dict)]
    return ToolError(
        f"agent {tool.agent!r} failed: {exc.message}",
        hint=exc.hint,
        tool=tool.name,
        sub_run_spans=[s.to_dict() for s in spans],
        sub_run_iterations=int(exc.details.get("iterations") or 0),
    )
