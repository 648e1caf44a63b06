"""Tools: the ``Toolset`` and ``Tool`` interfaces, Python tools by decorator, the
per-agent ``ToolIndex``."""

from astromesh_ray.core.tools.base import Tool, ToolContext, ToolDef, ToolResult, Toolset
from astromesh_ray.core.tools.function import DeclaredTool, FunctionToolset, ToolLimits
from astromesh_ray.core.tools.index import ToolIndex
from astromesh_ray.core.tools.python import PythonTool, registered_tools, tool

__all__ = [
    "DeclaredTool",
    "FunctionToolset",
    "PythonTool",
    "Tool",
    "ToolContext",
    "ToolDef",
    "ToolIndex",
    "ToolLimits",
    "ToolResult",
    "Toolset",
    "registered_tools",
    "tool",
]
