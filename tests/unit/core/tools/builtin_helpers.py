"""Building the per-agent built-ins without a runtime: an agent spec, a ``ToolEnv``
over this process's tool services, and a ``ToolContext`` for a call."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from astromesh_ray.core.context import Caller
from astromesh_ray.core.providers.base import Provider
from astromesh_ray.core.tools.base import Tool, ToolContext, ToolResult
from astromesh_ray.core.tools.builtins import builtin_tool
from astromesh_ray.core.tools.env import ToolEnv, ToolServices
from astromesh_ray.core.tools.services import local_tool_services
from astromesh_ray.spec import AgentSpec
from astromesh_ray.spec.tools import BuiltinToolSpec


def agent_spec(name: str = "tester", **spec: Any) -> AgentSpec:
    body: dict[str, Any] = {"model": {"primary": {"provider": "ollama", "model": "m"}}}
    body.update(spec)
    return AgentSpec.model_validate(
        {"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": name}, "spec": body}
    )


def tool_env(
    workdir: Path,
    *,
    read: list[str] | None = None,
    write: list[str] | None = None,
    filesystem: bool = True,
    services: ToolServices | None = None,
    name: str = "tester",
) -> ToolEnv:
    permissions: dict[str, Any] = {}
    if filesystem:
        permissions["filesystem"] = {"read": read or [], "write": write or []}
    return ToolEnv(
        agent=agent_spec(name, permissions=permissions),
        services=services or local_tool_services(),
        workdir=workdir,
    )


def make_tool(name: str, env: ToolEnv, **config: Any) -> Tool:
    return builtin_tool(BuiltinToolSpec(name=name, type="builtin", config=config), env)


def context(
    *,
    session_id: str | None = "s1",
    caller: str = "anonymous",
    run_id: str = "run-1",
    models: Mapping[str, Provider] | None = None,
) -> ToolContext:
    return ToolContext(
        run_id=run_id,
        agent="tester",
        session_id=session_id,
        caller=Caller(caller),
        deadline=asyncio.get_running_loop().time() + 30,
        trace_parent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
        lineage=(),
        models=dict(models or {}),
    )


async def call(tool: Tool, ctx: ToolContext | None = None, **arguments: Any) -> ToolResult:
    """Validate like the tool step does, then call."""
    return await tool.call(tool.validate(arguments), ctx or context())
