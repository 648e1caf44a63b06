"""Tool benchmark: what our tool layers add to one tool call.

Three pairs, each timed call by call in alternating blocks (so load from the rest of
the machine falls on both sides alike), the baseline first:

1. Python tool: the function called directly, against ``FunctionToolset.call`` on
   the same function as a ``PythonTool`` (argument binding, result to text).
2. MCP stdio: the test server (``astromesh_ray.testing.mcp_servers``, tool ``add``)
   called with the ``mcp`` SDK's ``Client`` over stdio from this process, against
   ``McpToolset`` over ``ActorStdioConnection``: the call goes to the agent's
   ``McpStdioActor`` (a Ray actor on a local cluster started here), which owns
   another copy of the same server.
3. MCP streamable HTTP: the same server over HTTP on loopback, called with the
   SDK's ``Client``, against ``McpToolset`` over ``RemoteConnection`` (the agent's
   network policy checks the URL once per session; its client pins the address).

It prints p50 and p95 latency per side, what our side adds at p50 and the ratio of
the p50s.

    .venv/bin/python benchmarks/tools.py
    .venv/bin/python benchmarks/tools.py --calls 100   # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import harness

from astromesh_ray.core.context import Caller
from astromesh_ray.core.tools.base import ToolContext
from astromesh_ray.core.tools.function import FunctionToolset, ToolLimits
from astromesh_ray.core.tools.mcp.remote import RemoteConnection, RemoteEndpoint
from astromesh_ray.core.tools.mcp.toolset import McpToolset
from astromesh_ray.core.tools.net import NetworkPolicy
from astromesh_ray.core.tools.python import PythonTool
from astromesh_ray.spec.agent import PermissionsSpec
from astromesh_ray.spec.tools import McpServerSpec, McpToolSpec
from astromesh_ray.testing.mcp_servers import McpTestServer

SERVER_ARGS = ["-m", "astromesh_ray.testing.mcp_servers"]
ARGUMENTS = {"a": 20, "b": 22}
WARMUP = 20
BLOCK = 25

Call = Callable[[], Awaitable[Any]]


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first.
        b: The second.
    """
    return a + b


def context() -> ToolContext:
    return ToolContext(
        run_id="bench",
        agent="bench",
        session_id=None,
        caller=Caller(),
        deadline=asyncio.get_running_loop().time() + 3600,
        trace_parent="",
        lineage=(),
    )


async def timed(call: Call, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


async def compare(baseline: Call, ours: Call, calls: int) -> tuple[list[float], list[float]]:
    """Both sides warmed up, then timed in alternating blocks of ``BLOCK`` calls."""
    await timed(baseline, WARMUP)
    await timed(ours, WARMUP)
    base: list[float] = []
    mine: list[float] = []
    while len(base) < calls:
        base += await timed(baseline, min(BLOCK, calls - len(base)))
        mine += await timed(ours, min(BLOCK, calls - len(mine)))
    return base, mine


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def row(name: str, base: list[float], mine: list[float]) -> str:
    b50, m50 = statistics.median(base) * 1000, statistics.median(mine) * 1000
    return (
        f"| {name} | {b50:.3f} | {pct(base, 0.95):.3f} | {m50:.3f} | {pct(mine, 0.95):.3f} "
        f"| {m50 - b50:.3f} | {m50 / b50:.2f}x |"
    )


def check(value: Any) -> None:
    text = getattr(value, "content", value)
    if isinstance(text, list):  # an SDK CallToolResult's content blocks
        text = text[0].text
    if str(text) != "42":
        raise AssertionError(f"unexpected tool result: {value!r}")


def checked(call: Call) -> Call:
    async def run() -> Any:
        value = await call()
        check(value)
        return value

    return run


async def python_pair(calls: int) -> str:
    toolset = FunctionToolset([PythonTool(add)])
    ctx = context()

    async def direct() -> Any:
        return add(**ARGUMENTS)

    async def ours() -> Any:
        return await toolset.call("add", dict(ARGUMENTS), ctx)

    base, mine = await compare(checked(direct), checked(ours), calls)
    return row("Python tool (direct call vs FunctionToolset)", base, mine)


def mcp_spec(server: McpServerSpec) -> McpToolSpec:
    return McpToolSpec(name="bench", type="mcp", mcp=server)


async def stdio_pair(calls: int) -> str:
    from mcp import Client, StdioServerParameters

    from astromesh_ray.serve.tools import ActorStdioConnection

    server = McpServerSpec(transport="stdio", command=sys.executable, args=SERVER_ARGS)
    params = StdioServerParameters(command=sys.executable, args=SERVER_ARGS)
    toolset = McpToolset(
        mcp_spec(server), ActorStdioConnection("bench/stdio", server), ToolLimits()
    )
    await toolset.list_tools()
    ctx = context()
    try:
        async with Client(params, cache=None) as client:

            async def direct() -> Any:
                return await client.call_tool("add", dict(ARGUMENTS))

            async def ours() -> Any:
                return await toolset.call("add", dict(ARGUMENTS), ctx)

            base, mine = await compare(checked(direct), checked(ours), calls)
    finally:
        await toolset.aclose()
    return row("MCP stdio (SDK client vs our actor)", base, mine)


async def http_pair(calls: int) -> str:
    from mcp import Client

    with McpTestServer("http") as test_server:
        server = McpServerSpec(transport="http", url=test_server.url)
        endpoint = RemoteEndpoint.from_spec("bench", server, os.environ)
        permissions = PermissionsSpec.model_validate({"network": {"allowed": ["127.0.0.1"]}})
        policy = NetworkPolicy.for_agent(permissions, own_urls=[endpoint.url])
        connection = RemoteConnection("bench/http", server, endpoint, policy)
        toolset = McpToolset(mcp_spec(server), connection, ToolLimits())
        await toolset.list_tools()
        ctx = context()
        try:
            async with Client(test_server.url, cache=None) as client:

                async def direct() -> Any:
                    return await client.call_tool("add", dict(ARGUMENTS))

                async def ours() -> Any:
                    return await toolset.call("add", dict(ARGUMENTS), ctx)

                base, mine = await compare(checked(direct), checked(ours), calls)
        finally:
            await toolset.aclose()
    return row("MCP streamable HTTP (SDK client vs McpToolset)", base, mine)


async def main(calls: int) -> None:
    import ray

    started = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=150 * 1024 * 1024,
        namespace="astromesh-bench",
        log_to_driver=False,
    )
    try:
        for line in harness.machine(extra=f", Ray {ray.__version__}"):
            print(line)
        print(f"calls per side: {calls} (after {WARMUP} warm-up calls), tool `add`")
        print()
        print(
            "| pair | baseline p50 (ms) | baseline p95 (ms) | ours p50 (ms) | ours p95 (ms) "
            "| added p50 (ms) | ours / baseline (p50) |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        print(await python_pair(calls))
        print(await stdio_pair(calls))
        print(await http_pair(calls))
    finally:
        ray.shutdown()
    print()
    print(f"total: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="timed calls per side")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    asyncio.run(main(parser.parse_args().calls))
