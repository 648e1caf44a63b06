"""From ``spec.tools`` to the agent's toolsets.

Each tool ``type`` has one builder, ``(specs of that type, ToolEnv) -> toolsets``;
``build_toolsets`` groups the agent's tool specs by type, calls each builder, and
wraps every toolset in the controls all tool types share (rate limits, dry runs,
approvals: ``core/tools/controls.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from astromesh_ray.core.messages import ToolSchema
from astromesh_ray.core.tools.agent import AgentTool, AgentToolset
from astromesh_ray.core.tools.base import Tool, Toolset
from astromesh_ray.core.tools.env import ToolEnv
from astromesh_ray.core.tools.function import DeclaredTool, FunctionToolset, ToolLimits
from astromesh_ray.core.tools.python import resolve_python_tool
from astromesh_ray.errors import ConfigError
from astromesh_ray.spec import AgentToolSpec, InternalToolSpec
from astromesh_ray.spec.tools import BuiltinToolSpec, ToolSpecBase

ToolsetBuilder = Callable[[Sequence[Any], ToolEnv], list[Toolset]]

# type -> "module:function" of its builder (imported when an agent uses that type).
BUILDERS: dict[str, str] = {
    "internal": "astromesh_ray.core.tools.builders:build_python_toolsets",
    "builtin": "astromesh_ray.core.tools.builders:build_python_toolsets",
    "agent": "astromesh_ray.core.tools.builders:build_agent_toolsets",
    "mcp": "astromesh_ray.core.tools.mcp.toolset:build_mcp_toolsets",
    "webhook": "astromesh_ray.core.tools.webhook:build_webhook_toolsets",
    "rag": "astromesh_ray.core.rag.tool:build_rag_toolsets",
    "client": "astromesh_ray.core.tools.client:build_client_toolsets",
}


def limits_of(spec: ToolSpecBase) -> ToolLimits:
    """The per-tool limits a tool spec declares."""
    return ToolLimits(
        timeout_s=spec.timeout_s,
        max_result_chars=spec.max_result_chars,
        side_effects=spec.side_effects,
    )


def _builder(kind: str) -> ToolsetBuilder:
    target = BUILDERS.get(kind)
    if target is None:
        # The loader's support check refuses these; reaching here is a bug.
        raise ConfigError(f"tool type {kind!r} is not supported")
    module, _, name = target.partition(":")
    builder: ToolsetBuilder = getattr(importlib.import_module(module), name)
    return builder


def build_toolsets(env: ToolEnv) -> list[Toolset]:
    """The agent's toolsets, one builder per tool type, each wrapped in the shared
    controls.  Building opens nothing: servers are reached when the runtime starts."""
    from astromesh_ray.core.tools.controls import with_controls

    groups: dict[str, list[ToolSpecBase]] = {}
    builders: dict[str, ToolsetBuilder] = {}
    for spec in env.agent.spec.tools:
        target = BUILDERS.get(spec.type, spec.type)
        groups.setdefault(target, []).append(spec)
        builders.setdefault(target, _builder(spec.type))
    toolsets: list[Toolset] = []
    for target, specs in groups.items():
        toolsets.extend(builders[target](specs, env))
    return with_controls(toolsets, env)


def build_python_toolsets(specs: Sequence[ToolSpecBase], env: ToolEnv) -> list[Toolset]:
    """``internal`` and ``builtin`` tools as one ``FunctionToolset``."""
    from astromesh_ray.core.tools.builtins import builtin_tool

    tools: list[Tool] = []
    limits: dict[str, ToolLimits] = {}
    for spec in specs:
        tool: Tool
        if isinstance(spec, BuiltinToolSpec):
            tool = builtin_tool(spec, env)
        else:
            assert isinstance(spec, InternalToolSpec)
            tool = resolve_python_tool(spec.name, spec.function)
            if spec.resources is not None:
                from astromesh_ray.core.tools.remote import placed

                tool = placed(tool, spec.resources, env)
        declared_parameters = spec.json_schema()
        if declared_parameters is not None:
            check_declared_parameters(spec.name, declared_parameters, tool.schema.parameters)
        if declared_parameters is not None or spec.description:
            tool = DeclaredTool(
                tool,
                ToolSchema(
                    name=spec.name,
                    description=spec.description or tool.schema.description,
                    parameters=declared_parameters or tool.schema.parameters,
                ),
            )
        tools.append(tool)
        limits[spec.name] = limits_of(spec)
    return [FunctionToolset(tools, limits)]


def build_agent_toolsets(specs: Sequence[ToolSpecBase], env: ToolEnv) -> list[Toolset]:
    """``agent`` tools (other agents, through ``env.peers``) as one toolset."""
    agents = []
    for spec in specs:
        assert isinstance(spec, AgentToolSpec)
        agents.append(
            AgentTool(
                name=spec.name,
                agent=spec.agent,
                description=spec.description or f"Ask the {spec.agent} agent.",
                limits=limits_of(spec),
            )
        )
    missing = sorted({t.agent for t in agents} - set(env.peers))
    if missing:
        raise ConfigError(
            f"agent {env.agent.name!r} calls agent(s) {', '.join(map(repr, missing))}, "
            "which cannot be reached here",
            hint="load them in the same configuration",
        )
    return [AgentToolset(agents, env.peers)]


def check_declared_parameters(
    name: str, declared: dict[str, object], actual: dict[str, object]
) -> None:
    """The YAML schema is what the model sees: it must describe the function's real
    arguments, or every call would fail validation inside the tool."""

    def props(schema: dict[str, object]) -> set[str]:
        value = schema.get("properties")
        return set(value) if isinstance(value, dict) else set()

    def required(schema: dict[str, object]) -> set[str]:
        value = schema.get("required")
        return set(value) if isinstance(value, list) else set()

    extra = sorted(props(declared) - props(actual))
    missing = sorted(required(actual) - props(declared))
    if extra or missing:
        problems = []
        if extra:
            problems.append("the function has no argument " + ", ".join(map(repr, extra)))
        if missing:
            problems.append("it requires " + ", ".join(map(repr, missing)))
        raise ConfigError(
            f"tool {name!r}: its YAML parameters do not match the function: " + "; ".join(problems),
            hint="function arguments: " + (", ".join(sorted(props(actual))) or "(none)"),
        )
