"""Our own message, tool-call, usage and event types (no vendor SDK types).

Runtime objects are dataclasses; every one converts to and from plain JSON-able
dicts so it can cross HTTP, WebSocket and Ray boundaries unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class ToolCall:
    """A model's request to call one tool; ``arguments`` is always a parsed dict.

    When the model wrote arguments that are not a JSON object, ``arguments`` is empty
    and ``invalid_arguments`` holds what it wrote: the call is not run, and the model
    is told so it can try again.
    """

    id: str
    name: str
    arguments: dict[str, Any]
    invalid_arguments: str | None = None

    @staticmethod
    def parse(id: str, name: str, raw: Any) -> ToolCall:
        """A call from a backend's wire arguments: an object, a JSON string, or nothing.

        Anything that is not a JSON object is kept in ``invalid_arguments`` (the
        model's mistake, not the backend's), so the engine can tell the model.
        """
        arguments: Any
        if isinstance(raw, Mapping):  # some servers send an object, not a JSON string
            arguments = dict(raw)
        elif raw is None or not str(raw).strip():
            arguments = {}
        else:
            try:
                arguments = json.loads(raw)
            except ValueError:
                arguments = None
        if isinstance(arguments, dict):
            return ToolCall(id=id, name=name, arguments=arguments)
        return ToolCall(id=id, name=name, arguments={}, invalid_arguments=str(raw)[:2000])


@dataclass
class Message:
    """One chat message.

    ``tool_calls`` appear only on assistant messages, ``tool_call_id`` only on tool ones.
    """

    role: Role
    content: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Message:
        calls = [ToolCall(**c) for c in data.get("tool_calls") or []]
        return Message(
            role=data["role"],
            content=data.get("content"),
            tool_calls=calls,
            tool_call_id=data.get("tool_call_id"),
            name=data.get("name"),
        )


@dataclass
class Usage:
    """Token counts of one or more model calls."""

    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0
    cost_usd: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.calls + other.calls,
            self.cost_usd + other.cost_usd,
        )

    def to_dict(self) -> dict[str, int | float]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "calls": self.calls,
            "cost_usd": round(self.cost_usd, 8),
        }


@dataclass(frozen=True)
class ToolSchema:
    """What a model is told about a tool: name, description and JSON Schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass
class CompletionRequest:
    """One call to a model.  ``parameters`` are sampling options (temperature, max_tokens, ...).

    ``trace_parent`` is the W3C ``traceparent`` of the model-call span: a provider
    running elsewhere (a Serve replica) parents its own span on it.

    ``response_schema`` is a JSON Schema (draft 2020-12, an object schema) the answer
    text must match: a provider whose backend can constrain decoding to it asks for
    that in the backend's own wire format; the others ignore it, and the engine
    validates the answer and asks again.
    """

    messages: list[Message]
    tools: list[ToolSchema] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    trace_parent: str | None = None
    response_schema: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "messages": [m.to_dict() for m in self.messages],
            "tools": [asdict(t) for t in self.tools],
            "parameters": dict(self.parameters),
            "trace_parent": self.trace_parent,
            "response_schema": dict(self.response_schema)
            if self.response_schema is not None
            else None,
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> CompletionRequest:
        schema = data.get("response_schema")
        return CompletionRequest(
            messages=[Message.from_dict(m) for m in data["messages"]],
            tools=[ToolSchema(**t) for t in data.get("tools") or []],
            parameters=dict(data.get("parameters") or {}),
            trace_parent=data.get("trace_parent"),
            response_schema=dict(schema) if schema is not None else None,
        )


@dataclass
class Completion:
    """A model's whole answer to one ``CompletionRequest``."""

    message: Message
    usage: Usage
    model: str
    provider: str
    finish_reason: str = "stop"
    # Where the call ran (replica / node); filled by the serve layer for the trace.
    location: dict[str, str] = field(default_factory=dict)
    # How the router chose this answer's provider (candidates tried, why, breaker states).
    route: list[dict[str, Any]] = field(default_factory=list)
    # Spans recorded where the call ran (a provider replica), as ``Span.to_dict()``s.
    spans: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "message": self.message.to_dict(),
            "usage": asdict(self.usage),
            "model": self.model,
            "provider": self.provider,
            "finish_reason": self.finish_reason,
            "location": dict(self.location),
            "route": list(self.route),
            "spans": list(self.spans),
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Completion:
        return Completion(
            message=Message.from_dict(data["message"]),
            usage=Usage(**data["usage"]),
            model=data["model"],
            provider=data["provider"],
            finish_reason=data.get("finish_reason", "stop"),
            location=dict(data.get("location") or {}),
            route=list(data.get("route") or []),
            spans=list(data.get("spans") or []),
        )


@dataclass(frozen=True)
class ToolArgsDelta:
    """A fragment of a tool call's arguments as the model streams them.

    ``index`` orders the calls of one answer; ``id`` and ``name`` are empty on
    fragments after the first one of a call.  The whole call still arrives, parsed,
    in the last chunk's ``tool_calls``.
    """

    index: int
    arguments: str
    id: str = ""
    name: str = ""


@dataclass
class CompletionChunk:
    """One piece of a streamed answer.

    Answer text arrives as ``text`` deltas, the model's separate reasoning (vLLM's
    ``reasoning_content``, Ollama's ``thinking``) as ``reasoning`` deltas, and tool-call
    arguments as ``tool_args`` fragments when the backend streams them.  Whole,
    parsed tool calls arrive in the last chunk, which also carries ``usage`` and
    ``finish_reason``.
    """

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage | None = None
    finish_reason: str | None = None
    model: str | None = None
    route: list[dict[str, Any]] = field(default_factory=list)
    # Where the model ran (replica / node): set on the final chunk by the serve layer.
    location: dict[str, str] = field(default_factory=dict)
    reasoning: str = ""
    tool_args: list[ToolArgsDelta] = field(default_factory=list)
    # Spans recorded where the call ran (set on the final chunk by the serve layer).
    spans: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_last(self) -> bool:
        """Whether this is the final chunk (it carries usage or a finish reason)."""
        return self.usage is not None or self.finish_reason is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "route": list(self.route),
            "location": dict(self.location),
            "text": self.text,
            "reasoning": self.reasoning,
            "tool_args": [asdict(d) for d in self.tool_args],
            "tool_calls": [asdict(c) for c in self.tool_calls],
            "usage": asdict(self.usage) if self.usage else None,
            "finish_reason": self.finish_reason,
            "model": self.model,
            "spans": list(self.spans),
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> CompletionChunk:
        return CompletionChunk(
            text=data.get("text", ""),
            reasoning=data.get("reasoning", ""),
            tool_args=[ToolArgsDelta(**d) for d in data.get("tool_args") or []],
            tool_calls=[ToolCall(**c) for c in data.get("tool_calls") or []],
            usage=Usage(**data["usage"]) if data.get("usage") else None,
            finish_reason=data.get("finish_reason"),
            model=data.get("model"),
            route=list(data.get("route") or []),
            location=dict(data.get("location") or {}),
            spans=list(data.get("spans") or []),
        )
