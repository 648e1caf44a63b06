"""``FunctionToolset``: the agent's Python tools (``type: internal`` and ``builtin``)
as one toolset, and ``DeclaredTool`` for a tool whose YAML declares its schema."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from astromesh_ray.core.messages import ToolSchema
from astromesh_ray.core.tools.base import (
    DEFAULT_MAX_RESULT_CHARS,
    Tool,
    ToolContext,
    ToolDef,
    ToolResult,
)
from astromesh_ray.core.tools.validation import compile_validator
from astromesh_ray.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ToolLimits:
    """Per-tool limits from YAML (``timeout_seconds``, ``max_result_chars``,
    ``side_effects``: ``None`` leaves it to the tool)."""

    timeout_s: float | None = None
    max_result_chars: int = DEFAULT_MAX_RESULT_CHARS
    side_effects: bool | None = None


class DeclaredTool:
    """A tool whose name, description or parameters the agent YAML declares.

    The YAML schema is what the model sees and what arguments are checked against
    first; the inner tool then coerces them to its function's types.
    """

    def __init__(self, inner: Tool, declared: ToolSchema) -> None:
        self.inner = inner
        self.side_effects = bool(getattr(inner, "side_effects", False))
        self.side_effects_of = getattr(inner, "side_effects_of", None)
        self._schema = declared
        # The function's own schema already checks what it accepts: only a schema
        # that differs (enum, bounds, descriptions...) is worth a second pass.
        same = declared.parameters == inner.schema.parameters
        self._check = None if same else compile_validator(declared.name, declared.parameters)

    @property
    def schema(self) -> ToolSchema:
        return self._schema

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        if self._check is not None:
            self._check(arguments)
        return self.inner.validate(arguments)

    async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        return await self.inner.call(arguments, ctx)


class FunctionToolset:
    """Python tools by name; nothing to start or close."""

    name = "python"

    def __init__(self, tools: Iterable[Tool], limits: Mapping[str, ToolLimits] | None = None):
        self._tools: dict[str, Tool] = {}
        for t in tools:
            if t.schema.name in self._tools:
                raise ConfigError(
                    f"two tools are named {t.schema.name!r}",
                    hint="tool names must be unique per agent",
                )
            self._tools[t.schema.name] = t
        self._limits = dict(limits or {})

    async def list_tools(self) -> Sequence[ToolDef]:
        defs = []
        for name, t in self._tools.items():
            limits = self._limits.get(name, ToolLimits())
            defs.append(
                ToolDef(
                    schema=t.schema,
                    validate=t.validate,
                    timeout_s=limits.timeout_s,
                    max_result_chars=limits.max_result_chars,
                    side_effects=(
                        limits.side_effects
                        if limits.side_effects is not None
                        else bool(getattr(t, "side_effects", False))
                    ),
                    side_effects_of=(
                        getattr(t, "side_effects_of", None) if limits.side_effects is None else None
                    ),
                )
            )
        return defs

    async def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        return await self._tools[name].call(arguments, ctx)

    async def aclose(self) -> None:
        return None
