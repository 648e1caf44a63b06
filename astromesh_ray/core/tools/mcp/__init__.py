"""MCP servers as toolsets (``type: mcp``): stdio subprocesses, SSE and streamable
HTTP servers, through the official ``mcp`` SDK.

- ``connection``: the ``McpConnection`` protocol every transport implements, and how
  MCP results become our ``ToolResult``;
- ``session``: one ``mcp.Client`` session kept open in a task of its own, restarted
  when it died (what stdio and remote connections share);
- ``stdio`` / ``remote``: the two kinds of server;
- ``toolset``: ``McpToolset`` (discovery, filters, prefixes, ``list_changed``) and the
  builder ``build_mcp_toolsets``.

Importing this package does not import the ``mcp`` SDK; the modules that need it do.
"""
