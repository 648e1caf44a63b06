"""The ``Tool`` protocol and the value a tool call returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from astromesh_ray.core.messages import ToolSchema


@dataclass
class ToolResult:
    """What a tool returned: ``content`` is what the model reads next."""

    content: str
    is_error: bool = False
    data: Any = None


@runtime_checkable
class Tool(Protocol):
    """Something a model can call by name with JSON arguments.

    ``call`` receives arguments already validated against ``schema.parameters``;
    it raises ``ToolError`` for failures the model should be told about.
    """

    @property
    def schema(self) -> ToolSchema: ...

    async def call(self, arguments: dict[str, Any]) -> ToolResult: ...
