"""MCP tools against real servers: ``mcp-server-time`` over stdio, the SDK-written
test servers over SSE and streamable HTTP on loopback (allowed explicitly by the
agents' permissions).  Agent turns driven by the scripted model through
``build_runtime`` (one process) and through Serve over HTTP (stdio servers in their
Ray actor): results, a hanging tool cut by its timeout, a server down at start, a
tool list that changes, and a stdio server killed between two turns."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from ray import serve

from astromesh_ray.core.build import build_runtime
from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.events import ToolStep
from astromesh_ray.core.messages import CompletionRequest, ToolCall
from astromesh_ray.core.runtime import AgentRuntime
from astromesh_ray.serve.local import deploy_apps
from astromesh_ray.spec import AgentSpec, load_agent, load_config
from astromesh_ray.spec.tools import McpToolSpec
from astromesh_ray.testing import ScriptedOpenAIServer, ScriptedProvider
from astromesh_ray.testing.mcp_servers import McpTestServer, free_port

LOOPBACK = {"network": {"allowed": ["127.0.0.1"]}}
TIME_SERVER = {
    "transport": "stdio",
    "command": sys.executable,
    "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"],
}
TEST_SERVER = {
    "transport": "stdio",
    "command": sys.executable,
    "args": ["-m", "astromesh_ray.testing.mcp_servers"],
}


@pytest.fixture(scope="module")
def sse_server() -> Iterator[McpTestServer]:
    with McpTestServer("sse") as server:
        yield server


@pytest.fixture(scope="module")
def http_server() -> Iterator[McpTestServer]:
    with McpTestServer("http") as server:
        yield server


def agent_doc(
    name: str,
    tools: list[dict[str, Any]],
    *,
    model: dict[str, Any] | None = None,
    permissions: dict[str, Any] | None = LOOPBACK,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"primary": model or {"provider": "ollama", "model": "m"}},
        "orchestration": {"pattern": "react", "max_iterations": 4, "timeout_seconds": 60},
        "tools": tools,
    }
    if permissions is not None:
        spec["permissions"] = permissions
    return {"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": name}, "spec": spec}


def mcp_entry(name: str, server: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "mcp", "mcp": server, **extra}


def load(tmp_path: Path, doc: dict[str, Any]) -> AgentSpec:
    path = tmp_path / f"{doc['metadata']['name']}.agent.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_agent(path)


async def run_turn(runtime: AgentRuntime, query: str) -> Any:
    return await runtime.run(RunRequest(query=query))


def tool_steps(result: Any) -> list[ToolStep]:
    return [s for s in result.steps if isinstance(s, ToolStep)]


# -- one process: build_runtime ----------------------------------------------------------


async def test_time_server_over_stdio_in_an_agent_turn(tmp_path: Path) -> None:
    spec = load(tmp_path, agent_doc("clock", [mcp_entry("time", TIME_SERVER, prefix="time_")]))

    def first(request: CompletionRequest) -> ToolCall:
        offered = {t.name for t in request.tools}
        assert offered == {"time_get_current_time", "time_convert_time"}
        return ToolCall("c1", "time_get_current_time", {"timezone": "Europe/Paris"})

    def answer(request: CompletionRequest) -> str:
        result = request.messages[-1]
        assert result.role == "tool" and '"timezone": "Europe/Paris"' in result.content
        return "It is evening in Paris."

    provider = ScriptedProvider([first, answer])
    runtime = build_runtime(spec, provider=provider)
    await runtime.start()
    try:
        health = runtime.health()
        assert health["status"] == "ok"
        server = health["toolsets"]["time"]["server"]
        assert server["transport"] == "stdio" and server["protocol"] == "2026-07-28"
        result = await run_turn(runtime, "What time is it in Paris?")
    finally:
        await runtime.aclose()
    assert result.answer == "It is evening in Paris."
    (step,) = tool_steps(result)
    assert step.tool == "time_get_current_time" and not step.is_error
    provider.assert_consumed()


@pytest.mark.parametrize("transport", ["sse", "http"])
async def test_remote_servers_in_an_agent_turn(
    tmp_path: Path, transport: str, sse_server: McpTestServer, http_server: McpTestServer
) -> None:
    server = sse_server if transport == "sse" else http_server
    entry = mcp_entry("calc", {"transport": transport, "url": server.url}, include=["add", "echo"])
    spec = load(tmp_path, agent_doc("remote", [entry]))

    def first(request: CompletionRequest) -> list[ToolCall]:
        assert {t.name for t in request.tools} == {"add", "echo"}
        return [ToolCall("c1", "add", {"a": 20, "b": 22}), ToolCall("c2", "echo", {"text": "hi"})]

    def answer(request: CompletionRequest) -> str:
        results = {m.tool_call_id: m.content for m in request.messages if m.role == "tool"}
        assert results["c1"] == "42"
        assert '"length": 2' in results["c2"]
        return "42, and hi."

    provider = ScriptedProvider([first, answer])
    runtime = build_runtime(spec, provider=provider)
    await runtime.start()
    try:
        assert runtime.health()["toolsets"]["calc"]["server"]["transport"] == transport
        result = await run_turn(runtime, "Add 20 and 22, and echo hi.")
    finally:
        await runtime.aclose()
    assert result.answer == "42, and hi."
    assert [s.tool for s in tool_steps(result)] == ["add", "echo"]
    provider.assert_consumed()


async def test_remote_servers_need_network_permissions(
    tmp_path: Path, http_server: McpTestServer
) -> None:
    entry = mcp_entry("calc", {"transport": "http", "url": http_server.url})
    spec = load(tmp_path, agent_doc("unpermitted", [entry], permissions=None))
    runtime = build_runtime(spec, provider=ScriptedProvider(["No tools today."]))
    await runtime.start()
    try:
        report = runtime.health()["toolsets"]["calc"]
        assert report["status"] == "down" and "a loopback address" in report["error"]
        result = await run_turn(runtime, "hi")
    finally:
        await runtime.aclose()
    assert result.answer == "No tools today."


async def test_a_hanging_tool_is_cut_by_its_timeout_and_the_run_continues(
    tmp_path: Path, http_server: McpTestServer
) -> None:
    entry = mcp_entry("slow", {"transport": "http", "url": http_server.url}, timeout_seconds=1)
    spec = load(tmp_path, agent_doc("patient", [entry]))

    def after_hang(request: CompletionRequest) -> ToolCall:
        assert request.messages[-1].role == "tool"
        assert "did not answer within 1 s" in request.messages[-1].content
        return ToolCall("c2", "add", {"a": 2, "b": 3})

    def answer(request: CompletionRequest) -> str:
        assert request.messages[-1].content == "5"  # the same session still answers
        return "hang timed out; 2 + 3 is 5."

    provider = ScriptedProvider([ToolCall("c1", "hang", {}), after_hang, answer])
    runtime = build_runtime(spec, provider=provider)
    await runtime.start()
    try:
        result = await run_turn(runtime, "Hang, then add.")
    finally:
        await runtime.aclose()
    hang, add = tool_steps(result)
    assert hang.is_error and not add.is_error
    assert result.answer == "hang timed out; 2 + 3 is 5."
    provider.assert_consumed()


async def test_a_server_down_at_start_leaves_the_agent_answering(tmp_path: Path) -> None:
    port = free_port()
    entry = mcp_entry("later", {"transport": "http", "url": f"http://127.0.0.1:{port}/mcp"})
    spec = load(tmp_path, agent_doc("hopeful", [entry]))

    def answer(request: CompletionRequest) -> str:
        assert not request.tools
        return "I can answer without tools."

    provider = ScriptedProvider([answer])
    runtime = build_runtime(spec, provider=provider)
    await runtime.start()
    try:
        health = runtime.health()
        assert health["status"] == "degraded"
        report = health["toolsets"]["later"]
        assert report["status"] == "down" and report["tools"] == 0
        assert "ConnectError" in report["error"]
        result = await run_turn(runtime, "hello")
        assert result.answer == "I can answer without tools."
        # The server comes up: its tools are picked up without a restart.
        with McpTestServer("http", port=port):
            deadline = time.monotonic() + 30
            while runtime.tools is None or "add" not in runtime.tools.names:
                assert time.monotonic() < deadline, runtime.health()
                await asyncio.sleep(0.2)
            assert runtime.health()["status"] == "ok"
    finally:
        await runtime.aclose()


async def test_a_tool_list_change_reaches_the_runtime(tmp_path: Path) -> None:
    spec = load(tmp_path, agent_doc("growing", [mcp_entry("grow", TEST_SERVER)]))

    def second_turn(request: CompletionRequest) -> ToolCall:
        assert "extra" in {t.name for t in request.tools}
        return ToolCall("c2", "extra", {"text": "loud"})

    provider = ScriptedProvider(
        [
            ToolCall("c1", "enable_extra", {}),
            "Enabled.",
            second_turn,
            lambda request: f"It says {request.messages[-1].content}.",
        ]
    )
    runtime = build_runtime(spec, provider=provider)
    await runtime.start()
    try:
        assert runtime.tools is not None and "extra" not in runtime.tools.names
        await run_turn(runtime, "Enable the extra tool.")
        deadline = time.monotonic() + 30
        while "extra" not in runtime.tools.names:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        result = await run_turn(runtime, "Shout loud.")
    finally:
        await runtime.aclose()
    assert result.answer == "It says LOUD."
    provider.assert_consumed()


# -- through Serve over HTTP -------------------------------------------------------------


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer() as server:
        yield server


@pytest.fixture(scope="module")
def api(
    serve_url: str,
    llm: ScriptedOpenAIServer,
    sse_server: McpTestServer,
    http_server: McpTestServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mcp-config")
    (root / "agents").mkdir()
    model = {"provider": "openai_compat", "model": "scripted-model", "endpoint": llm.url}
    docs = [
        agent_doc("mcp-time", [mcp_entry("time", TIME_SERVER, prefix="time_")], model=model),
        agent_doc("mcp-stdio", [mcp_entry("tools", TEST_SERVER)], model=model),
        agent_doc(
            "mcp-sse", [mcp_entry("calc", {"transport": "sse", "url": sse_server.url})], model=model
        ),
        agent_doc(
            "mcp-http",
            [mcp_entry("calc", {"transport": "http", "url": http_server.url})],
            model=model,
        ),
    ]
    for doc in docs:
        path = root / "agents" / f"{doc['metadata']['name']}.agent.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    apps = deploy_apps(load_config(root), config_dir=root)
    try:
        yield serve_url
    finally:
        for name in reversed(apps):
            serve.delete(name)


def post_run(api: str, agent: str, query: str) -> dict[str, Any]:
    reply = httpx.post(f"{api}/v1/agents/{agent}/run", json={"query": query}, timeout=120)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def test_time_server_turn_through_serve(api: str, llm: ScriptedOpenAIServer) -> None:
    llm.add_steps(
        {
            "tool_calls": [
                {"name": "time_get_current_time", "arguments": {"timezone": "Asia/Tokyo"}}
            ]
        },
        "Tokyo time found.",
    )
    body = post_run(api, "mcp-time", "What time is it in Tokyo?")
    assert body["answer"] == "Tokyo time found."
    step = body["steps"][0]
    assert step["tool"] == "time_get_current_time" and not step["is_error"]
    assert '"timezone": "Asia/Tokyo"' in step["result"]
    offered = {t["function"]["name"] for t in llm.requests[-2]["tools"]}
    assert offered == {"time_get_current_time", "time_convert_time"}


@pytest.mark.parametrize("agent", ["mcp-sse", "mcp-http"])
def test_remote_server_turn_through_serve(api: str, llm: ScriptedOpenAIServer, agent: str) -> None:
    llm.add_steps(
        {"tool_calls": [{"name": "echo", "arguments": {"text": agent}}]},
        "Echoed.",
    )
    body = post_run(api, agent, "Echo your name.")
    assert body["answer"] == "Echoed."
    step = body["steps"][0]
    assert step["tool"] == "echo" and not step["is_error"]
    assert f'"text": "{agent}"' in step["result"]


def test_a_killed_stdio_server_is_restarted_by_its_actor(
    api: str, llm: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    import ray

    from astromesh_ray.serve.actor_client import ACTOR_NAMESPACE
    from astromesh_ray.serve.tools import mcp_actor_name

    llm.add_steps({"tool_calls": [{"name": "pid", "arguments": {}}]}, "Noted.")
    first = post_run(api, "mcp-stdio", "Which process serves you?")
    served_by = int(first["steps"][0]["result"])
    # The server runs in the agent's actor, which knows its pid.
    spec = load(tmp_path, agent_doc("mcp-stdio", [mcp_entry("tools", TEST_SERVER)]))
    entry = spec.spec.tools[0]
    assert isinstance(entry, McpToolSpec)
    actor = ray.get_actor(mcp_actor_name("mcp-stdio/tools", entry.mcp), namespace=ACTOR_NAMESPACE)
    assert ray.get(actor.pid.remote(), timeout=30) == served_by
    assert served_by != os.getpid()

    os.kill(served_by, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while ray.get(actor.health.remote(), timeout=30)["status"] != "down":
        assert time.monotonic() < deadline
        time.sleep(0.05)

    llm.add_steps({"tool_calls": [{"name": "add", "arguments": {"a": 4, "b": 5}}]}, "Nine.")
    second = post_run(api, "mcp-stdio", "Add 4 and 5.")
    step = second["steps"][0]
    assert step["tool"] == "add" and not step["is_error"] and step["result"] == "9"
    health = ray.get(actor.health.remote(), timeout=30)
    assert health["status"] == "ok" and health["restarts"] == 1
    assert health["pid"] not in (None, served_by)
