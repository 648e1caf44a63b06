"""Running pattern agents in one process for the pattern tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from astromesh_ray.core.build import LocalAgents
from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.events import Event, RunFinished, RunResult, event_to_dict
from astromesh_ray.core.messages import (
    Completion,
    CompletionChunk,
    CompletionRequest,
    Message,
    Usage,
)
from astromesh_ray.core.providers.base import Provider
from astromesh_ray.spec import AgentSpec


@dataclass
class Streamed:
    """A streamed run: its events (tokens apart) and result."""

    events: list[dict[str, Any]] = field(default_factory=list)
    tokens: list[dict[str, Any]] = field(default_factory=list)
    result: RunResult | None = None

    @property
    def types(self) -> list[str]:
        """Event types, a ``step`` event as ``step:<its type>``."""
        return [
            f"step:{e['step']['type']}" if e["type"] == "step" else e["type"] for e in self.events
        ]


async def stream(
    agents: dict[str, AgentSpec], providers: dict[str, Provider], name: str, query: str
) -> Streamed:
    """Run ``name`` streaming; collect its events."""
    local = LocalAgents(agents, scripted=providers)
    out = Streamed()
    try:
        runtime = await local.runtime(name)
        async for event in runtime.stream(RunRequest(query=query)):
            data = event_to_dict(event)
            if isinstance(event, RunFinished):
                out.result = event.result
            elif data["type"] == "token":
                out.tokens.append(data)
            else:
                out.events.append(data)
    finally:
        await local.aclose()
    return out


async def run(
    agents: dict[str, AgentSpec], providers: dict[str, Provider], name: str, query: str
) -> RunResult:
    """Run ``name`` to its answer (no streaming)."""
    local = LocalAgents(agents, scripted=providers)
    try:
        runtime = await local.runtime(name)
        return await runtime.run(RunRequest(query=query))
    finally:
        await local.aclose()


def last_text(request: CompletionRequest) -> str:
    return request.messages[-1].content or ""


class SlowProvider:
    """A provider that answers ``text`` after ``delay_s`` (for deadline tests)."""

    name = "slow"

    def __init__(self, delay_s: float, text: str = "late") -> None:
        self.delay_s = delay_s
        self.text = text
        self.calls = 0

    async def complete(self, request: CompletionRequest) -> Completion:
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        return Completion(
            message=Message(role="assistant", content=self.text),
            usage=Usage(calls=1),
            model="slow",
            provider=self.name,
        )

    async def stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        completion = await self.complete(request)
        yield CompletionChunk(text=completion.message.content or "", usage=completion.usage)

    async def health(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


def events_of(types: list[str], *wanted: str) -> list[str]:
    return [t for t in types if t in wanted]


__all__ = ["Event", "SlowProvider", "Streamed", "last_text", "run", "stream"]
