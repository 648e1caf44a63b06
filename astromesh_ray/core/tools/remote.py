"""Python tools that declare ``resources``: each call runs where those resources are
(under Serve, a Ray task with ``num_cpus`` / ``num_gpus`` / ``memory``), not in the
agent's replica.  In one process (``astromesh run``) there is nowhere else to run:
the call runs here, as any Python tool."""

from __future__ import annotations

from typing import Any

from astromesh_ray.core.messages import ToolSchema
from astromesh_ray.core.tools.base import ToolContext, ToolResult
from astromesh_ray.core.tools.env import RemoteRunner, ToolEnv
from astromesh_ray.core.tools.python import PythonTool, to_text
from astromesh_ray.errors import AstromeshError, ConfigError, ToolError
from astromesh_ray.spec.tools import ToolResourcesSpec


class PlacedTool:
    """A ``PythonTool`` whose calls run through a ``RemoteRunner``."""

    def __init__(self, inner: PythonTool, resources: ToolResourcesSpec, runner: RemoteRunner):
        self.inner = inner
        self.resources = resources
        self.runner = runner
        self.side_effects = bool(getattr(inner, "side_effects", False))

    @property
    def schema(self) -> ToolSchema:
        return self.inner.schema

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        return self.inner.validate(arguments)

    async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        name = self.inner.schema.name
        try:
            value = await self.runner.run(self.inner.fn, arguments, self.resources)
        except AstromeshError:
            raise
        except Exception as exc:  # the user's function, or its placement, failed
            raise ToolError(f"tool {name!r} raised {type(exc).__name__}: {exc}", tool=name) from exc
        return ToolResult(content=to_text(value), data=value)


def placed(tool: Any, resources: ToolResourcesSpec, env: ToolEnv) -> Any:
    """``tool`` running with ``resources`` (see the module docstring)."""
    if not isinstance(tool, PythonTool):
        raise ConfigError(f"tool {tool.schema.name!r}: only Python functions take resources")
    if tool.context_arg is not None:
        raise ConfigError(
            f"tool {tool.schema.name!r} takes a ToolContext, which cannot travel to a "
            "Ray task: remove its resources, or its ToolContext parameter"
        )
    if env.services.remote is None:
        return tool
    return PlacedTool(tool, resources, env.services.remote)
