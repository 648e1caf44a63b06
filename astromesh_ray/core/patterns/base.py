"""The ``Pattern`` protocol and ``Turn``: everything one orchestration run needs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from astromesh_ray.core.messages import (
    Completion,
    CompletionRequest,
    Event,
    Message,
    Usage,
)
from astromesh_ray.core.providers.base import Provider
from astromesh_ray.core.tools.registry import ToolRegistry
from astromesh_ray.core.trace import Trace


@dataclass
class Turn:
    """The state of one agent turn, shared by the runtime and the pattern.

    The pattern appends to ``messages``, ``steps`` and ``usage`` as it goes, so a
    run that fails or times out still reports what it did (the partial trace).
    """

    run_id: str
    provider: Provider
    tools: ToolRegistry
    messages: list[Message]
    max_iterations: int
    parameters: dict[str, Any] = field(default_factory=dict)
    stream_tokens: bool = False
    trace: Trace = field(init=False)
    usage: Usage = field(default_factory=Usage)
    steps: list[dict[str, Any]] = field(default_factory=list)
    answer: str | None = None
    where: dict[str, str] | None = None

    def __post_init__(self) -> None:
        self.trace = Trace(self.run_id, self.where)

    def request(self) -> CompletionRequest:
        return CompletionRequest(
            messages=list(self.messages),
            tools=self.tools.schemas(),
            parameters=dict(self.parameters),
        )

    def record_completion(self, completion: Completion, span: dict[str, Any]) -> None:
        self.usage = self.usage + completion.usage
        span.update(
            provider=completion.provider,
            model=completion.model,
            usage=completion.usage.to_dict(),
            finish_reason=completion.finish_reason,
        )
        if completion.route:
            span["route"] = list(completion.route)
        if completion.location:
            # The model call ran where the provider ran (another replica, maybe node).
            span["where"] = {**span.get("where", {}), **completion.location}


class Pattern(Protocol):
    """An orchestration strategy: drives model and tool calls until an answer.

    ``run`` yields events as they happen and sets ``turn.answer`` before it ends.
    """

    name: str
    roles: tuple[str, ...]

    def run(self, turn: Turn) -> AsyncIterator[Event]: ...
