"""MCP tools, pure logic: results as ``ToolResult``s, protocol errors, discovery
filters and prefixes, name collisions, and ``McpToolset`` over a connection fake
(down at start, revived, list_changed, timeouts passed on)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import pydantic
import pytest
from mcp.shared.exceptions import MCPError
from mcp.types import (
    AudioContent,
    BlobResourceContents,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    TextResourceContents,
)

from astromesh_ray.core.context import Caller
from astromesh_ray.core.tools.base import ToolContext, ToolResult
from astromesh_ray.core.tools.function import ToolLimits
from astromesh_ray.core.tools.mcp import toolset as toolset_module
from astromesh_ray.core.tools.mcp.connection import McpToolInfo, protocol_error, server_down
from astromesh_ray.core.tools.mcp.environ import expand, expand_all
from astromesh_ray.core.tools.mcp.results import base64_size, to_tool_result
from astromesh_ray.core.tools.mcp.toolset import McpToolset, model_name, tool_defs
from astromesh_ray.core.tools.mcp.watch import backoff_s, reason_of
from astromesh_ray.errors import ConfigError, ToolError
from astromesh_ray.spec.tools import McpToolSpec

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 25


def spec(**extra: Any) -> McpToolSpec:
    body: dict[str, Any] = {
        "name": "srv",
        "type": "mcp",
        "mcp": {"transport": "stdio", "command": "x"},
        **extra,
    }
    return McpToolSpec.model_validate(body)


def info(
    name: str, *, read_only: bool = False, schema: dict[str, Any] | None = None
) -> McpToolInfo:
    parameters = schema if schema is not None else {"type": "object", "properties": {}}
    return McpToolInfo(name, f"the {name} tool", parameters, read_only)


# -- results -------------------------------------------------------------------------------


def test_text_blocks_are_joined_and_structured_content_is_data() -> None:
    result = CallToolResult(
        content=[TextContent(text="first"), TextContent(text="second")],
        structured_content={"n": 2},
    )
    mapped = to_tool_result("a/srv", "echo", result)
    assert mapped.content == "first\nsecond"
    assert mapped.data == {"n": 2} and not mapped.is_error


def test_structured_content_alone_is_also_the_text() -> None:
    mapped = to_tool_result("a/srv", "t", CallToolResult(content=[], structured_content={"x": 1}))
    assert mapped.content == '{"x": 1}' and mapped.data == {"x": 1}


def test_images_audio_and_resources_are_references_with_their_payloads_in_data() -> None:
    png = base64.b64encode(PNG).decode()
    wav = base64.b64encode(b"RIFF0000").decode()
    result = CallToolResult(
        content=[
            TextContent(text="here:"),
            ImageContent(data=png, mime_type="image/png"),
            AudioContent(data=wav, mime_type="audio/wav"),
            EmbeddedResource(
                resource=TextResourceContents(
                    uri="file:///a.txt", mime_type="text/plain", text="hi"
                )
            ),
            EmbeddedResource(
                resource=BlobResourceContents(
                    uri="file:///b.bin", blob=base64.b64encode(b"abc").decode()
                )
            ),
            ResourceLink(uri="https://example.com/r", name="report"),
        ]
    )
    mapped = to_tool_result("a/srv", "picture", result)
    assert mapped.content.splitlines() == [
        "here:",
        f"[image image/png, {len(PNG)} bytes]",
        "[audio audio/wav, 8 bytes]",
        "[resource file:///a.txt, text/plain, 2 characters]",
        "hi",
        "[resource file:///b.bin, application/octet-stream, 3 bytes]",
        "[resource link https://example.com/r (report)]",
    ]
    attachments = mapped.data["attachments"]
    assert mapped.data["structured"] is None
    assert [a["type"] for a in attachments] == [
        "image",
        "audio",
        "resource",
        "resource",
        "resource_link",
    ]
    assert base64.b64decode(attachments[0]["data"]) == PNG
    assert attachments[2]["text"] == "hi" and attachments[3]["bytes"] == 3


def test_is_error_results_are_error_results_the_model_reads() -> None:
    failed = to_tool_result(
        "a/srv", "fail", CallToolResult(content=[TextContent(text="disk full")], is_error=True)
    )
    assert failed.is_error and failed.content == "error: disk full"
    silent = to_tool_result("a/srv", "fail", CallToolResult(content=[], is_error=True))
    assert silent.is_error and "'fail' of MCP server 'a/srv' failed" in silent.content


@pytest.mark.parametrize(("payload", "size"), [(b"", 0), (b"a", 1), (b"ab", 2), (b"abc", 3)])
def test_base64_size(payload: bytes, size: int) -> None:
    assert base64_size(base64.b64encode(payload).decode()) == size


def test_protocol_errors_name_the_server_and_the_tool() -> None:
    unknown = protocol_error("a/srv", "nope", MCPError(-32602, "Unknown tool: nope"))
    assert isinstance(unknown, ToolError)
    assert "tool 'nope' of MCP server 'a/srv' refused the call" in unknown.message
    assert "MCP error -32602" in unknown.message
    closed = protocol_error("a/srv", "add", MCPError(-32000, "Connection closed"))
    assert "closed the connection" in closed.message and closed.hint
    down = server_down("a/srv", "it did not start", tool="add")
    assert down.message == "tool 'add': MCP server 'a/srv' is down: it did not start"


def test_reason_of_reads_the_first_leaf_of_an_exception_group() -> None:
    group = ExceptionGroup("outer", [ConnectionError("refused\nmore lines"), ValueError("x")])
    assert reason_of(group) == "ConnectionError: refused"


def test_restarts_back_off_exponentially_up_to_a_cap() -> None:
    waits = [backoff_s(n) for n in range(1, 10)]
    assert waits[:4] == [0.0, 0.5, 1.0, 2.0]
    assert waits == sorted(waits) and waits[-1] == 30.0


def test_environment_substitution_names_what_is_missing() -> None:
    environ = {"TOKEN": "s3cret"}
    assert expand("Bearer ${TOKEN}", environ, tool="t", where="header") == "Bearer s3cret"
    assert expand_all({"A": "${TOKEN}-x"}, environ, tool="t", where="env") == {"A": "s3cret-x"}
    with pytest.raises(ConfigError, match=r"tool 't': MCP server env 'B' uses \$\{NOPE\}"):
        expand_all({"B": "${NOPE}"}, environ, tool="t", where="env")
    with pytest.raises(ToolError, match="NOPE is not set"):
        expand("${NOPE}", environ, tool="t", where="url", error=ToolError)


# -- discovery: filters, prefixes, collisions ----------------------------------------------


def test_include_exclude_and_prefix() -> None:
    tools = [info("add", read_only=True), info("echo"), info("hang"), info("fail")]
    defs, names, skipped = tool_defs(
        spec(exclude=["hang", "fail"], prefix="calc_"),
        tools,
        ToolLimits(timeout_s=3.0, max_result_chars=500),
    )
    assert [d.name for d in defs] == ["calc_add", "calc_echo"]
    assert names == {"calc_add": "add", "calc_echo": "echo"} and skipped == {}
    add, echo = defs
    assert add.schema.description == "the add tool"
    assert add.timeout_s == 3.0 and add.max_result_chars == 500
    # side effects: whatever the server does not declare read-only
    assert not add.side_effects and echo.side_effects


def test_yaml_side_effects_override_the_read_only_hint() -> None:
    defs, _, _ = tool_defs(spec(), [info("add", read_only=True)], ToolLimits(side_effects=True))
    assert defs[0].side_effects


def test_arguments_are_checked_against_the_server_schema() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    }
    defs, _, _ = tool_defs(spec(), [info("add", schema=schema)], ToolLimits())
    assert defs[0].validate({"a": 1, "b": 2}) == {"a": 1, "b": 2}
    with pytest.raises(ToolError, match=r"invalid arguments for tool 'add': \(arguments\): 'b'"):
        defs[0].validate({"a": 1})


def test_an_empty_schema_is_an_object_and_an_invalid_one_is_left_out() -> None:
    tools = [info("bare", schema={}), info("broken", schema={"type": "object", "properties": 3})]
    defs, names, skipped = tool_defs(spec(), tools, ToolLimits())
    assert names == {"bare": "bare"}
    assert defs[0].schema.parameters == {"type": "object", "properties": {}}
    assert "broken" in skipped and "not a valid JSON Schema" in skipped["broken"]


def test_names_models_refuse_are_rewritten_and_cut() -> None:
    assert model_name("gh_", "repos/create.issue") == "gh_repos_create_issue"
    assert len(model_name("p_", "x" * 100)) == 64


def test_two_server_tools_under_one_model_name_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"'a\.b' and 'a/b' would both be called 'a_b'") as err:
        tool_defs(spec(), [info("a.b"), info("a/b")], ToolLimits())
    assert "exclude" in (err.value.hint or "")


def test_a_tool_both_included_and_excluded_is_refused_by_the_spec() -> None:
    with pytest.raises(pydantic.ValidationError, match="add both included and excluded"):
        spec(include=["add"], exclude=["add"])


# -- McpToolset over a fake connection -----------------------------------------------------


class FakeConnection:
    """An ``McpConnection`` answering from a list; ``down`` makes it unreachable."""

    key = "a/srv"

    def __init__(self, tools: list[McpToolInfo], *, down: str | None = None) -> None:
        self.tools = tools
        self.down = down
        self.calls: list[tuple[str, dict[str, Any], float | None]] = []
        self.callbacks: list[Callable[[], None]] = []
        self.closed = False

    async def list_tools(self) -> list[McpToolInfo]:
        if self.down is not None:
            raise server_down(self.key, self.down)
        return list(self.tools)

    async def call_tool(
        self, name: str, arguments: dict[str, Any], timeout_s: float | None
    ) -> ToolResult:
        self.calls.append((name, arguments, timeout_s))
        return ToolResult(content=f"{name} done")

    def on_list_changed(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)

    def health(self) -> dict[str, Any]:
        return {"status": "down" if self.down else "ok", "transport": "fake"}

    async def aclose(self) -> None:
        self.closed = True


def tool_ctx(seconds: float = 100.0) -> ToolContext:
    return ToolContext(
        run_id="r",
        agent="a",
        session_id=None,
        caller=Caller(),
        deadline=asyncio.get_running_loop().time() + seconds,
        trace_parent="",
        lineage=(),
    )


async def test_calls_go_to_the_server_name_with_the_timeout() -> None:
    connection = FakeConnection([info("add")])
    toolset = McpToolset(spec(prefix="m_"), connection, ToolLimits(timeout_s=2.0))
    assert [t.name for t in await toolset.list_tools()] == ["m_add"]
    result = await toolset.call("m_add", {"a": 1}, tool_ctx())
    assert result.content == "add done"
    assert connection.calls == [("add", {"a": 1}, 2.0)]
    # without a per-tool timeout: what is left of the run
    untimed = McpToolset(spec(), connection, ToolLimits())
    await untimed.list_tools()
    await untimed.call("add", {}, tool_ctx(seconds=7.0))
    assert 6.0 < (connection.calls[-1][2] or 0) <= 7.0
    with pytest.raises(ToolError, match="not offered by MCP server 'srv'"):
        await toolset.call("m_gone", {}, tool_ctx())
    assert toolset.health() == {
        "status": "ok",
        "tools": 1,
        "server": {"status": "ok", "transport": "fake"},
    }


async def test_a_server_down_at_start_offers_nothing_and_comes_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(toolset_module, "REVIVE_FIRST_S", 0.01)
    connection = FakeConnection([info("add")], down="connection refused")
    toolset = McpToolset(spec(), connection, ToolLimits())
    told = asyncio.Event()
    toolset.watch(told.set)
    assert await toolset.list_tools() == []
    health = toolset.health()
    assert health["status"] == "down" and "connection refused" in health["error"]
    assert health["tools"] == 0
    connection.down = None  # the server comes back: the runtime is told to list again
    await asyncio.wait_for(told.wait(), 5)
    assert [t.name for t in await toolset.list_tools()] == ["add"]
    assert toolset.health()["status"] == "ok"
    await toolset.aclose()
    assert connection.closed


async def test_list_changed_reaches_the_watchers() -> None:
    connection = FakeConnection([info("add")])
    toolset = McpToolset(spec(), connection, ToolLimits())
    seen: list[str] = []
    toolset.watch(lambda: seen.append("changed"))
    for callback in connection.callbacks:
        callback()
    assert seen == ["changed"]


async def test_include_names_the_server_lacks_show_in_health() -> None:
    toolset = McpToolset(
        spec(include=["add", "ghost"]), FakeConnection([info("add")]), ToolLimits()
    )
    await toolset.list_tools()
    assert toolset.health()["missing"] == ["ghost"]
