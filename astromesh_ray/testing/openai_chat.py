"""The chat-completion answers of ``ScriptedOpenAIServer``: one scripted step
rendered as a whole completion or as OpenAI's SSE chunks, and what the server
records of each stream it sent (``StreamRecord``)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from astromesh_ray.testing.scripted import count_words, split_words

__all__ = ["ChatReply", "StreamRecord"]

# How many pieces a streamed tool call's argument JSON is cut into (real servers
# send a few characters per chunk; clients must concatenate them).
_ARG_PIECES = 3


@dataclass
class StreamRecord:
    """One streamed chat answer, as the server sent it.

    ``ended_at`` (``time.monotonic()``) is set once the response ended, whether it
    sent every chunk (``completed``) or its client went away first
    (``client_gone``): what a test that cancels a stream waits for.
    """

    serial: int
    chunks_sent: int = 0
    completed: bool = False
    started_at: float = field(default_factory=time.monotonic)
    ended_at: float | None = None

    @property
    def client_gone(self) -> bool:
        """The response ended before its last chunk: the client closed the connection."""
        return self.ended_at is not None and not self.completed


class ChatReply:
    """One scripted answer rendered as a whole completion or as SSE chunks."""

    def __init__(
        self, step: dict[str, Any], body: dict[str, Any], serial: int, reasoning_field: str
    ) -> None:
        self.model = str(body["model"])
        self.id = f"chatcmpl-scripted-{serial}"
        self.created = int(time.time())
        self.content: str | None = step.get("content")
        self.reasoning: str | None = step.get("reasoning")
        self.reasoning_field = reasoning_field
        self.calls = [
            {
                "id": str(c.get("id") or f"call_{serial}_{i}"),
                "name": str(c["name"]),
                "arguments": c["arguments"]
                if isinstance(c.get("arguments"), str)
                else json.dumps(c.get("arguments") or {}),
            }
            for i, c in enumerate(step.get("tool_calls") or [])
        ]
        self.finish_reason = str(
            step.get("finish_reason") or ("tool_calls" if self.calls else "stop")
        )
        prompt = sum(
            _content_words(m.get("content")) for m in body["messages"] if isinstance(m, dict)
        )
        # Reasoning tokens count as completion tokens, as OpenAI and vLLM count them.
        completion = (
            count_words(self.reasoning)
            + count_words(self.content)
            + sum(count_words(f"{c['name']} {c['arguments']}") for c in self.calls)
        )
        self.usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def whole(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning is not None:
            message[self.reasoning_field] = self.reasoning
        if self.calls:
            message["tool_calls"] = [_wire_call(c, c["arguments"]) for c in self.calls]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": self.usage,
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> str:
        payload = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return f"data: {json.dumps(payload)}\n\n"

    def chunks(self, include_usage: bool) -> Iterator[str]:
        """The SSE events of the streamed answer, in order, through ``[DONE]``."""
        yield self._chunk({"role": "assistant", "content": ""})
        for piece in split_words(self.reasoning or ""):
            yield self._chunk({self.reasoning_field: piece})
        for piece in split_words(self.content or ""):
            yield self._chunk({"content": piece})
        for index, call in enumerate(self.calls):
            # OpenAI sends id, type and name first with empty arguments, then fragments.
            head = _wire_call(call, "")
            yield self._chunk({"tool_calls": [{"index": index, **head}]})
            for piece in _pieces(call["arguments"], _ARG_PIECES):
                fragment = {"index": index, "function": {"arguments": piece}}
                yield self._chunk({"tool_calls": [fragment]})
        yield self._chunk({}, self.finish_reason)
        if include_usage:
            usage = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": None,
                "choices": [],
                "usage": self.usage,
            }
            yield f"data: {json.dumps(usage)}\n\n"
        yield "data: [DONE]\n\n"

    async def sse(
        self, include_usage: bool, record: StreamRecord, token_delay_s: float = 0.0
    ) -> AsyncIterator[str]:
        """The streamed answer, ``token_delay_s`` apart, kept in ``record``: how many
        chunks went out, and whether the stream ended before its last one (the
        client went away: Starlette cancels the response when it disconnects)."""
        try:
            for chunk in self.chunks(include_usage):
                if token_delay_s and record.chunks_sent:
                    await asyncio.sleep(token_delay_s)
                yield chunk
                record.chunks_sent += 1
            record.completed = True
        finally:
            record.ended_at = time.monotonic()


def _wire_call(call: dict[str, Any], arguments: str) -> dict[str, Any]:
    return {
        "id": call["id"],
        "type": "function",
        "function": {"name": call["name"], "arguments": arguments},
    }


def _pieces(text: str, n: int) -> list[str]:
    size = max(1, -(-len(text) // n))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _content_words(content: Any) -> int:
    if isinstance(content, str):
        return count_words(content)
    if isinstance(content, list):  # content parts: count the text ones
        return sum(
            count_words(p.get("text"))
            for p in content
            if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return 0
