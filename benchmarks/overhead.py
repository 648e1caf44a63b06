"""Per-turn framework overhead: astromesh-ray against LangGraph, Pydantic AI and LangChain.

One agent turn, in this process, on a scripted model that answers at once, so what is
timed is the framework alone:

- tool turn: the model asks for a tool, the tool runs, the model answers;
- no-tool turn: the model answers at once.

Each framework gets the same agent: one tool ``weather(city)`` returning a short
string, the same short system prompt, the same query, and a scripted chat model of
its own kind:

1. astromesh-ray: an Agent YAML written to a temp dir, ``load_agent``, then
   ``build_runtime(agent, provider=ScriptedProvider())``, ``await runtime.run(...)``;
2. LangGraph: ``langgraph.prebuilt.create_react_agent`` over a ``BaseChatModel`` fake
   (native async, ``bind_tools`` like a real chat model), ``ainvoke``;
3. Pydantic AI: ``Agent`` over ``FunctionModel`` with an async function, ``agent.run``;
4. LangChain: ``langchain.agents.create_agent`` (1.x) over the same fake, ``ainvoke``.

Each is timed twice: with an ``async def`` tool (most tools do I/O) and with a plain
``def`` tool, which every framework hands to a worker thread (ours too, unless the
tool is marked ``@tool(inline=True)``: an extra row shows that).  Every turn's answer,
tool result, tool call count and script consumption are checked, outside the timed
part: a benchmark of a broken turn would be worthless.

Turns of all variants are taken in blocks, in shuffled order (a fixed seed); before
each block the script waits until this process is idle, then runs ``gc.collect()``
and ``gc.freeze()``, so no full collection of another framework's heap is charged to
the block.  The first turn of a block runs on cold caches and is reported apart.  A
timed turn ends after two event-loop passes, so work a framework leaves to the loop
(ours: closing an unfinished async generator) is charged to it; the passes alone are
reported too (see benchmarks/README.md).  The frameworks are optional: without them
the comparison is reported as skipped and ours is still measured.

    .venv/bin/python benchmarks/overhead.py               # the comparison
    .venv/bin/python benchmarks/overhead.py --turns 200   # quicker, noisier
    .venv/bin/python benchmarks/overhead.py --profile     # cProfile of our two turns
"""

from __future__ import annotations

import os

import harness
from agent_turns import (
    ASYNC,
    CALL_ID,
    CITY,
    DIRECT_ANSWER,
    INLINE,
    LANGGRAPH,
    NO_TOOL_TURN,
    OURS,
    QUERY,
    SYNC,
    SYSTEM,
    TOOL_ANSWER,
    TOOL_DESCRIPTION,
    TOOL_FUNCTIONS,
    TOOL_NAME,
    TOOL_RESULT,
    TOOL_TURN,
    Variant,
    expect,
    idle_passes,
    variants_of,
)
from peer_agents import load_frameworks, versions

# No tracing to LangSmith (it is off unless asked for; this makes sure).
os.environ["LANGSMITH_TRACING"] = "false"
os.environ["LANGCHAIN_TRACING_V2"] = "false"

import argparse
import asyncio
import cProfile
import gc
import pstats
import random
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from astromesh_ray.core.build import build_runtime
from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.events import RunResult, ToolStep
from astromesh_ray.core.messages import ToolCall
from astromesh_ray.core.runtime import AgentRuntime
from astromesh_ray.spec import load_agent
from astromesh_ray.testing import ScriptedProvider

TURNS = 1000  # timed turns per variant (--turns)
BLOCKS = 50  # ...taken in this many blocks per variant (and one more turn each: see measure)
WARMUP = 20  # untimed turns per variant first
PROFILE_TURNS = 3000  # --profile: turns of each kind under cProfile
# Between blocks, wait (at most SETTLE_MAX_S) until this process used < 10% of a core
# over SETTLE_PROBE_S (worker threads of sync tools finishing): see ``settle``.
SETTLE_PROBE_S = 0.02
SETTLE_MAX_S = 1.0
GOAL = 20  # the goal: ours takes at most 1/GOAL of LangGraph's time, on both turns

# -- no network ------------------------------------------------------------------------

blocked_network: list[str] = []


def refuse_network() -> None:
    """Nothing here needs a socket beyond the event loop's own socketpair: refuse any
    connection or lookup, and report it (a framework phoning home would be timed)."""

    def refuse(what: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            blocked_network.append(f"{what}{args[1:] if what == 'connect' else args[:1]}")
            raise PermissionError(f"benchmark: network access refused ({what})")

        return refused

    socket.getaddrinfo = refuse("getaddrinfo")
    socket.socket.connect = refuse("connect")  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse("connect")  # type: ignore[method-assign]


# -- 1. astromesh-ray ------------------------------------------------------------------

AGENT_YAML = """\
apiVersion: astromesh/v1
kind: Agent
metadata:
  name: {name}
spec:
  model:
    primary: {{provider: ollama, model: scripted}}  # replaced by the ScriptedProvider
  prompts:
    system: "{system}"
  orchestration:
    pattern: react
    max_iterations: 4
    timeout_seconds: 60
  tools:
    - name: {tool}
      type: internal
      function: "{function}"
      description: "{description}"
"""


async def ours(folder: Path, tool: str) -> tuple[list[Variant], AgentRuntime]:
    fn = TOOL_FUNCTIONS[tool]
    name = f"bench-{fn.__name__.replace('_', '-')}"
    path = folder / f"{name}.agent.yaml"
    path.write_text(
        AGENT_YAML.format(
            name=name,
            system=SYSTEM,
            tool=TOOL_NAME,
            function=f"{fn.__module__}:{fn.__name__}",
            description=TOOL_DESCRIPTION,
        )
    )
    provider = ScriptedProvider()
    runtime = build_runtime(load_agent(path), provider=provider)
    await runtime.start()
    request = RunRequest(query=QUERY)
    call = ToolCall(id=CALL_ID, name=TOOL_NAME, arguments={"city": CITY})

    def queue(steps: list[str | None]) -> None:
        provider.requests.clear()  # its record of requests would grow for the whole run
        provider.add_steps(*(call if step is None else step for step in steps))

    async def run() -> RunResult:
        return await runtime.run(request)

    def check(label: str, turn: str, result: RunResult) -> None:
        expect(label, "the steps left in the script", provider.remaining, 0)
        tools = [s for s in result.steps if isinstance(s, ToolStep)]
        if turn == TOOL_TURN:
            expect(label, "the answer", result.answer, TOOL_ANSWER)
            expect(label, "the tool results", [(t.result, t.is_error) for t in tools],
                   [(TOOL_RESULT, False)])  # fmt: skip
        else:
            expect(label, "the answer", result.answer, DIRECT_ANSWER)
            expect(label, "the tool steps", tools, [])

    return variants_of(OURS, tool, queue, run, check), runtime


# -- measurement -----------------------------------------------------------------------


async def settle() -> None:
    """Between blocks: wait until this process is idle (a sync tool's worker thread
    may still be finishing), then collect garbage and freeze what survives, so that
    no full collection of the frameworks' heaps lands inside a timed block."""
    deadline = time.monotonic() + SETTLE_MAX_S
    while time.monotonic() < deadline:
        cpu = time.process_time()  # all of this process's threads
        await asyncio.sleep(SETTLE_PROBE_S)
        if time.process_time() - cpu < SETTLE_PROBE_S / 10:
            break
    gc.collect()
    gc.freeze()


async def measure(variants: list[Variant], turns: int) -> None:
    """Warm every variant up, then time ``turns`` turns of each, in ``BLOCKS`` blocks
    per variant, the blocks of each round in shuffled order (a fixed seed: the same
    schedule every run).  Each block starts with one more turn, kept apart
    (``Variant.firsts``): after the idle wait and the full collection it runs on
    cold caches, at several times the steady cost for the lighter frameworks."""
    for variant in variants:
        for _ in range(WARMUP):
            await variant.once()
    blocks = max(1, min(BLOCKS, turns))
    order = list(variants)
    shuffle = random.Random(0).shuffle
    for block in range(blocks):
        shuffle(order)
        n = turns // blocks + (1 if block < turns % blocks else 0)
        for variant in order:
            await settle()
            variant.firsts.append(await variant.once())
            for _ in range(n):
                variant.times.append(await variant.once())


# -- report ----------------------------------------------------------------------------


def machine() -> list[str]:
    return harness.machine()


def find(variants: list[Variant], framework: str, tool: str, turn: str) -> Variant | None:
    for v in variants:
        if (v.framework, v.tool, v.turn) == (framework, tool, turn):
            return v
    return None


def row(v: Variant, ours_row: Variant | None, note: str = "") -> str:
    cells = [v.median_us(), v.pct_us(90), statistics.fmean(v.times) * 1e6, v.cold_us()]
    line = f"  {v.framework:<14}{v.tool:<25}{len(v.times):>6}" + "".join(
        f"{c:>8.0f}" for c in cells
    )
    if ours_row is not None and v is not ours_row:
        line += f"{ours_row.median_us() / v.median_us():>9.3f}"
        line += f"{ours_row.pct_us(90) / v.pct_us(90):>7.3f}"
        line += f"{ours_row.cold_us() / v.cold_us():>7.3f}"
    return line + note


def table(variants: list[Variant], turn: str, tools: tuple[str, ...]) -> None:
    """One turn kind: a row per framework and tool kind, ratios ours / theirs."""
    print(f"\n{turn.capitalize()} turn, us per turn")
    print(
        f"  {'framework':<14}{'tool':<25}{'turns':>6}{'median':>8}{'p90':>8}{'mean':>8}"
        f"{'1st':>8}{'ours/theirs: median':>22}{'p90':>7}{'1st':>7}"
    )
    for tool in tools:
        ours_row = find(variants, OURS, tool, turn)
        for v in variants:
            if v.turn == turn and v.tool == tool:
                print(row(v, ours_row))
    inline = find(variants, OURS, INLINE, turn)
    if inline is not None:
        print(row(inline, None, "  (ours only: no thread)"))


def goal(variants: list[Variant]) -> None:
    print(f"\nGoal: ours at most 1/{GOAL} of LangGraph's median time, on both turns")
    for tool in (ASYNC, SYNC):
        parts = []
        met = True
        for turn in (TOOL_TURN, NO_TOOL_TURN):
            ours_row = find(variants, OURS, tool, turn)
            theirs = find(variants, LANGGRAPH, tool, turn)
            if ours_row is None or theirs is None:
                print(f"  {tool} tool: LangGraph not measured, goal not checked")
                return
            ratio = ours_row.median_us() / theirs.median_us()
            met = met and ratio <= 1 / GOAL
            parts.append(
                f"{turn} turn {ours_row.median_us():.0f} / {theirs.median_us():.0f} us = "
                f"{ratio:.3f} (1/{1 / ratio:.1f})"
            )
        print(f"  {tool} tool: {'; '.join(parts)}: {'met' if met else 'NOT met'}")


# -- profile ---------------------------------------------------------------------------


async def profile(turns: int) -> None:
    """cProfile over ``turns`` turns of each of our turn kinds (async tool).

    cProfile's own cost per call inflates every function, the many small ones most:
    the profiled turn takes several times the unprofiled one.  So the turns are first
    timed without it, and each function's profiled time is also shown scaled by
    unprofiled / profiled ("~us"): a first estimate of its share of a real turn.  The
    garbage collector is off while profiling, or a collection's time would be
    charged to whatever function happened to allocate."""
    with tempfile.TemporaryDirectory() as folder:
        variants, runtime = await ours(Path(folder), ASYNC)
        try:
            for variant in variants:
                for _ in range(WARMUP):
                    await variant.once()
                await settle()
                plain = statistics.median([await variant.once() for _ in range(turns)])
                await settle()
                profiler = cProfile.Profile()
                gc.disable()
                profiler.enable()
                for _ in range(turns):
                    await variant.once()
                profiler.disable()
                gc.enable()
                report_profile(variant.label, pstats.Stats(profiler), turns, plain)
        finally:
            await runtime.aclose()


def report_profile(label: str, stats: pstats.Stats, turns: int, plain_s: float) -> None:
    entries = stats.stats  # type: ignore[attr-defined]
    rows = []
    for (path, line, name), (_, calls, own, cumulative, _) in entries.items():
        where = path.split("site-packages/")[-1].split("astromesh_ray/")[-1]
        ours = "astromesh_ray/" in path and "/testing/" not in path
        rows.append(
            (own / turns * 1e6, cumulative / turns * 1e6, calls / turns, where, line, name, ours)
        )
    profiled = sum(r[0] for r in rows)
    scale = plain_s * 1e6 / profiled
    print(
        f"\n{label}: {turns} turns; {plain_s * 1e6:.0f} us per turn (median) without "
        f"cProfile, {profiled:.0f} us under it: ~us = us x {scale:.2f}"
    )
    print(f"  {'own us':>8}{'~us':>7}{'cum us':>8}{'~us':>7}{'calls':>6}  top own time, any module")
    for own, cumulative, calls, where, line, name, _ in sorted(rows, reverse=True)[:25]:
        print(f"  {own:8.1f}{own * scale:7.1f}{cumulative:8.1f}{cumulative * scale:7.1f}"
              f"{calls:6.1f}  {where}:{line}({name})")  # fmt: skip
    print(
        f"  {'cum us':>8}{'~us':>7}{'own us':>8}{'~us':>7}{'calls':>6}  "
        "astromesh_ray by cumulative time"
    )
    mine = sorted((r for r in rows if r[6]), key=lambda r: r[1], reverse=True)
    for own, cumulative, calls, where, line, name, _ in mine[:30]:
        print(f"  {cumulative:8.1f}{cumulative * scale:7.1f}{own:8.1f}{own * scale:7.1f}"
              f"{calls:6.1f}  {where}:{line}({name})")  # fmt: skip


# -- main ------------------------------------------------------------------------------


async def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--turns", type=int, default=TURNS, help="timed turns per variant")
    parser.add_argument("--profile", action="store_true", help="cProfile our turns instead")
    args = parser.parse_args(argv)
    if args.turns < 2:
        parser.error("--turns: at least 2 (percentiles need two samples)")
    refuse_network()
    for line in machine():
        print(line)
    if args.profile:
        await profile(PROFILE_TURNS if args.turns == TURNS else args.turns)
        return 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        variants: list[Variant] = []
        runtimes = []
        for tool in (ASYNC, SYNC, INLINE):
            built, runtime = await ours(Path(folder), tool)
            # The no-tool turn never reaches the tool: one extra row is enough.
            variants += [v for v in built if tool != INLINE or v.turn == TOOL_TURN]
            runtimes.append(runtime)
        theirs, found, skipped = load_frameworks()
        variants += theirs
        print(f"{OURS}: {versions(['astromesh-ray', 'pydantic'])}")
        for line in found + skipped:
            print(line)
        print(
            f"workload: {WARMUP} warm-up turns, then {args.turns} timed turns per variant in "
            f"{min(BLOCKS, args.turns)} blocks (shuffled; idle wait, gc.collect() and "
            f"gc.freeze() before each); scripted models answer at once; {len(variants)} "
            "variants"
        )
        try:
            await measure(variants, args.turns)
        finally:
            for runtime in runtimes:
                await runtime.aclose()
    table(variants, TOOL_TURN, (ASYNC, SYNC))
    table(variants, NO_TOOL_TURN, (ASYNC, SYNC))
    print(
        "\n1st: median of the first turn of each block, right after the idle wait and "
        "gc.collect(), kept out of the other columns"
    )
    print(
        f"Every row includes two event-loop passes after the turn (what a turn leaves to "
        f"the loop is part of it); alone, they take {statistics.median(idle_passes) * 1e6:.1f} "
        "us (median)"
    )
    goal(variants)
    for line in skipped:
        print(line)
    if blocked_network:
        print(f"\nFAILED: network access was attempted: {blocked_network}")
        return 1
    print(f"\nno network access attempted; run took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
