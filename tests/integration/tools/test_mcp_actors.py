"""The cluster bodies of the tool services on a real local Ray cluster: the stdio
MCP server's actor (shared, following list_changed, its health), the tool-state
actor (rate limits and caches shared by replicas, failing open), and Python tools
run as Ray tasks with their resources."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

import pytest
import ray

from astromesh_ray.errors import ToolError
from astromesh_ray.serve.actor_client import ACTOR_NAMESPACE
from astromesh_ray.serve.tools import (
    STATE_ACTOR,
    ActorStdioConnection,
    RayTaskRunner,
    mcp_actor_name,
    serve_tool_services,
)
from astromesh_ray.spec.tools import McpServerSpec, ToolResourcesSpec

SERVER = McpServerSpec(
    transport="stdio",
    command=sys.executable,
    args=["-m", "astromesh_ray.testing.mcp_servers"],
    max_restarts=3,
)


class Refused(ValueError):
    """An error a tool function raises (it must come back as itself)."""


def where_am_i(label: str) -> dict[str, object]:
    return {"label": label, "pid": os.getpid(), "gpus": ray.get_gpu_ids()}


async def async_double(n: int) -> int:
    await asyncio.sleep(0)
    return 2 * n


def refuse(reason: str) -> None:
    raise Refused(reason)


async def test_one_actor_serves_every_replica_and_follows_list_changed(serve_url: str) -> None:
    key = "actor-agent/tools"
    first, second = ActorStdioConnection(key, SERVER), ActorStdioConnection(key, SERVER)
    changed = asyncio.Event()
    second.on_list_changed(changed.set)
    try:
        assert "extra" not in {t.name for t in await first.list_tools()}
        assert {t.name for t in await second.list_tools()} >= {"add", "enable_extra"}
        pid = await first.pid()
        assert pid is not None and pid == await second.pid()  # one server for both
        assert (await first.call_tool("pid", {}, 10)).data == {"result": pid}
        # A change made through one replica reaches the other through the actor.
        await first.call_tool("enable_extra", {}, 10)
        await asyncio.wait_for(changed.wait(), 30)
        assert "extra" in {t.name for t in await second.list_tools()}
        assert (await second.call_tool("extra", {"text": "ok"}, 10)).content == "OK"
        health = second.health()
        assert health["status"] == "ok" and health["pid"] == pid
        assert health["actor"] == mcp_actor_name(key, SERVER)
        actor = ray.get_actor(mcp_actor_name(key, SERVER), namespace=ACTOR_NAMESPACE)
        assert ray.get(actor.pid.remote(), timeout=30) == pid
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_hanging_call_through_the_actor_is_cut_and_the_actor_answers(
    serve_url: str,
) -> None:
    connection = ActorStdioConnection("actor-agent/hang", SERVER)
    try:
        await connection.list_tools()
        with pytest.raises(ToolError, match="did not answer within 1 s"):
            await connection.call_tool("hang", {}, 1.0)
        assert (await connection.call_tool("add", {"a": 1, "b": 2}, 10)).content == "3"
    finally:
        await connection.aclose()


def test_a_changed_server_block_gets_its_own_actor() -> None:
    other = SERVER.model_copy(update={"args": [*SERVER.args, "--legacy"]})
    assert mcp_actor_name("a/t", SERVER) != mcp_actor_name("a/t", other)
    assert mcp_actor_name("a/t", SERVER) == mcp_actor_name("a/t", SERVER)


async def test_rate_limits_and_caches_are_shared_by_replicas(serve_url: str) -> None:
    replica_a, replica_b = serve_tool_services("shared"), serve_tool_services("shared")
    key = f"shared/tool-{os.getpid()}"
    assert await replica_a.rate_limiter.acquire(key, 2, 60) is None
    assert await replica_b.rate_limiter.acquire(key, 2, 60) is None
    wait = await replica_a.rate_limiter.acquire(key, 2, 60)
    assert wait is not None and 0 < wait <= 60
    cache_a, cache_b = replica_a.cache("shared"), replica_b.cache("shared")
    await cache_a.set("k", {"v": 1}, None)
    assert await cache_b.get("k") == {"v": 1}
    assert await replica_b.cache("another-agent").get("k") is None
    assert await cache_b.delete("k") and await cache_a.get("k") is None


def _wait_until_gone(name: str) -> None:
    """Until the named actor is dead (its name released), for at most a minute."""
    for _ in range(600):
        try:
            ray.get_actor(name, namespace=ACTOR_NAMESPACE)
        except ValueError:  # dead: its name went with it
            return
        time.sleep(0.1)
    raise AssertionError(f"actor {name} is still alive after ray.kill")


async def test_rate_limits_fail_open_without_the_state_actor(
    serve_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    services = serve_tool_services("open")
    key = f"open/tool-{os.getpid()}"
    assert await services.rate_limiter.acquire(key, 1, 60) is None
    assert await services.rate_limiter.acquire(key, 1, 60) is not None  # limited
    actor = ray.get_actor(STATE_ACTOR, namespace=ACTOR_NAMESPACE)
    ray.kill(actor, no_restart=True)
    _wait_until_gone(STATE_ACTOR)  # ray.kill returns before the actor is dead
    # Gone: the call is allowed, with a warning (the next lookup creates a new actor).
    with caplog.at_level(logging.WARNING, logger="astromesh.tools"):
        assert await services.rate_limiter.acquire(key, 1, 60) is None
    assert "rate limits and the tool cache fail open" in caplog.text
    assert await services.rate_limiter.acquire(key, 1, 60) is None  # a new, empty actor
    assert await services.rate_limiter.acquire(key, 1, 60) is not None


async def test_python_tools_run_as_ray_tasks_with_their_resources(serve_url: str) -> None:
    runner = RayTaskRunner()
    found = await runner.run(where_am_i, {"label": "x"}, ToolResourcesSpec(num_cpus=1))
    assert found["label"] == "x" and found["pid"] != os.getpid()
    assert await runner.run(async_double, {"n": 21}, ToolResourcesSpec(num_cpus=0.5)) == 42
    with pytest.raises(Refused, match="no way"):
        await runner.run(refuse, {"reason": "no way"}, ToolResourcesSpec())
