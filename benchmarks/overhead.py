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

# No tracing to LangSmith (it is off unless asked for; this makes sure).
os.environ["LANGSMITH_TRACING"] = "false"
os.environ["LANGCHAIN_TRACING_V2"] = "false"

import argparse
import asyncio
import cProfile
import functools
import gc
import importlib.metadata
import pstats
import random
import socket
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astromesh_ray.core.build import build_runtime
from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.events import RunResult, ToolStep
from astromesh_ray.core.messages import ToolCall
from astromesh_ray.core.runtime import AgentRuntime
from astromesh_ray.core.tools import tool as astromesh_tool
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

SYSTEM = "You are a weather assistant. Answer in one short sentence."
QUERY = "What is the weather in Paris?"
CITY = "Paris"
TOOL_NAME = "weather"
TOOL_DESCRIPTION = "The current weather in a city."
TOOL_RESULT = "sunny in Paris"
TOOL_ANSWER = "It is sunny in Paris."
DIRECT_ANSWER = "Hello! Ask me about the weather anywhere."
CALL_ID = "call_1"

OURS = "astromesh-ray"
LANGGRAPH = "LangGraph"
PYDANTIC_AI = "Pydantic AI"
LANGCHAIN = "LangChain"
TOOL_TURN = "tool"
NO_TOOL_TURN = "no tool"
ASYNC = "async def"
SYNC = "def (thread)"
INLINE = "def, @tool(inline=True)"  # ours only: a sync tool run on the event loop


# -- the tool, the same function for every framework -----------------------------------

tool_calls: dict[str, int] = {ASYNC: 0, SYNC: 0, INLINE: 0}


async def weather_async(city: str) -> str:
    """The current weather in a city.

    Args:
        city: The city.
    """
    tool_calls[ASYNC] += 1
    return f"sunny in {city}"


def weather_sync(city: str) -> str:
    """The current weather in a city.

    Args:
        city: The city.
    """
    tool_calls[SYNC] += 1
    return f"sunny in {city}"


@astromesh_tool(inline=True)
def weather_inline(city: str) -> str:
    """The current weather in a city.

    Args:
        city: The city.
    """
    tool_calls[INLINE] += 1
    return f"sunny in {city}"


TOOL_FUNCTIONS: dict[str, Callable[..., Any]] = {
    ASYNC: weather_async,
    SYNC: weather_sync,
    INLINE: weather_inline,
}


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


# -- a variant: one framework, one tool kind, one turn kind ----------------------------

idle_passes: list[float] = []


async def loop_passes() -> None:
    """Two passes of the event loop.  What a turn schedules rather than does (an
    async generator left unfinished is closed by a task the loop's finalizer hook
    schedules: ``call_soon_threadsafe``, then the task) runs in them, so it is timed
    with the turn instead of landing in the next one or in nobody's."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


@dataclass
class Variant:
    """``script`` queues the model's answers for one turn, ``run`` is the timed turn,
    ``check`` fails unless it gave the expected answer and consumed the script."""

    framework: str
    tool: str
    turn: str
    script: Callable[[], None]
    run: Callable[[], Awaitable[Any]]
    check: Callable[[Any], None]
    times: list[float] = field(default_factory=list)
    # The first turn of each block, straight after the idle wait and full collection
    # (cold caches): timed apart, so the blocks' other turns show the steady state.
    firsts: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.framework}, {self.turn} turn, {self.tool} tool"

    async def once(self) -> float:
        self.script()
        calls = tool_calls[self.tool]
        started = time.perf_counter()
        result = await self.run()
        await loop_passes()  # work the turn left to the event loop is part of the turn
        elapsed = time.perf_counter() - started
        self.check(result)
        started = time.perf_counter()
        await loop_passes()  # the same passes with nothing to do: the floor of every row
        idle_passes.append(time.perf_counter() - started)
        made = tool_calls[self.tool] - calls
        if made != (1 if self.turn == TOOL_TURN else 0):
            raise AssertionError(f"{self.label}: the tool ran {made} times")
        return elapsed

    def median_us(self) -> float:
        return statistics.median(self.times) * 1e6

    def pct_us(self, p: int) -> float:
        return statistics.quantiles(self.times, n=100, method="inclusive")[p - 1] * 1e6

    def cold_us(self) -> float:
        """The median of the first turns of the blocks (see ``measure``)."""
        return statistics.median(self.firsts) * 1e6


def expect(label: str, what: str, got: object, wanted: object) -> None:
    if got != wanted:
        raise AssertionError(f"{label}: {what} was {got!r}, expected {wanted!r}")


def variants_of(
    framework: str,
    tool: str,
    queue: Callable[[list[str | None]], None],
    run: Callable[[], Awaitable[Any]],
    check: Callable[[str, str, Any], None],
) -> list[Variant]:
    """The tool turn and the no-tool turn of one agent.  ``queue`` takes the model's
    answers for a turn (``None``: the tool call); ``check(label, turn, result)``."""
    turns: list[tuple[str, list[str | None]]] = [
        (TOOL_TURN, [None, TOOL_ANSWER]),
        (NO_TOOL_TURN, [DIRECT_ANSWER]),
    ]
    return [
        Variant(
            framework,
            tool,
            turn,
            script=functools.partial(queue, steps),
            run=run,
            check=functools.partial(check, f"{framework}, {turn} turn, {tool} tool", turn),
        )
        for turn, steps in turns
    ]


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
            function=f"{__name__}:{fn.__name__}",
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


# -- 2 and 4. LangGraph and LangChain, over one fake chat model ------------------------


def langchain_fake_model() -> Any:
    """A ``BaseChatModel`` answering from a script: a step is a text answer or ``None``
    for the tool call.  It answers natively async (``BaseChatModel``'s default
    ``_agenerate`` would hand ``_generate`` to a thread), and ``bind_tools`` converts
    the tools to OpenAI's format and binds them, as ``ChatOpenAI`` does."""
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult
    from langchain_core.utils.function_calling import convert_to_openai_tool
    from pydantic import Field

    class ScriptedChatModel(BaseChatModel):
        steps: list[str | None] = Field(default_factory=list)

        @property
        def _llm_type(self) -> str:
            return "scripted"

        def _next(self) -> ChatResult:
            if not self.steps:
                raise AssertionError("ScriptedChatModel: unexpected call")
            step = self.steps.pop(0)
            if step is None:
                call = {"name": TOOL_NAME, "args": {"city": CITY}, "id": CALL_ID}
                message = AIMessage(content="", tool_calls=[{**call, "type": "tool_call"}])
            else:
                message = AIMessage(content=step)
            return ChatResult(generations=[ChatGeneration(message=message)])

        def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None,
                      **kwargs: Any) -> ChatResult:  # fmt: skip
            return self._next()

        async def _agenerate(self, messages: Any, stop: Any = None, run_manager: Any = None,
                             **kwargs: Any) -> ChatResult:  # fmt: skip
            return self._next()

        def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None,
                       **kwargs: Any) -> Any:  # fmt: skip
            formatted = [convert_to_openai_tool(t) for t in tools]
            if tool_choice is not None:
                kwargs["tool_choice"] = tool_choice
            return self.bind(tools=formatted, **kwargs)

    return ScriptedChatModel()


def langchain_tool(tool: str) -> Any:
    from langchain_core.tools import StructuredTool

    fn = TOOL_FUNCTIONS[tool]
    if tool == ASYNC:
        return StructuredTool.from_function(
            coroutine=fn, name=TOOL_NAME, description=TOOL_DESCRIPTION
        )
    return StructuredTool.from_function(func=fn, name=TOOL_NAME, description=TOOL_DESCRIPTION)


def graph_variants(framework: str, tool: str, model: Any, graph: Any) -> list[Variant]:
    """LangGraph and LangChain agents are both compiled graphs over a message list."""
    from langchain_core.messages import ToolMessage

    def queue(steps: list[str | None]) -> None:
        model.steps.extend(steps)

    async def run() -> Any:
        return await graph.ainvoke({"messages": [{"role": "user", "content": QUERY}]})

    def check(label: str, turn: str, result: Any) -> None:
        expect(label, "the steps left in the script", len(model.steps), 0)
        messages = result["messages"]
        tools = [(m.content, m.status) for m in messages if isinstance(m, ToolMessage)]
        wanted_tools = [(TOOL_RESULT, "success")] if turn == TOOL_TURN else []
        expect(label, "the tool results", tools, wanted_tools)
        wanted = TOOL_ANSWER if turn == TOOL_TURN else DIRECT_ANSWER
        expect(label, "the answer", messages[-1].content, wanted)

    return variants_of(framework, tool, queue, run, check)


def langgraph(tool: str) -> list[Variant]:
    with warnings.catch_warnings():
        # create_react_agent is deprecated in favour of langchain.agents.create_agent
        # (variant 4); it is still LangGraph's own prebuilt agent.
        warnings.simplefilter("ignore")
        from langgraph.prebuilt import create_react_agent

        model = langchain_fake_model()
        graph = create_react_agent(model, [langchain_tool(tool)], prompt=SYSTEM)
    return graph_variants(LANGGRAPH, tool, model, graph)


def langchain(tool: str) -> list[Variant]:
    from langchain.agents import create_agent

    model = langchain_fake_model()
    graph = create_agent(model, [langchain_tool(tool)], system_prompt=SYSTEM)
    return graph_variants(LANGCHAIN, tool, model, graph)


# -- 3. Pydantic AI --------------------------------------------------------------------


def pydantic_ai(tool: str) -> list[Variant]:
    from pydantic_ai import Agent, Tool
    from pydantic_ai.messages import (
        ModelMessage,
        ModelRequest,
        ModelResponse,
        TextPart,
        ToolCallPart,
        ToolReturnPart,
    )
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    steps: list[str | None] = []

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if not steps:
            raise AssertionError("FunctionModel: unexpected call")
        step = steps.pop(0)
        if step is None:
            call = ToolCallPart(tool_name=TOOL_NAME, args={"city": CITY}, tool_call_id=CALL_ID)
            return ModelResponse(parts=[call])
        return ModelResponse(parts=[TextPart(step)])

    agent = Agent(
        FunctionModel(model),
        instructions=SYSTEM,
        tools=[Tool(TOOL_FUNCTIONS[tool], name=TOOL_NAME, description=TOOL_DESCRIPTION)],
    )

    async def run() -> Any:
        return await agent.run(QUERY)

    def check(label: str, turn: str, result: Any) -> None:
        expect(label, "the steps left in the script", len(steps), 0)
        returns = [
            part.content
            for message in result.all_messages()
            if isinstance(message, ModelRequest)
            for part in message.parts
            if isinstance(part, ToolReturnPart)
        ]
        expect(label, "the tool results", returns, [TOOL_RESULT] if turn == TOOL_TURN else [])
        wanted = TOOL_ANSWER if turn == TOOL_TURN else DIRECT_ANSWER
        expect(label, "the answer", result.output, wanted)

    return variants_of(PYDANTIC_AI, tool, steps.extend, run, check)


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


# -- the frameworks, if installed ------------------------------------------------------

FRAMEWORKS: dict[str, tuple[tuple[str, ...], Callable[[str], list[Variant]]]] = {
    LANGGRAPH: (("langgraph", "langchain-core"), langgraph),
    PYDANTIC_AI: (("pydantic-ai-slim",), pydantic_ai),
    LANGCHAIN: (("langchain", "langgraph", "langchain-core"), langchain),
}


def versions(packages: Sequence[str]) -> str:
    return ", ".join(f"{p} {importlib.metadata.version(p)}" for p in packages)


def load_frameworks() -> tuple[list[Variant], list[str], list[str]]:
    """The variants of every framework that imports; what was skipped, and why."""
    variants: list[Variant] = []
    found: list[str] = []
    skipped: list[str] = []
    for name, (packages, build) in FRAMEWORKS.items():
        try:
            for tool in (ASYNC, SYNC):
                variants += build(tool)
        except ImportError as exc:
            skipped.append(
                f"{name}: comparison skipped: not installed ({exc}); "
                f"`.venv/bin/pip install -e '.[bench]'`"
            )
            continue
        found.append(f"{name}: {versions(packages)}")
    return variants, found, skipped


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
