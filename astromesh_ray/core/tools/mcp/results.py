"""How an MCP ``CallToolResult`` becomes our ``ToolResult``:

- text blocks are joined, one per line; ``structuredContent`` becomes ``data``, and
  the text itself (as JSON) when the server sent no text;
- images, audio and resources become one-line references the model can read
  (``[image image/png, 1234 bytes]``; a text resource is followed by its text),
  their payloads kept in ``data``:
  ``{"structured": ..., "attachments": [{"type": "image", "mime_type", "data",
  "bytes"}, ...]}``;
- ``isError`` is a ``ToolResult(is_error=True)`` whose text the model reads.
"""

from __future__ import annotations

import json
from typing import Any

from mcp.types import (
    AudioContent,
    BlobResourceContents,
    CallToolResult,
    ContentBlock,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    TextResourceContents,
)

from astromesh_ray.core.tools.base import ToolResult

__all__ = ["base64_size", "to_tool_result"]


def to_tool_result(server: str, tool: str, result: CallToolResult) -> ToolResult:
    """An MCP tool result as our ``ToolResult`` (see the module docstring)."""
    attachments: list[dict[str, Any]] = []
    lines = [line for block in result.content if (line := _describe(block, attachments))]
    text = "\n".join(lines)
    structured = result.structured_content
    if not text and structured is not None:
        text = json.dumps(structured, ensure_ascii=False, default=str)
    data: Any = structured
    if attachments:
        data = {"structured": structured, "attachments": attachments}
    if result.is_error:
        if not text:
            text = f"tool {tool!r} of MCP server {server!r} failed and said nothing"
        if not text.lower().startswith("error"):
            text = f"error: {text}"
        return ToolResult(content=text, is_error=True, data=data)
    return ToolResult(content=text, data=data)


def _describe(block: ContentBlock, attachments: list[dict[str, Any]]) -> str:
    """What the model reads for one content block; payloads go to ``attachments``."""
    if isinstance(block, TextContent):
        return block.text
    if isinstance(block, ImageContent | AudioContent):
        size = base64_size(block.data)
        attachments.append(
            {"type": block.type, "mime_type": block.mime_type, "data": block.data, "bytes": size}
        )
        return f"[{block.type} {block.mime_type}, {size} bytes]"
    if isinstance(block, EmbeddedResource):
        return _resource(block.resource, attachments)
    if isinstance(block, ResourceLink):
        uri = str(block.uri)
        attachments.append(
            {"type": "resource_link", "uri": uri, "name": block.name, "mime_type": block.mime_type}
        )
        label = f" ({block.name})" if block.name and block.name != uri else ""
        return f"[resource link {uri}{label}]"
    return f"[{getattr(block, 'type', 'unknown')} content]"


def _resource(
    resource: TextResourceContents | BlobResourceContents, attachments: list[dict[str, Any]]
) -> str:
    uri = str(resource.uri)
    mime = resource.mime_type
    if isinstance(resource, TextResourceContents):
        attachments.append(
            {"type": "resource", "uri": uri, "mime_type": mime, "text": resource.text}
        )
        return (
            f"[resource {uri}, {mime or 'text'}, {len(resource.text)} characters]\n{resource.text}"
        )
    size = base64_size(resource.blob)
    attachments.append(
        {"type": "resource", "uri": uri, "mime_type": mime, "blob": resource.blob, "bytes": size}
    )
    return f"[resource {uri}, {mime or 'application/octet-stream'}, {size} bytes]"


def base64_size(payload: str) -> int:
    """Bytes that a base64 string decodes to (without decoding it)."""
    stripped = payload.strip()
    if not stripped:
        return 0
    return len(stripped) * 3 // 4 - stripped[-2:].count("=")
