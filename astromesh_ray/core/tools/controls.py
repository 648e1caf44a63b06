"""The controls every tool type shares, as a wrapper around any ``Toolset``.

``with_controls`` wraps each toolset of an agent in a ``ControlledToolset`` that
applies the YAML's per-tool policy:

- ``requires_approval`` and ``side_effects`` are set on the tools' ``ToolDef``s (the
  tool step pauses the run for an approval; the dry run reads ``side_effects``);
- ``rate_limit``: each call takes a slot from the cluster-wide ``RateLimiter``
  first (per agent and tool: each tool of an MCP entry has the entry's limit); a
  limited call is a ``ToolError`` the model reads, naming the limit;
- ``permissions.execution.dry_run``: a call to a tool with side effects is
  described instead of made.

``allowed_actions`` is enforced by the ``ToolIndex`` (a tool not granted is never
offered nor called); argument validation, timeouts and the result size cap by the
tool step.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from astromesh_ray.core.tools.base import ToolContext, ToolDef, ToolResult, Toolset
from astromesh_ray.core.tools.env import RateLimiter, ToolEnv
from astromesh_ray.errors import ToolError
from astromesh_ray.spec.tools import RateLimitSpec, ToolSpecBase


@dataclass(frozen=True, slots=True)
class ToolPolicy:
    """What the YAML says about one tool entry."""

    entry: str  # the tool entry's name (spec.tools[].name)
    rate_limit: RateLimitSpec | None = None
    requires_approval: bool = False
    side_effects: bool | None = None  # None: what the toolset reports

    @staticmethod
    def of(spec: ToolSpecBase) -> ToolPolicy:
        return ToolPolicy(
            entry=spec.name,
            rate_limit=spec.rate_limit,
            requires_approval=spec.requires_approval,
            side_effects=spec.side_effects,
        )


class ControlledToolset:
    """``inner`` with the YAML's policies applied (see the module docstring).

    A tool's policy is that of the entry with its name, else that of the entry
    the whole toolset comes from (an MCP server's entry covers all its tools)."""

    def __init__(
        self,
        inner: Toolset,
        policies: dict[str, ToolPolicy],
        *,
        agent: str,
        limiter: RateLimiter,
        dry_run: bool = False,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self._policies = policies
        self._agent = agent
        self._limiter = limiter
        self._dry_run = dry_run
        self._effects: dict[str, ToolDef] = {}

    def policy(self, tool: str) -> ToolPolicy | None:
        return self._policies.get(tool) or self._policies.get(self.inner.name)

    async def list_tools(self) -> Sequence[ToolDef]:
        tools = []
        for tool in await self.inner.list_tools():
            policy = self.policy(tool.name)
            if policy is not None:
                declared = policy.side_effects is not None
                tool = replace(
                    tool,
                    requires_approval=tool.requires_approval or policy.requires_approval,
                    side_effects=bool(policy.side_effects) if declared else tool.side_effects,
                    side_effects_of=None if declared else tool.side_effects_of,
                )
            if self._dry_run and tool.side_effects and tool.side_effects_of is None:
                # Every call is only described: there is nothing to approve.
                tool = replace(tool, requires_approval=False)
            self._effects[tool.name] = tool
            tools.append(tool)
        return tools

    async def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        policy = self.policy(name)
        if self._dry_run and self._has_side_effects(name, arguments):
            return dry_run_result(name, arguments)
        if policy is not None and policy.rate_limit is not None:
            limit = policy.rate_limit
            wait = await self._limiter.acquire(
                f"{self._agent}/{name}", limit.max_calls, limit.window_seconds
            )
            if wait is not None:
                raise ToolError(
                    f"tool {name!r} is rate limited: at most {limit.max_calls} call(s) per "
                    f"{limit.window_seconds:g} s for agent {self._agent!r} "
                    f"(rate_limit of tool entry {policy.entry!r}); the next call is allowed "
                    f"in {wait:.1f} s",
                    hint="do without this tool for now, or call it later",
                    tool=name,
                    retry_after_s=round(wait, 3),
                )
        return await self.inner.call(name, arguments, ctx)

    def _has_side_effects(self, name: str, arguments: dict[str, Any]) -> bool:
        tool = self._effects.get(name)
        if tool is None:
            return False
        if tool.side_effects_of is not None:
            return tool.side_effects_of(arguments)
        return tool.side_effects

    def health(self) -> dict[str, Any] | None:
        health: Callable[[], dict[str, Any]] | None = getattr(self.inner, "health", None)
        return health() if health is not None else None

    def watch(self, callback: Callable[[], None]) -> None:
        watch: Callable[[Callable[[], None]], None] | None = getattr(self.inner, "watch", None)
        if watch is not None:
            watch(callback)

    async def aclose(self) -> None:
        await self.inner.aclose()


def dry_run_result(name: str, arguments: dict[str, Any]) -> ToolResult:
    """What the model reads instead of the result of a call made in a dry run."""
    shown = json.dumps(arguments, default=str, sort_keys=True)
    if len(shown) > 2000:
        shown = shown[:2000] + "..."
    return ToolResult(
        content=(
            f"dry run: tool {name!r} was not called (spec.permissions.execution.dry_run); "
            f"it would have been called with {shown}"
        ),
        data={"dry_run": True, "tool": name, "arguments": arguments},
    )


def with_controls(toolsets: Sequence[Toolset], env: ToolEnv) -> list[Toolset]:
    """Each toolset wrapped in the agent's policies (see the module docstring)."""
    policies = {spec.name: ToolPolicy.of(spec) for spec in env.agent.spec.tools}
    permissions = env.agent.spec.permissions
    dry_run = bool(permissions and permissions.execution and permissions.execution.dry_run)
    return [
        ControlledToolset(
            toolset,
            policies,
            agent=env.agent.name,
            limiter=env.services.rate_limiter,
            dry_run=dry_run,
        )
        for toolset in toolsets
    ]
