"""``OpenAIProvider``: any OpenAI-compatible ``/v1/chat/completions`` endpoint.

One class serves the YAML providers ``openai``, ``openai_compat``, ``ollama`` (its
``/v1`` API), ``vllm`` and ``llamacpp``: they speak the same wire format and differ
only in default endpoint and whether an API key is needed.  Talks plain ``httpx``
(no vendor SDK) through one pooled client per event loop.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any
from urllib.parse import urlparse

import httpx

from astromesh_ray.core.messages import (
    Completion,
    CompletionChunk,
    CompletionRequest,
    Message,
    ToolCall,
    ToolSchema,
    Usage,
)
from astromesh_ray.core.providers.http import (
    ClientPool,
    api_key,
    auth_hint,
    backend_message,
    check_options,
    header_option,
    retryable_status,
    sse_data,
    status_message,
    transport_message,
)
from astromesh_ray.core.providers.retry import parse_retry_after
from astromesh_ray.errors import ConfigError, ProviderError

__all__ = ["DEFAULT_ENDPOINTS", "OpenAIProvider", "wire_message", "wire_tool"]

DEFAULT_ENDPOINTS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "openai_compat": "https://api.openai.com/v1",
    "ollama": "http://localhost:11434/v1",
    "llamacpp": "http://localhost:8080/v1",
}
_KINDS = (*DEFAULT_ENDPOINTS, "vllm")
_OPENAI_HOST = "api.openai.com"
# `options:` keys of a model block this provider understands.
_OPTIONS = {
    "organization": "sent as the OpenAI-Organization header",
    "headers": "extra HTTP headers for every request",
}


class OpenAIProvider:
    """A chat model behind an OpenAI-compatible HTTP API.

    ``parameters`` are default sampling options; a request's own ``parameters`` win.
    The API key is read from the environment variable ``api_key_env`` at call time,
    so rotating it needs no restart.
    """

    def __init__(
        self,
        *,
        name: str,
        kind: str = "openai",
        model: str,
        endpoint: str | None = None,
        api_key_env: str | None = None,
        parameters: dict[str, Any] | None = None,
        timeout_s: float = 60.0,
        options: dict[str, Any] | None = None,
    ) -> None:
        opts = dict(options or {})
        if kind == "vllm" and opts.get("mode") == "in_cluster":
            raise ConfigError(
                f"{name}: in-cluster vLLM (options.mode: in_cluster) runs only on Ray Serve",
                hint="use `astromesh serve` or `serve deploy`; `astromesh run` runs without "
                "Ray, so point it at a vLLM server's endpoint instead",
            )
        check_options(name, kind, opts, _OPTIONS)
        self.organization: str | None = opts.get("organization")
        self.extra_headers: dict[str, str] = header_option(opts)
        if kind not in _KINDS:
            raise ConfigError(
                f"OpenAIProvider does not serve provider kind {kind!r}",
                hint="valid kinds: " + ", ".join(sorted(_KINDS)),
            )
        if endpoint is None and kind not in DEFAULT_ENDPOINTS:
            # vLLM's own default port (8000) is also the gateway's: guessing it would
            # make the agent call astromesh itself.
            raise ConfigError(
                f"{name}: provider {kind!r} needs an endpoint",
                hint="set endpoint to the server's /v1 URL, e.g. http://localhost:8001/v1",
            )
        self.name = name
        self.kind = kind
        self.model = model
        self.endpoint = _normalize_endpoint(kind, endpoint or DEFAULT_ENDPOINTS[kind])
        # OPENAI_API_KEY is only ever sent to OpenAI itself: any other endpoint gets a
        # key only when the YAML names the variable explicitly.
        is_openai = urlparse(self.endpoint).hostname == _OPENAI_HOST
        self.api_key_env = api_key_env or ("OPENAI_API_KEY" if is_openai else None)
        self._key_required = is_openai
        self.parameters: dict[str, Any] = dict(parameters or {})
        self.timeout_s = timeout_s
        self._pool = ClientPool()  # pickles without its live client

    def __repr__(self) -> str:
        return f"OpenAIProvider(name={self.name!r}, kind={self.kind!r}, endpoint={self.endpoint!r})"

    # -- Provider protocol -------------------------------------------------------------

    async def complete(self, request: CompletionRequest) -> Completion:
        """Send one chat-completion request and return the whole answer."""
        body = self._body(request, stream=False)
        url = f"{self.endpoint}/chat/completions"
        try:
            response = await self._http().post(url, json=body, headers=self._headers())
        except httpx.TransportError as exc:
            raise self._transport_error(exc, url) from exc
        if response.status_code >= 400:
            raise self._status_error(
                response.status_code, response.content, url, response.headers.get("retry-after")
            )
        try:
            data = response.json()
            choice = data["choices"][0]
            wire = choice["message"]
            if not isinstance(wire, dict):
                raise TypeError(wire)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise self._bad_response(f"not a chat completion: {response.text[:200]!r}") from exc
        calls = [self._tool_call(i, c) for i, c in enumerate(wire.get("tool_calls") or [])]
        usage = data.get("usage") or _estimate_usage(request, wire.get("content") or "", calls)
        return Completion(
            message=Message(role="assistant", content=wire.get("content"), tool_calls=calls),
            usage=_usage(usage),
            model=str(data.get("model") or self.model),
            provider=self.name,
            finish_reason=str(choice.get("finish_reason") or ("tool_calls" if calls else "stop")),
        )

    async def stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        """Stream text deltas; tool calls, usage and finish reason come in the last chunk."""
        body = self._body(request, stream=True)
        url = f"{self.endpoint}/chat/completions"
        # index -> {"id", "name", "arguments"}: tool calls arrive as fragments.
        pending: dict[int, dict[str, str]] = {}
        usage: dict[str, Any] = {}
        finish: str | None = None
        model = self.model
        text: list[str] = []
        try:
            async with self._http().stream(
                "POST", url, json=body, headers=self._headers()
            ) as response:
                if response.status_code >= 400:
                    raise self._status_error(
                        response.status_code,
                        await response.aread(),
                        url,
                        response.headers.get("retry-after"),
                    )
                async for line in response.aiter_lines():
                    payload = sse_data(line)
                    if payload is None:
                        continue
                    if payload == "[DONE]":
                        break
                    chunk = self._decode_chunk(payload)
                    model = str(chunk.get("model") or model)
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        finish = choice.get("finish_reason") or finish
                        delta = choice.get("delta") or {}
                        if delta.get("content"):
                            text.append(str(delta["content"]))
                            yield CompletionChunk(text=text[-1])
                        for position, frag in enumerate(delta.get("tool_calls") or []):
                            _merge_fragment(pending, position, frag)
        except httpx.TransportError as exc:
            raise self._transport_error(exc, url) from exc
        calls = [
            self._tool_call(i, {"id": p["id"], "function": p}) for i, p in sorted(pending.items())
        ]
        if not usage and self.kind == "llamacpp":
            # llama-cpp-python ignores stream_options.include_usage: count with the
            # server's own tokenizer instead.
            usage = await self._count_with_server(request, "".join(text), calls)
        if not usage:
            usage = _estimate_usage(request, "".join(text), calls)
        yield CompletionChunk(
            tool_calls=calls,
            usage=_usage(usage),
            finish_reason=finish or ("tool_calls" if calls else "stop"),
            model=model,
        )

    async def _count_with_server(
        self, request: CompletionRequest, answer: str, calls: list[ToolCall]
    ) -> dict[str, int]:
        """Token counts from llama-cpp-python's ``/extras/tokenize/count``: the prompt
        side counts the messages' text (not the chat template's markup)."""
        root = self.endpoint.removesuffix("/v1")
        prompt = "\n".join(m.content or "" for m in request.messages)
        generated = answer + "".join(f"{c.name}{json.dumps(c.arguments)}" for c in calls)
        counts: list[int] = []
        for piece in (prompt, generated):
            try:
                response = await self._http().post(
                    f"{root}/extras/tokenize/count", json={"input": piece}
                )
                counts.append(int(response.json()["count"]) if response.status_code == 200 else 0)
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                counts.append(0)  # counting is best effort: the answer itself is fine
        return {"prompt_tokens": counts[0], "completion_tokens": counts[1]}

    async def health(self) -> bool:
        """Whether ``GET {endpoint}/models`` answers 200; never raises."""
        try:
            response = await self._http().get(
                f"{self.endpoint}/models",
                headers=self._headers(required=False),
                timeout=min(self.timeout_s, 5.0),
            )
            return response.status_code == 200
        except Exception:  # a probe: any failure just means "not healthy"
            return False

    async def aclose(self) -> None:
        """Close the pooled HTTP client (a later call opens a new one)."""
        await self._pool.aclose()

    # -- request side ------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        return self._pool.client(self.timeout_s)

    def _headers(self, required: bool = True) -> dict[str, str]:
        headers = dict(self.extra_headers)
        if self.organization:
            headers["OpenAI-Organization"] = self.organization
        key = api_key(self.api_key_env)
        if key:
            return {**headers, "Authorization": f"Bearer {key}"}
        if required and self._key_required:
            var = self.api_key_env or "OPENAI_API_KEY"
            raise ProviderError(
                f"{self.name}: no API key for {self.endpoint}: ${var} is not set",
                hint=f"set {var}",
                provider=self.name,
                status=None,
                retryable=False,
                caller_fault=True,  # configuration, not the provider: no breaker trip
            )
        return headers

    def _body(self, request: CompletionRequest, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {**self.parameters, **request.parameters}
        # Set after the merge so sampling parameters can never replace the payload.
        body["model"] = self.model
        body["messages"] = [wire_message(m) for m in request.messages]
        if request.tools:
            body["tools"] = [wire_tool(t) for t in request.tools]
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        return body

    # -- response side -----------------------------------------------------------------

    def _tool_call(self, index: int, wire: dict[str, Any]) -> ToolCall:
        function = wire.get("function") or {}
        name = str(function.get("name") or "")
        if not name:
            raise self._bad_response(f"tool call #{index} has no function name")
        # llama.cpp and some older servers omit ids; the engine needs one to pair results.
        return ToolCall.parse(
            str(wire.get("id") or f"call_{index}"), name, function.get("arguments")
        )

    def _decode_chunk(self, payload: str) -> dict[str, Any]:
        try:
            chunk = json.loads(payload)
        except ValueError:
            raise self._bad_response(f"undecodable stream chunk {payload[:200]!r}") from None
        if not isinstance(chunk, dict):
            raise self._bad_response(f"stream chunk is not an object: {payload[:200]!r}")
        if isinstance(chunk.get("error"), dict):
            # vLLM and others report failures mid-stream as a data event.
            err = chunk["error"]
            status = err.get("code") if isinstance(err.get("code"), int) else None
            raise ProviderError(
                f"{self.name}: stream failed: {err.get('message', err)}",
                provider=self.name,
                status=status,
                retryable=status is None or retryable_status(status),
            )
        return chunk

    # -- errors ------------------------------------------------------------------------

    def _bad_response(self, what: str) -> ProviderError:
        return ProviderError(
            f"{self.name}: malformed response from {self.endpoint}: {what}",
            hint=f"check that {self.endpoint} is an OpenAI-compatible API",
            provider=self.name,
            status=None,
            retryable=False,
        )

    def _transport_error(self, exc: httpx.TransportError, url: str) -> ProviderError:
        return ProviderError(
            f"{self.name}: {transport_message(exc, url, self.timeout_s)}",
            hint=self._reach_hint(),
            provider=self.name,
            status=None,
            retryable=True,
        )

    def _reach_hint(self) -> str:
        if self.kind == "ollama":
            return (
                f"start Ollama (`ollama serve`) at {self.endpoint} and pull the model "
                f"(`ollama pull {self.model}`)"
            )
        if self.kind in ("vllm", "llamacpp"):
            return f"start the {self.kind} server at {self.endpoint}"
        return f"check network access to {self.endpoint} and {self.api_key_env or 'the API key'}"

    def _status_error(
        self, status: int, content: bytes, url: str, retry_after: str | None = None
    ) -> ProviderError:
        detail = backend_message(content, _error_text)
        hint: str | None = None
        if status in (401, 403):
            hint = auth_hint(self.api_key_env)
        elif status == 404:
            hint = (
                f"pull the model (`ollama pull {self.model}`)"
                if self.kind == "ollama"
                else f"check the model name {self.model!r} and endpoint {self.endpoint}"
            )
        elif status == 429:
            hint = "rate limited or out of quota: retry later or raise the limit"
        return ProviderError(
            f"{self.name}: {status_message(status, url, detail)}",
            hint=hint,
            provider=self.name,
            status=status,
            retryable=retryable_status(status),
            retry_after_s=parse_retry_after(retry_after),
        )


def _estimate_usage(
    request: CompletionRequest, answer: str, calls: list[ToolCall]
) -> dict[str, int]:
    """Usage for a server that reports none: about 4 characters per token, so cost
    and budgets are never silently zero."""
    prompt = sum(len(m.content or "") for m in request.messages)
    prompt += sum(len(json.dumps(asdict(t))) for t in request.tools)
    generated = len(answer) + sum(len(c.name) + len(json.dumps(c.arguments)) for c in calls)
    return {"prompt_tokens": max(1, prompt // 4), "completion_tokens": max(1, generated // 4)}


def _usage(wire: dict[str, Any]) -> Usage:
    # Servers that do not report usage still made one call.
    return Usage(
        input_tokens=int(wire.get("prompt_tokens") or 0),
        output_tokens=int(wire.get("completion_tokens") or 0),
        calls=1,
    )


def _normalize_endpoint(kind: str, endpoint: str) -> str:
    endpoint = endpoint.rstrip("/")
    # Ollama users often give the native root (http://localhost:11434); its OpenAI API is /v1.
    if kind == "ollama" and not endpoint.endswith("/v1"):
        endpoint += "/v1"
    return endpoint


def _error_text(data: dict[str, Any]) -> str | None:
    err = data.get("error")
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])
    if isinstance(err, str):  # Ollama's native shape {"error": "..."}
        return err
    if data.get("detail"):  # FastAPI-based servers
        return str(data["detail"])[:300]
    return None


def _merge_fragment(pending: dict[int, dict[str, str]], position: int, frag: Any) -> None:
    if not isinstance(frag, dict):
        return
    index = frag.get("index")
    entry = pending.setdefault(
        index if isinstance(index, int) else position, {"id": "", "name": "", "arguments": ""}
    )
    if frag.get("id"):
        entry["id"] = str(frag["id"])
    function = frag.get("function") or {}
    if function.get("name"):
        entry["name"] = str(function["name"])
    arguments = function.get("arguments")
    if isinstance(arguments, dict):
        entry["arguments"] += json.dumps(arguments)
    elif arguments:
        entry["arguments"] += str(arguments)


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
