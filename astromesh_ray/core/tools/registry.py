"""The tools one agent may call, and the one place tool calls are validated and run."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from astromesh_ray.core.messages import ToolCall, ToolSchema
from astromesh_ray.core.tools.base import Tool, ToolResult
from astromesh_ray.core.tools.validation import validate_arguments
from astromesh_ray.errors import ConfigError, ToolError


@dataclass
class DeclaredTool:
    """A tool whose name, description or parameters the agent YAML declares.

    The YAML schema is what the model sees and what arguments are checked against;
    the inner tool still validates its own signature when called.
    """

    inner: Tool
    declared: ToolSchema

    @property
    def schema(self) -> ToolSchema:
        return self.declared

    async def call(self, arguments: dict[str, Any]) -> ToolResult:
        return await self.inner.call(arguments)


class ToolRegistry:
    """Tools by name.  ``call`` never raises for a tool's own failure: the model is
    told what went wrong (an error ``ToolResult``) so it can correct itself."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.add(t)

    def add(self, tool: Tool) -> None:
        name = tool.schema.name
        if name in self._tools:
            raise ConfigError(
                f"two tools are named {name!r}", hint="tool names must be unique per agent"
            )
        self._tools[name] = tool

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def __len__(self) -> int:
        return len(self._tools)

    def schemas(self) -> list[ToolSchema]:
        return [t.schema for t in self._tools.values()]

    async def call(self, call: ToolCall) -> tuple[ToolResult, float]:
        """Run one tool call; returns the result and its duration in seconds."""
        started = time.perf_counter()
        tool = self._tools.get(call.name)
        if tool is None:
            available = ", ".join(self._tools) or "(none)"
            result = ToolResult(
                content=f"error: there is no tool named {call.name!r}; "
                f"available tools: {available}",
                is_error=True,
            )
            return result, time.perf_counter() - started
        if call.invalid_arguments is not None:
            result = ToolResult(
                content=f"error: the arguments of this call to {call.name!r} were not a JSON "
                f"object: {call.invalid_arguments[:200]!r}; call it again with a JSON object "
                "matching its parameters",
                is_error=True,
            )
            return result, time.perf_counter() - started
        try:
            validate_arguments(call.name, tool.schema.parameters, call.arguments)
            result = await tool.call(call.arguments)
        except ToolError as exc:
            result = ToolResult(content=f"error: {exc}", is_error=True)
        except Exception as exc:
            result = ToolResult(
                content=f"error: tool {call.name!r} raised {type(exc).__name__}: {exc}",
                is_error=True,
            )
        return result, time.perf_counter() - started
