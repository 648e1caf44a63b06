"""Tools shipped with the runtime (``type: builtin``, or ``type: internal`` naming one
without ``function``).

``datetime_now`` and ``calculator`` are plain registered Python tools
(``basic.py``).  The others need the agent's permissions, models or services and are
built per agent by a factory in ``FACTORIES``: ``(spec, env) -> Tool``.  Built-ins
of the original Astromesh that need an outside account are refused by name with
the alternative (``REFUSED``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from astromesh_ray.core.tools.base import Tool
from astromesh_ray.core.tools.env import ToolEnv
from astromesh_ray.core.tools.python import registered_tools
from astromesh_ray.errors import ConfigError
from astromesh_ray.spec.tools import BuiltinToolSpec

BuiltinFactory = Callable[[BuiltinToolSpec, ToolEnv], Tool]

# name -> "module:factory", imported when an agent uses the tool.
FACTORIES: dict[str, str] = {
    "http_request": "astromesh_ray.core.tools.builtins.http:http_request_tool",
    "rag_query": "astromesh_ray.core.tools.builtins.rag:rag_query",
    "rag_ingest": "astromesh_ray.core.tools.builtins.rag:rag_ingest",
    "read_file": "astromesh_ray.core.tools.builtins.files:read_file",
    "write_file": "astromesh_ray.core.tools.builtins.files:write_file",
    "json_transform": "astromesh_ray.core.tools.builtins.data:json_transform",
    "cache_store": "astromesh_ray.core.tools.builtins.data:cache_store",
    "text_summarize": "astromesh_ray.core.tools.builtins.summarize:text_summarize",
    "sql_query": "astromesh_ray.core.tools.builtins.sql:sql_query",
}

# Built-ins of the original Astromesh that need a third-party account.
REFUSED: dict[str, str] = {
    "web_search": "it needs a search API account: add your search provider's MCP server "
    "(`type: mcp`), or a `type: webhook` tool calling its HTTP API with the key in "
    "${ENV} headers",
    "web_scrape": "fetch pages with the http_request built-in (hosts in "
    "permissions.network.allowed), or a `type: mcp` fetch server",
    "wikipedia": "call the Wikipedia REST API with the http_request built-in (allow "
    "en.wikipedia.org in permissions.network.allowed) or a `type: webhook` tool",
    "graphql_query": "POST the query with the http_request built-in, or declare a "
    "`type: webhook` tool for the GraphQL endpoint (its arguments as the JSON body)",
    "send_email": "it needs an SMTP account: use a `type: webhook` tool calling your mail "
    "service's API, or its `type: mcp` server",
    "send_slack": "use a `type: webhook` tool posting to a Slack incoming-webhook URL "
    "(url: ${SLACK_WEBHOOK_URL}), or a Slack `type: mcp` server",
    "send_message": "use a `type: webhook` tool calling your messaging service, or its "
    "`type: mcp` server",
    "send_webhook": "declare the endpoint as a `type: webhook` tool (url, method, "
    "headers with ${ENV} substitution, JSON Schema of the payload)",
}


def builtin_tool(spec: BuiltinToolSpec, env: ToolEnv) -> Tool:
    """The built-in tool ``spec.name`` for this agent."""
    target = FACTORIES.get(spec.name)
    if target is not None:
        module, _, name = target.partition(":")
        factory: BuiltinFactory = getattr(importlib.import_module(module), name)
        return factory(spec, env)
    if spec.name in REFUSED:
        raise ConfigError(
            f"built-in tool {spec.name!r} is not supported by astromesh-ray",
            hint=REFUSED[spec.name],
        )
    registered = registered_tools()
    if spec.name not in registered:
        names = sorted({*FACTORIES, *registered})
        raise ConfigError(
            f"there is no built-in tool {spec.name!r}",
            hint="built-in tools: " + ", ".join(names),
        )
    if spec.config:
        raise ConfigError(
            f"built-in tool {spec.name!r} takes no config",
            hint="remove config",
        )
    return registered[spec.name]
