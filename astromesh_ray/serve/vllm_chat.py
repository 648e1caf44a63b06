"""Our provider calls over Ray's ``LLMServer``: the OpenAI chat wire format both ways.

``serve/vllm.py`` deploys in-cluster vLLM as Ray's ``LLMServer`` with
``ProviderMethods`` mixed in, so the agent's ``ServeProvider`` calls ``complete`` /
``stream`` / ``health`` on plain dicts as with every provider deployment.  Here
those calls become the ``ChatCompletionRequest`` body ``LLMServer.chat`` takes
(``chat_body``), and what it answers becomes our ``Completion`` /
``CompletionChunk`` (``completion_from_response``, ``ChatStreamDecoder``): tool
calls as ``{id, name, arguments: dict}``, usage always counted, errors as
``ProviderError`` with status and retryability.

Nothing here imports vLLM: the request model is injected (``make_request``), and
responses are read as dicts (pydantic objects are dumped first), so the whole path
is testable without it.  The wire helpers mirror ``core/providers/openai.py``
(vLLM speaks the same format in-process as over HTTP).
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from astromesh_ray.core.messages import (
    Completion,
    CompletionChunk,
    CompletionRequest,
    Message,
    ToolCall,
    Usage,
)
from astromesh_ray.core.providers.openai import wire_message, wire_tool
from astromesh_ray.errors import AstromeshError, ProviderError
from astromesh_ray.serve.location import replica_location
from astromesh_ray.serve.outcome import failure, ok

__all__ = [
    "ChatFn",
    "ChatStreamDecoder",
    "ProviderMethods",
    "VLLMChatAdapter",
    "chat_body",
    "completion_from_response",
]

_RETRYABLE_STATUS = {408, 409, 429}


# -- request side ------------------------------------------------------------------


def chat_body(request: CompletionRequest, model_id: str, *, stream: bool) -> dict[str, Any]:
    """The OpenAI chat-completion body vLLM's ``ChatCompletionRequest`` takes."""
    body: dict[str, Any] = dict(request.parameters)
    # Set after the parameters so sampling options can never replace the payload.
    body["model"] = model_id
    body["messages"] = [wire_message(m) for m in request.messages]
    body.pop("tools", None)
    if request.tools:
        body["tools"] = [wire_tool(t) for t in request.tools]
    body["stream"] = stream
    if stream:
        body["stream_options"] = {"include_usage": True}
    else:
        body.pop("stream_options", None)
    return body


def _plain(item: Any) -> Any:
    # vLLM's response models are pydantic; dicts and SSE strings pass through.
    dump = getattr(item, "model_dump", None)
    return dump() if callable(dump) else item


def _usage(wire: Any) -> Usage:
    # A call without usage still counts as one call.
    wire = wire if isinstance(wire, Mapping) else {}
    return Usage(
        input_tokens=int(wire.get("prompt_tokens") or 0),
        output_tokens=int(wire.get("completion_tokens") or 0),
        calls=1,
    )


def _error(name: str, data: Mapping[str, Any]) -> ProviderError | None:
    """The ``ProviderError`` an error body stands for, or None for a normal body.

    Ray 2.60 wraps vLLM errors as ``{"error": {message, type, param, code}}``; vLLM
    streams mid-generation failures the same way; older vLLM used a flat
    ``{"object": "error", "message", "code"}``.
    """
    if isinstance(data.get("error"), Mapping):
        err: Mapping[str, Any] = data["error"]
    elif data.get("object") == "error":
        err = data
    else:
        return None
    message = str(err.get("message") or err)
    code = err.get("code")
    status = code if isinstance(code, int) else None
    lowered = message.lower()
    hint = None
    if "tool" in lowered and ("parser" in lowered or "tool choice" in lowered):
        hint = "set options.tool_call_parser (e.g. hermes) so vLLM can parse tool calls"
    elif "context length" in lowered or "max_model_len" in lowered:
        hint = "raise options.max_model_len, or send a shorter conversation"
    return ProviderError(
        f"{name}: vLLM answered {status or 'an error'}: {message}",
        hint=hint,
        provider=name,
        status=status,
        retryable=status is None or status in _RETRYABLE_STATUS or status >= 500,
    )


def _bad_response(name: str, what: str) -> ProviderError:
    return ProviderError(
        f"{name}: malformed answer from vLLM: {what}",
        provider=name,
        status=None,
        retryable=False,
    )


def _tool_call(name: str, index: int, wire: Mapping[str, Any]) -> ToolCall:
    function = wire.get("function") or {}
    tool = str(function.get("name") or "")
    if not tool:
        raise _bad_response(name, f"tool call #{index} has no function name")
    return ToolCall.parse(str(wire.get("id") or f"call_{index}"), tool, function.get("arguments"))


def completion_from_response(data: Any, *, name: str, model_id: str) -> Completion:
    """A non-streamed ``ChatCompletionResponse`` (or its dict) as our ``Completion``;
    an error response raises ``ProviderError``."""
    data = _plain(data)
    if not isinstance(data, Mapping):
        raise _bad_response(name, f"expected a chat completion, got {type(data).__name__}")
    error = _error(name, data)
    if error is not None:
        raise error
    try:
        choice = data["choices"][0]
        wire = choice["message"]
        if not isinstance(wire, Mapping):
            raise TypeError(wire)
    except (KeyError, IndexError, TypeError):
        raise _bad_response(name, f"not a chat completion: {str(data)[:200]!r}") from None
    calls = [_tool_call(name, i, c) for i, c in enumerate(wire.get("tool_calls") or [])]
    return Completion(
        message=Message(role="assistant", content=wire.get("content"), tool_calls=calls),
        usage=_usage(data.get("usage")),
        model=str(data.get("model") or model_id),
        provider=name,
        finish_reason=str(choice.get("finish_reason") or ("tool_calls" if calls else "stop")),
    )


class ChatStreamDecoder:
    """Turns what ``LLMServer.chat`` streams into our ``CompletionChunk``s.

    Ray batches vLLM's server-sent events into lists of ``"data: {...}\\n\\n"``
    strings; an item may also be a response or error object.  ``feed`` returns the
    text deltas an item carries; tool-call fragments and usage accumulate, and
    ``finish`` returns the last chunk with whole tool calls, usage and finish reason.
    """

    def __init__(self, *, name: str, model_id: str) -> None:
        self.name = name
        self.model = model_id
        self._calls: dict[int, dict[str, str]] = {}
        self._usage: Any = None
        self._finish: str | None = None

    def feed(self, item: Any) -> list[CompletionChunk]:
        """The text chunks in ``item``; raises ``ProviderError`` on an error event."""
        item = _plain(item)
        if isinstance(item, list):
            return [chunk for part in item for chunk in self.feed(part)]
        if isinstance(item, str):
            return [chunk for event in _sse_events(self.name, item) for chunk in self.feed(event)]
        if not isinstance(item, Mapping):
            raise _bad_response(self.name, f"unexpected stream item {type(item).__name__}")
        error = _error(self.name, item)
        if error is not None:
            raise error
        self.model = str(item.get("model") or self.model)
        self._usage = item.get("usage") or self._usage
        chunks = []
        for choice in item.get("choices") or []:
            self._finish = choice.get("finish_reason") or self._finish
            delta = choice.get("delta") or {}
            if delta.get("content"):
                chunks.append(CompletionChunk(text=str(delta["content"])))
            for position, fragment in enumerate(delta.get("tool_calls") or []):
                self._merge(position, fragment)
        return chunks

    def _merge(self, position: int, fragment: Any) -> None:
        # vLLM sends a call's id and name first, then its arguments in pieces.
        if not isinstance(fragment, Mapping):
            return
        index = fragment.get("index")
        entry = self._calls.setdefault(
            index if isinstance(index, int) else position, {"id": "", "name": "", "arguments": ""}
        )
        if fragment.get("id"):
            entry["id"] = str(fragment["id"])
        function = fragment.get("function") or {}
        if function.get("name"):
            entry["name"] = str(function["name"])
        arguments = function.get("arguments")
        if isinstance(arguments, Mapping):
            entry["arguments"] += json.dumps(arguments)
        elif arguments:
            entry["arguments"] += str(arguments)

    def finish(self) -> CompletionChunk:
        """The last chunk: whole tool calls, usage and finish reason."""
        calls = [
            _tool_call(self.name, i, {"id": c["id"], "function": c})
            for i, c in sorted(self._calls.items())
        ]
        return CompletionChunk(
            tool_calls=calls,
            usage=_usage(self._usage),
            finish_reason=self._finish or ("tool_calls" if calls else "stop"),
            model=self.model,
        )


def _sse_events(name: str, text: str) -> list[dict[str, Any]]:
    events = []
    for line in text.splitlines():
        if not line.startswith("data:"):
            continue  # blank separators, comments, event names
        payload = line[5:].strip()
        if not payload or payload == "[DONE]":
            continue
        try:
            event = json.loads(payload)
        except ValueError:
            raise _bad_response(name, f"undecodable stream event {payload[:200]!r}") from None
        if not isinstance(event, dict):
            raise _bad_response(name, f"stream event is not an object: {payload[:200]!r}")
        events.append(event)
    return events


# -- the replica side ---------------------------------------------------------------

ChatFn = Callable[[Any], Any]
"""``LLMServer.chat``: takes a ``ChatCompletionRequest``, returns (an awaitable of) an
async iterator of responses, SSE strings or batches of them."""


@dataclass
class VLLMChatAdapter:
    """Our provider protocol (``complete`` / ``stream`` / ``health`` on dicts, errors
    as outcome values) over an ``LLMServer``'s ``chat``.

    ``make_request`` builds vLLM's ``ChatCompletionRequest`` from ``chat_body``'s dict;
    it is injected so this class (and its tests) need no vLLM.
    """

    name: str
    model_id: str
    chat: ChatFn
    make_request: Callable[[dict[str, Any]], Any]
    check_health: Callable[[], Awaitable[Any]]
    timeout_s: float | None = None
    where: dict[str, str] | None = None

    async def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        """One whole answer, as ``ok(Completion.to_dict())`` or a failure outcome."""
        try:
            body = chat_body(CompletionRequest.from_dict(request), self.model_id, stream=False)
            async with asyncio.timeout(self.timeout_s):
                items = [item async for item in self._items(body)]
            if not items:
                raise _bad_response(self.name, "no response")
            completion = completion_from_response(items[0], name=self.name, model_id=self.model_id)
        except Exception as exc:
            return failure(self._as_provider_error(exc))
        completion.location.update(self.where or {})
        return ok(completion.to_dict())

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Text chunks as they come, then the last chunk; a failure ends the stream."""
        decoder = ChatStreamDecoder(name=self.name, model_id=self.model_id)
        try:
            body = chat_body(CompletionRequest.from_dict(request), self.model_id, stream=True)
            items = self._items(body).__aiter__()
            while True:
                try:
                    # The timeout bounds each wait (first token, then between tokens),
                    # as an HTTP client's read timeout would.
                    item = await asyncio.wait_for(items.__anext__(), self.timeout_s)
                except StopAsyncIteration:
                    break
                for chunk in decoder.feed(item):
                    yield ok(chunk.to_dict())
            last = decoder.finish()
            last.location.update(self.where or {})  # where the model ran, for the trace
            yield ok(last.to_dict())
        except Exception as exc:
            yield failure(self._as_provider_error(exc))

    async def health(self) -> bool:
        """Whether the engine answers its health check; never raises."""
        try:
            await self.check_health()
        except Exception:  # a probe: any failure just means "not healthy"
            return False
        return True

    async def _items(self, body: dict[str, Any]) -> AsyncIterator[Any]:
        try:
            request = self.make_request(body)
        except ValueError as exc:  # pydantic: a parameter vLLM does not accept
            raise ProviderError(
                f"{self.name}: vLLM refused the request: {exc}",
                hint="check the model block's parameters",
                provider=self.name,
                status=400,
                retryable=False,
            ) from None
        result = self.chat(request)
        if inspect.isawaitable(result):
            result = await result
        if hasattr(result, "__aiter__"):
            async for item in result:
                yield item
        else:
            yield result

    def _as_provider_error(self, exc: Exception) -> AstromeshError:
        if isinstance(exc, AstromeshError):
            return exc
        if isinstance(exc, TimeoutError) and self.timeout_s is not None:
            return ProviderError(
                f"{self.name}: no answer from vLLM within {self.timeout_s:g}s",
                hint="raise the model block's timeout, or add replicas",
                provider=self.name,
                status=None,
                retryable=True,
            )
        # The engine failed (died, ran out of memory, ...): another replica may not.
        return ProviderError(
            f"{self.name}: vLLM engine error: {type(exc).__name__}: {exc}",
            provider=self.name,
            status=None,
            retryable=True,
        )


class ProviderMethods:
    """``complete`` / ``stream`` / ``health``, as ``ProviderDeployment`` has them, for
    a class with ``LLMServer``'s ``chat`` and ``check_health`` (mixed in first; it
    defines neither, so it shadows nothing of ``LLMServer``)."""

    _astromesh: VLLMChatAdapter

    def init_provider_methods(
        self, settings: Mapping[str, Any], make_request: Callable[[dict[str, Any]], Any]
    ) -> None:
        """Wire the methods to this server's ``chat``; ``settings`` are ``vllm_app``'s
        ``name``, ``model_id`` and ``timeout_s``."""
        self._astromesh = VLLMChatAdapter(
            name=str(settings["name"]),
            model_id=str(settings["model_id"]),
            timeout_s=settings.get("timeout_s"),
            chat=getattr(self, "chat"),  # noqa: B009 - provided by the server class
            make_request=make_request,
            check_health=getattr(self, "check_health"),  # noqa: B009
            where=replica_location(),
        )

    async def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        """One whole answer as an outcome (see ``VLLMChatAdapter.complete``)."""
        return await self._astromesh.complete(request)

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Chunks as outcomes (see ``VLLMChatAdapter.stream``)."""
        async for outcome in self._astromesh.stream(request):
            yield outcome

    async def health(self) -> bool:
        """Whether the engine is healthy; never raises."""
        return await self._astromesh.health()
