"""``LocalStdioConnection`` against real stdio servers (subprocesses with pipes, no
sockets): negotiation of both protocol eras, results, timeouts that leave the
session usable, restarts of a server that died, and the restart limit."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator

import pytest

from astromesh_ray.core.tools.mcp import watch as watch_module
from astromesh_ray.core.tools.mcp.stdio import LocalStdioConnection
from astromesh_ray.errors import ToolError
from astromesh_ray.spec.tools import McpServerSpec

SERVER = [sys.executable, "-m", "astromesh_ray.testing.mcp_servers"]


def server(*args: str, max_restarts: int = 5, env: dict[str, str] | None = None) -> McpServerSpec:
    return McpServerSpec(
        transport="stdio",
        command=SERVER[0],
        args=[*SERVER[1:], *args],
        env=env or {},
        max_restarts=max_restarts,
    )


@pytest.fixture
async def connection() -> AsyncIterator[LocalStdioConnection]:
    conn = LocalStdioConnection("agent/tools", server())
    try:
        yield conn
    finally:
        await conn.aclose()


async def wait_until_gone(pid: int) -> None:
    """The process is dead and reaped (its /proc entry is gone or a zombie)."""
    for _ in range(200):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except FileNotFoundError:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"process {pid} is still running")


async def test_the_current_revision_is_negotiated_and_tools_answer(
    connection: LocalStdioConnection,
) -> None:
    tools = {t.name: t for t in await connection.list_tools()}
    assert {"add", "echo", "fail", "hang", "picture", "pid", "enable_extra"} <= set(tools)
    assert tools["add"].read_only and not tools["fail"].read_only
    assert tools["add"].input_schema["required"] == ["a", "b"]
    health = connection.health()
    assert health["status"] == "ok" and health["protocol"] == "2026-07-28"
    assert health["pid"] == connection.pid and connection.pid is not None

    added = await connection.call_tool("add", {"a": 2, "b": 3}, 10)
    assert added.content == "5" and added.data == {"result": 5}
    echoed = await connection.call_tool("echo", {"text": "hey"}, 10)
    assert echoed.data == {"text": "hey", "length": 3}
    failed = await connection.call_tool("fail", {}, 10)
    assert failed.is_error and "fail always fails" in failed.content
    picture = await connection.call_tool("picture", {}, 10)
    assert picture.content == "[image image/png, 68 bytes]"
    served_by = await connection.call_tool("pid", {}, 10)
    assert served_by.data == {"result": connection.pid}
    unknown = await connection.call_tool("nope", {}, 10)  # MCPServer: an isError result
    assert unknown.is_error and "nope" in unknown.content


async def test_a_2025_server_gets_the_initialize_handshake_and_notifications() -> None:
    conn = LocalStdioConnection("agent/old", server("--legacy"))
    changed = asyncio.Event()
    conn.on_list_changed(changed.set)
    try:
        assert "extra" not in {t.name for t in await conn.list_tools()}
        assert conn.health()["protocol"] == "2025-11-25"
        await conn.call_tool("enable_extra", {}, 10)
        await asyncio.wait_for(changed.wait(), 10)  # notifications/tools/list_changed
        assert "extra" in {t.name for t in await conn.list_tools()}
        assert (await conn.call_tool("extra", {"text": "up"}, 10)).content == "UP"
    finally:
        await conn.aclose()


async def test_list_changed_on_a_2026_session(connection: LocalStdioConnection) -> None:
    changed = asyncio.Event()
    connection.on_list_changed(changed.set)
    await connection.list_tools()
    await connection.call_tool("enable_extra", {}, 10)
    await asyncio.wait_for(changed.wait(), 10)  # the subscriptions/listen stream
    assert "extra" in {t.name for t in await connection.list_tools()}


async def test_a_hanging_call_is_cut_off_and_the_session_survives(
    connection: LocalStdioConnection,
) -> None:
    await connection.list_tools()
    pid = connection.pid
    with pytest.raises(
        ToolError, match=r"'hang' of MCP server 'agent/tools' did not answer within 0.5 s"
    ):
        await connection.call_tool("hang", {}, 0.5)
    assert (await connection.call_tool("add", {"a": 1, "b": 1}, 10)).content == "2"
    assert connection.pid == pid  # the same server: nothing was restarted
    assert connection.health()["restarts"] == 0


async def test_a_server_killed_between_calls_is_restarted_on_the_next(
    connection: LocalStdioConnection,
) -> None:
    changed: list[str] = []
    connection.on_list_changed(lambda: changed.append("changed"))
    await connection.list_tools()
    first = connection.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await wait_until_gone(first)
    for _ in range(100):  # the connection sees its transport end
        if connection.health()["status"] == "down":
            break
        await asyncio.sleep(0.02)
    assert connection.health()["status"] == "down"
    result = await connection.call_tool("echo", {"text": "back"}, 10)
    assert result.data == {"text": "back", "length": 4}
    assert connection.pid not in (None, first)
    health = connection.health()
    assert health["status"] == "ok" and health["restarts"] == 1
    assert changed == ["changed"]  # a restarted server's tools are listed again


async def test_a_server_that_will_not_start_is_down_with_its_stderr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(watch_module, "BACKOFF_BASE_S", 0.01)
    crashing = McpServerSpec(
        transport="stdio",
        command=sys.executable,
        args=["-c", "import sys; sys.stderr.write('no config file found'); sys.exit(3)"],
        max_restarts=2,
    )
    conn = LocalStdioConnection("agent/broken", crashing)
    try:
        messages = []
        for _ in range(4):
            with pytest.raises(ToolError) as err:
                await conn.list_tools()
            messages.append(err.value.message)
            await asyncio.sleep(0.05)
        assert "MCP server 'agent/broken' is down" in messages[0]
        assert "its stderr ends with: no config file found" in messages[0]
        # 3 starts in a row failed (max_restarts 2): no 4th start for a while
        assert "failed 3 times in a row (max_restarts 2)" in messages[3]
        health = conn.health()
        assert health["status"] == "down" and health["failures_in_a_row"] == 3
    finally:
        await conn.aclose()


async def test_a_missing_command_and_a_missing_variable_are_reported() -> None:
    missing = LocalStdioConnection(
        "agent/gone", McpServerSpec(transport="stdio", command="/nonexistent/mcp-server")
    )
    with pytest.raises(ToolError, match="is down: FileNotFoundError"):
        await missing.list_tools()
    await missing.aclose()
    unset = LocalStdioConnection("agent/env", server(env={"KEY": "${ASTROMESH_TEST_UNSET_VAR}"}))
    with pytest.raises(ToolError, match="ASTROMESH_TEST_UNSET_VAR is not set"):
        await unset.list_tools()
    await unset.aclose()


async def test_the_environment_reaches_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASTROMESH_TEST_SECRET", "value-42")
    script = "import os, sys; sys.stderr.write(os.environ['SEEN']); sys.exit(1)"
    conn = LocalStdioConnection(
        "agent/env",
        McpServerSpec(
            transport="stdio",
            command=sys.executable,
            args=["-c", script],
            env={"SEEN": "got ${ASTROMESH_TEST_SECRET}"},
        ),
    )
    with pytest.raises(ToolError, match="its stderr ends with: got value-42"):
        await conn.list_tools()
    await conn.aclose()
