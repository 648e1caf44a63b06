"""The turn every framework of ``overhead.py`` runs: the agent's prompt, query and
answers, the tool (one function per kind: ``async def``, plain ``def``, inline), and
``Variant``: one framework, one tool kind, one turn kind, timed and checked."""

from __future__ import annotations

import asyncio
import functools
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from astromesh_ray.core.tools import tool as astromesh_tool

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
