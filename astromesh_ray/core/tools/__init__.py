"""Tools: the ``Tool`` protocol, Python tools by decorator, the per-agent registry."""

from astromesh_ray.core.tools.base import Tool, ToolResult
from astromesh_ray.core.tools.python import PythonTool, registered_tools, tool
from astromesh_ray.core.tools.registry import ToolRegistry

__all__ = ["PythonTool", "Tool", "ToolRegistry", "ToolResult", "registered_tools", "tool"]
