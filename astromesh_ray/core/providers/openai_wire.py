"""The OpenAI chat-completions wire format, both ways, in one place.

Spoken over HTTP by ``OpenAIProvider`` (OpenAI, and vLLM, llama.cpp, Ollama ``/v1``
and TGI Messages servers) and in process by the in-cluster vLLM adapter
(``serve/vllm_chat.py``), which hands Ray's ``LLMServer`` the same body and reads
the same answers.  Plain dicts in, our types out: no HTTP, no vendor SDK.

- ``OpenAIChatWire.body``: a ``CompletionRequest`` as the request body
  (``wire_messages`` / ``wire_tool`` for the messages and tools, ``response_format``
  for a ``response_schema``);
- ``OpenAIChatWire.completion``: a whole answer as a ``Completion``;
- ``OpenAIStreamDecoder``: streamed ``chat.completion.chunk`` events as
  ``CompletionChunk``s (text, reasoning and tool-argument deltas), then the last chunk
  with the whole tool calls, usage and finish reason;
- ``OpenAIChatWire.error``: an error body as a ``ProviderError``.

Usage is never silently zero: an answer without it is estimated (``estimate_usage``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from astromesh_ray.core.messages import (
    Completion,
    CompletionChunk,
    CompletionRequest,
    Message,
    ToolArgsDelta,
    ToolCall,
    ToolSchema,
    Usage,
)
from astromesh_ray.core.providers.http import estimate_tokens, retryable_status
from astromesh_ray.core.providers.structured import ResponseFormat, openai_response_format
from astromesh_ray.errors import ProviderError

__all__ = [
    "OpenAIChatWire",
    "OpenAIStreamDecoder",
    "error_text",
    "estimate_usage",
    "wire_message",
    "wire_messages",
    "wire_tool",
]


@dataclass(frozen=True)
class OpenAIChatWire:
    """The chat-completions format as spoken with one backend.

    ``name`` is the provider name errors carry, ``model`` the model id sent (and
    reported when an answer names none), ``source`` where answers come from in error
    messages (an endpoint URL, ``"vLLM"``), ``hint`` what to check when one is malformed.
    ``response_format`` turns a request's ``response_schema`` into the backend's own
    ``response_format`` (``core/providers/structured.py``; OpenAI's by default).
    """

    name: str
    model: str
    source: str
    hint: str | None = None
    response_format: ResponseFormat = openai_response_format

    # -- request side ------------------------------------------------------------------

    def body(
        self,
        request: CompletionRequest,
        *,
        stream: bool,
        defaults: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The request body: ``defaults`` then the request's own ``parameters`` (which
        win), then the payload, which sampling parameters can never replace."""
        body: dict[str, Any] = {**(defaults or {}), **request.parameters}
        body["model"] = self.model
        body["messages"] = wire_messages(request.messages)
        body.pop("tools", None)
        if request.tools:
            body["tools"] = [wire_tool(t) for t in request.tools]
        body["stream"] = stream
        if stream:
            body["stream_options"] = {"include_usage": True}
        else:
            body.pop("stream_options", None)
        if request.response_schema is not None:
            constraint = self.response_format(request.response_schema)
            if constraint is not None:
                body["response_format"] = constraint  # the request's schema wins
        return body

    # -- response side -----------------------------------------------------------------

    def completion(self, data: Any, request: CompletionRequest) -> Completion:
        """A non-streamed answer (``chat.completion``) as our ``Completion``; an error
        body raises its ``ProviderError``, anything else malformed a non-retryable one."""
        if not isinstance(data, Mapping):
            raise self.malformed(f"expected a chat completion, got {type(data).__name__}")
        error = self.error(data)
        if error is not None:
            raise error
        try:
            choice = data["choices"][0]
            wire = choice["message"]
            if not isinstance(wire, Mapping):
                raise TypeError(wire)
        except (KeyError, IndexError, TypeError):
            raise self.malformed(f"not a chat completion: {str(data)[:200]!r}") from None
        calls = [self.tool_call(i, c) for i, c in enumerate(wire.get("tool_calls") or [])]
        content = wire.get("content")
        usage = data.get("usage")
        return Completion(
            message=Message(role="assistant", content=content, tool_calls=calls),
            usage=_usage(usage)
            if isinstance(usage, Mapping) and usage
            else estimate_usage(request, content or "", calls),
            model=str(data.get("model") or self.model),
            provider=self.name,
            finish_reason=str(choice.get("finish_reason") or ("tool_calls" if calls else "stop")),
        )

    def decoder(self, request: CompletionRequest) -> OpenAIStreamDecoder:
        """A decoder for the streamed answer to ``request``."""
        return OpenAIStreamDecoder(self, request)

    def tool_call(self, index: int, wire: Mapping[str, Any]) -> ToolCall:
        """One wire tool call (``{id, function: {name, arguments}}``) as a ``ToolCall``."""
        function = wire.get("function") or {}
        name = str(function.get("name") or "") if isinstance(function, Mapping) else ""
        if not name:
            raise self.malformed(f"tool call #{index} has no function name")
        # llama.cpp and some older servers omit ids; the engine needs one to pair results.
        return ToolCall.parse(
            str(wire.get("id") or f"call_{index}"), name, function.get("arguments")
        )

    # -- errors ------------------------------------------------------------------------

    def error(self, data: Mapping[str, Any]) -> ProviderError | None:
        """The ``ProviderError`` an error body stands for, or None for a normal body.

        OpenAI and Ray 2.60 send ``{"error": {message, type, param, code}}``; vLLM
        streams mid-generation failures the same way; older vLLM used a flat
        ``{"object": "error", "message", "code"}``.
        """
        err: Any = data.get("error")
        if isinstance(err, Mapping):
            pass
        elif data.get("object") == "error":
            err = data
        else:
            return None
        message = str(err.get("message") or dict(err))
        code = err.get("code")
        status = code if isinstance(code, int) and not isinstance(code, bool) else None
        return ProviderError(
            f"{self.name}: {self.source} answered {status or 'an error'}: {message}",
            hint=_error_hint(message),
            provider=self.name,
            status=status,
            # No status: the backend failed mid-answer (an engine died, ran out of
            # memory): another try, or another replica, may succeed.
            retryable=status is None or retryable_status(status),
        )

    def malformed(self, what: str) -> ProviderError:
        """A non-retryable ``ProviderError`` for an answer that is not the format."""
        return ProviderError(
            f"{self.name}: malformed response from {self.source}: {what}",
            hint=self.hint,
            provider=self.name,
            status=None,
            retryable=False,
        )


class OpenAIStreamDecoder:
    """Turns streamed ``chat.completion.chunk`` events into ``CompletionChunk``s.

    ``feed`` (a decoded event) or ``decode`` (the JSON text of an SSE ``data:``
    field) returns the chunk of deltas the event carries, if any: ``text`` from
    ``delta.content``, ``reasoning`` from ``delta.reasoning_content`` (vLLM, DeepSeek)
    or ``delta.reasoning``, and ``tool_args`` from tool-call fragments as they arrive
    (``id`` and ``name`` on a call's first fragment).  Fragments, usage and the finish
    reason accumulate; ``finish`` returns the last chunk with the whole tool calls.
    """

    def __init__(self, wire: OpenAIChatWire, request: CompletionRequest) -> None:
        self.wire = wire
        self.request = request
        self.model = wire.model
        self._text: list[str] = []
        # index -> {"id", "name", "arguments"}: tool calls arrive as fragments.
        self._calls: dict[int, dict[str, str]] = {}
        self._usage: Mapping[str, Any] | None = None
        self._finish: str | None = None

    @property
    def text(self) -> str:
        """The answer text streamed so far."""
        return "".join(self._text)

    @property
    def usage_reported(self) -> bool:
        """Whether the backend sent usage (``stream_options.include_usage``)."""
        return bool(self._usage)

    def decode(self, payload: str) -> CompletionChunk | None:
        """``feed`` for the JSON text of one SSE ``data:`` field (not ``[DONE]``)."""
        try:
            event = json.loads(payload)
        except ValueError:
            raise self.wire.malformed(f"undecodable stream chunk {payload[:200]!r}") from None
        if not isinstance(event, dict):
            raise self.wire.malformed(f"stream chunk is not an object: {payload[:200]!r}")
        return self.feed(event)

    def feed(self, event: Mapping[str, Any]) -> CompletionChunk | None:
        """The deltas in one event, or None; an error event raises ``ProviderError``."""
        error = self.wire.error(event)
        if error is not None:
            raise error
        self.model = str(event.get("model") or self.model)
        usage = event.get("usage")
        if isinstance(usage, Mapping) and usage:
            self._usage = usage
        text: list[str] = []
        reasoning: list[str] = []
        args: list[ToolArgsDelta] = []
        for choice in event.get("choices") or []:
            if not isinstance(choice, Mapping):
                continue
            self._finish = choice.get("finish_reason") or self._finish
            delta = choice.get("delta")
            if not isinstance(delta, Mapping):
                continue
            if delta.get("content"):
                text.append(str(delta["content"]))
            # vLLM sends reasoning_content (newer versions also reasoning, the same text).
            thought = delta.get("reasoning_content") or delta.get("reasoning")
            if thought:
                reasoning.append(str(thought))
            for position, fragment in enumerate(delta.get("tool_calls") or []):
                arg = self._merge(position, fragment)
                if arg is not None:
                    args.append(arg)
        if not (text or reasoning or args):
            return None
        self._text.extend(text)
        return CompletionChunk(text="".join(text), reasoning="".join(reasoning), tool_args=args)

    def _merge(self, position: int, fragment: Any) -> ToolArgsDelta | None:
        # Servers send a call's id and name first, then its arguments in pieces.
        if not isinstance(fragment, Mapping):
            return None
        wire_index = fragment.get("index")
        index = wire_index if isinstance(wire_index, int) else position
        first = index not in self._calls
        entry = self._calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
        if fragment.get("id"):
            entry["id"] = str(fragment["id"])
        function = fragment.get("function")
        function = function if isinstance(function, Mapping) else {}
        if function.get("name"):
            entry["name"] = str(function["name"])
        arguments = function.get("arguments")
        piece = json.dumps(arguments) if isinstance(arguments, Mapping) else str(arguments or "")
        entry["arguments"] += piece
        if first:
            return ToolArgsDelta(
                index=index,
                arguments=piece,
                id=entry["id"] or f"call_{index}",
                name=entry["name"],
            )
        return ToolArgsDelta(index=index, arguments=piece) if piece else None

    def tool_calls(self) -> list[ToolCall]:
        """The whole tool calls streamed so far, parsed."""
        return [
            self.wire.tool_call(i, {"id": c["id"], "function": c})
            for i, c in sorted(self._calls.items())
        ]

    def finish(self, usage: Usage | None = None) -> CompletionChunk:
        """The last chunk: whole tool calls, finish reason and usage: ``usage`` if
        given, else what the backend reported, else an estimate."""
        calls = self.tool_calls()
        if usage is None:
            usage = (
                _usage(self._usage)
                if self._usage
                else estimate_usage(self.request, self.text, calls)
            )
        return CompletionChunk(
            tool_calls=calls,
            usage=usage,
            finish_reason=self._finish or ("tool_calls" if calls else "stop"),
            model=self.model,
        )


def estimate_usage(request: CompletionRequest, answer: str, calls: list[ToolCall]) -> Usage:
    """Usage for an answer the backend did not count: about 4 characters per token
    (``estimate_tokens``), at least one each way, so cost and budgets are never
    silently zero."""
    prompt = "".join(m.content or "" for m in request.messages)
    prompt += "".join(json.dumps(asdict(t)) for t in request.tools)
    generated = answer + "".join(c.name + json.dumps(c.arguments) for c in calls)
    return Usage(
        input_tokens=max(1, estimate_tokens(prompt)),
        output_tokens=max(1, estimate_tokens(generated)),
        calls=1,
    )


def error_text(data: Mapping[str, Any]) -> str | None:
    """The message of an OpenAI-style error body (``error.message``), also Ollama's
    ``{"error": "..."}`` and FastAPI's ``{"detail": ...}``; None when there is none."""
    err = data.get("error")
    if isinstance(err, Mapping) and err.get("message"):
        return str(err["message"])
    if isinstance(err, str):
        return err
    if data.get("detail"):
        return str(data["detail"])[:300]
    return None


def wire_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """The messages in the wire format, each tool call id sent once per request.

    Ollama and llama.cpp give calls no ids, so theirs are numbered per answer
    (``call_0``, ...): a conversation with several such answers (a tool loop, or a
    swarm member on Ollama handing off to one on OpenAI) repeats ids, and strict
    servers refuse a request answering one id twice.  A repeated (or empty) id goes
    out renamed (``call_0_2``), and so do the tool messages after its assistant
    message that answer it; the first use of an id keeps it (a stable prefix for
    prompt caches).  The history itself is not changed.
    """
    wire = [wire_message(m) for m in messages]
    taken = {c["id"] for w in wire for c in w.get("tool_calls", ())}
    taken |= {w["tool_call_id"] for w in wire if w["role"] == "tool"}
    sent: set[str] = set()
    # The ids the current assistant message's calls go out with, by their own id, in
    # call order: the tool messages after it answer them in turn.
    block: dict[str, list[str]] = {}
    for item in wire:
        if item["role"] == "tool":
            ids = block.get(item["tool_call_id"])
            if ids:
                item["tool_call_id"] = ids.pop(0)
            continue
        block = {}
        for call in item.get("tool_calls", ()):
            own = call["id"]
            if not own or own in sent:
                call["id"] = _fresh_id(own or "call", taken)
            sent.add(call["id"])
            block.setdefault(own, []).append(call["id"])
    return wire


def _fresh_id(base: str, taken: set[str]) -> str:
    n = 2
    while f"{base}_{n}" in taken:
        n += 1
    taken.add(f"{base}_{n}")
    return f"{base}_{n}"


def wire_message(message: Message) -> dict[str, Any]:
    """A message in the OpenAI chat-completions wire format."""
    if message.role == "tool":
        return {
            "role": "tool",
            "tool_call_id": message.tool_call_id or "",
            "content": message.content or "",
        }
    # Always a string: llama.cpp's server rejects null content on tool-call turns,
    # and OpenAI-compatible servers all accept "".
    wire: dict[str, Any] = {"role": message.role, "content": message.content or ""}
    if message.role == "assistant" and message.tool_calls:
        wire["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
            }
            for c in message.tool_calls
        ]
    if message.name:
        wire["name"] = message.name
    return wire


def wire_tool(tool: ToolSchema) -> dict[str, Any]:
    """A tool in the OpenAI wire format (also what Ollama and vLLM take)."""
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
        },
    }


def _usage(wire: Mapping[str, Any]) -> Usage:
    return Usage(
        input_tokens=int(wire.get("prompt_tokens") or 0),
        output_tokens=int(wire.get("completion_tokens") or 0),
        calls=1,
    )


def _error_hint(message: str) -> str | None:
    # vLLM's two classic refusals, whether in the cluster or behind an endpoint.
    lowered = message.lower()
    if "tool" in lowered and ("parser" in lowered or "tool choice" in lowered):
        return (
            "vLLM needs a tool-call parser: set options.tool_call_parser (e.g. hermes) "
            "in-cluster, or start the server with --enable-auto-tool-choice --tool-call-parser"
        )
    if "context length" in lowered or "max_model_len" in lowered:
        return (
            "raise options.max_model_len (a server's --max-model-len), "
            "or send a shorter conversation"
        )
    return None
