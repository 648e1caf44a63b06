"""``AgentRuntime``: one agent turn, end to end, as a stream of events.

It renders the prompts, hands a ``Turn`` to the orchestration pattern, bounds it by
``timeout_seconds``, and reports ``{answer, steps, usage, trace}``.  It runs against
interfaces only: whether its ``Provider`` is an HTTP client in this process or a
handle to a Ray Serve replica is the caller's business (see ``build_runtime``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from astromesh_ray.core.messages import Event, Message, Usage
from astromesh_ray.core.patterns.base import Pattern, Turn
from astromesh_ray.core.prompts import PromptSet
from astromesh_ray.core.providers.base import Provider
from astromesh_ray.core.tools.registry import ToolRegistry
from astromesh_ray.errors import AstromeshError, RunError, RunTimeout


@dataclass
class RunRequest:
    """What a caller asks of an agent: a query, an optional session and template context."""

    query: str
    session_id: str | None = None
    context: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    """The outcome of one turn."""

    run_id: str
    agent: str
    answer: str
    steps: list[dict[str, Any]]
    usage: Usage
    trace: list[dict[str, Any]]
    session_id: str | None = None
    where: dict[str, str] = field(default_factory=dict)  # where the agent itself ran

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "agent": self.agent,
            "session_id": self.session_id,
            "answer": self.answer,
            "steps": self.steps,
            "usage": self.usage.to_dict(),
            "trace": self.trace,
            "where": self.where,
        }


class AgentRuntime:
    """Runs turns of one agent.  Build it with ``build_runtime`` from an ``AgentSpec``."""

    def __init__(
        self,
        *,
        name: str,
        provider: Provider,
        tools: ToolRegistry,
        prompts: PromptSet,
        pattern: Pattern,
        max_iterations: int,
        timeout_s: float,
        parameters: Mapping[str, Any] | None = None,
        where: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.provider = provider
        self.tools = tools
        self.prompts = prompts
        self.pattern = pattern
        self.max_iterations = max_iterations
        self.timeout_s = timeout_s
        self.parameters = dict(parameters or {})
        # Where this runtime runs (process, or Ray replica and node): tool spans carry it.
        self.where = dict(where) if where else None

    async def run(self, request: RunRequest) -> RunResult:
        """Run one turn to its answer (no token streaming)."""
        result: RunResult | None = None
        async for event in self._events(request, stream_tokens=False):
            if event.type == "run_finished":
                result = event.data["result"]
        assert result is not None  # _events always ends with run_finished or raises
        return result

    async def stream(self, request: RunRequest) -> AsyncIterator[Event]:
        """Run one turn, yielding events as they happen; the last is ``run_finished``
        whose ``data["result"]`` is the ``RunResult`` as a dict."""
        async for event in self._events(request, stream_tokens=True):
            if event.type == "run_finished":
                yield Event("run_finished", {"result": event.data["result"].to_dict()})
            else:
                yield event

    async def _events(self, request: RunRequest, *, stream_tokens: bool) -> AsyncIterator[Event]:
        run_id = uuid.uuid4().hex
        turn = Turn(
            run_id=run_id,
            provider=self.provider,
            tools=self.tools,
            messages=self._initial_messages(request),
            max_iterations=self.max_iterations,
            parameters=dict(self.parameters),
            stream_tokens=stream_tokens,
            where=self.where,
        )
        yield Event(
            "run_started", {"run_id": run_id, "agent": self.name, "session_id": request.session_id}
        )
        events = self.pattern.run(turn)
        # The deadline bounds the pattern's own work: each step is awaited under it,
        # never the consumer's time between events (a slow client is not the agent's
        # fault, and a timeout raised at a `yield` would reach it as a bare cancel).
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        try:
            while True:
                async with asyncio.timeout_at(deadline):
                    try:
                        event = await anext(events)
                    except StopAsyncIteration:
                        break
                yield event
        except TimeoutError:
            raise RunTimeout(
                f"agent {self.name!r} did not answer within timeout_seconds={self.timeout_s:g}",
                hint="raise spec.orchestration.timeout_seconds or use a faster model",
                run_id=run_id,
                steps=turn.steps,
                trace=turn.trace.to_list(),
            ) from None
        except AstromeshError as exc:
            # Keep the partial trace on every error: it is what a user debugs from.
            exc.details.setdefault("run_id", run_id)
            exc.details.setdefault("trace", turn.trace.to_list())
            raise
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        if turn.answer is None:
            raise RunError(f"pattern {self.pattern.name!r} ended without an answer", run_id=run_id)
        result = RunResult(
            run_id=run_id,
            agent=self.name,
            answer=turn.answer,
            steps=turn.steps,
            usage=turn.usage,
            trace=turn.trace.to_list(),
            session_id=request.session_id,
            where=dict(turn.trace.where),
        )
        yield Event("run_finished", {"result": result})

    def _initial_messages(self, request: RunRequest) -> list[Message]:
        variables: dict[str, Any] = {
            **request.context,
            "context": request.context,
            # No memory or knowledge backends are wired yet (the loader refuses
            # spec.memory); templates see them empty, never undefined.
            "memory": {"conversation": [], "semantic": [], "episodic": []},
            "knowledge": "",
            "query": request.query,
        }
        messages: list[Message] = []
        system = self.prompts.render_system(variables)
        if system:
            messages.append(Message(role="system", content=system))
        messages.append(Message(role="user", content=request.query))
        return messages
