"""``OllamaProvider``: a model served by Ollama, through its native ``/api/chat`` API.

The native API (not Ollama's ``/v1`` OpenAI shim) is what Ollama documents for tool
calling and options: tool calls arrive whole with arguments as JSON objects, streams
are NDJSON lines rather than SSE, sampling knobs live under ``options`` with Ollama's
own names (``num_predict``, ``num_ctx``, ...), and ``/api/tags`` tells whether the
model is actually pulled.  A thinking model's ``message.thinking`` streams as
reasoning deltas.  Talks plain ``httpx`` through one pooled client per loop.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import httpx

from astromesh_ray.core.messages import (
    Completion,
    CompletionChunk,
    CompletionRequest,
    Message,
    ToolArgsDelta,
    ToolCall,
    Usage,
)
from astromesh_ray.core.providers.http import (
    DEFAULT_MAX_CONNECTIONS,
    ClientPool,
    auth_hint,
    backend_message,
    bearer_headers,
    check_options,
    connection_lost,
    header_option,
    retryable_status,
    status_message,
    transport_message,
)
from astromesh_ray.core.providers.openai_wire import wire_tool
from astromesh_ray.errors import ConfigError, ProviderError

__all__ = ["DEFAULT_ENDPOINT", "SAMPLING_PARAMETERS", "OllamaProvider"]

DEFAULT_ENDPOINT = "http://localhost:11434"
# `options:` keys of a model block this provider understands.
_OPTIONS = {
    "keep_alive": "how long Ollama keeps the model loaded, e.g. '5m' or seconds",
    "format": "'json' or a JSON schema the answer must follow",
    "think": "true or false (or 'low', 'medium', 'high' for gpt-oss): whether a thinking "
    "model thinks; its thinking streams as reasoning",
    "headers": "extra HTTP headers for every request",
}
# Our sampling parameter -> Ollama's `options` key.  Names are ours where the OpenAI
# vocabulary has one (so one agent YAML works on any provider), Ollama's otherwise.
SAMPLING_PARAMETERS: dict[str, str] = {
    "max_tokens": "num_predict",
    **{
        name: name
        for name in (
            "num_predict", "temperature", "top_p", "top_k", "seed", "stop", "presence_penalty",
            "frequency_penalty", "repeat_penalty", "num_ctx", "min_p",
        )
    },
}  # fmt: skip


class OllamaProvider:
    """A chat model served by Ollama's native API.

    ``parameters`` are default sampling options; a request's own ``parameters`` win.
    If ``api_key_env`` names a set variable, its value goes out as a bearer token
    (for an Ollama behind an authenticating proxy); it is read at call time.
    ``max_connections`` sizes the connection pool (all kept alive).  A request's
    ``response_schema`` goes out as ``format`` (in place of ``options.format``).
    """

    # Constrained decoding to request.response_schema, done by Ollama (`format`).
    native_structured_output: ClassVar[bool] = True

    def __init__(
        self,
        *,
        name: str,
        kind: str = "ollama",
        model: str,
        endpoint: str | None = None,
        api_key_env: str | None = None,
        parameters: dict[str, Any] | None = None,
        timeout_s: float = 60.0,
        options: dict[str, Any] | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        opts = dict(options or {})
        check_options(name, kind, opts, _OPTIONS)
        _check_options(name, opts)
        bad = sorted(set(parameters or {}) - set(SAMPLING_PARAMETERS))
        if bad:
            # Caught at load time too, not only when the first request fails.
            raise ConfigError(
                f"{name}: unknown sampling parameters {', '.join(map(repr, bad))} for Ollama",
                hint="valid parameters: " + ", ".join(SAMPLING_PARAMETERS),
            )
        self.name = name
        self.kind = kind
        self.model = model
        self.endpoint = _normalize_endpoint(endpoint or DEFAULT_ENDPOINT)
        self.api_key_env = api_key_env
        self.parameters: dict[str, Any] = dict(parameters or {})
        self.timeout_s = timeout_s
        self.keep_alive: str | float | None = opts.get("keep_alive")
        self.format: str | dict[str, Any] | None = opts.get("format")
        self.think: bool | str | None = opts.get("think")
        self.extra_headers: dict[str, str] = header_option(opts)
        self.max_connections = max_connections
        self._pool = ClientPool(max_connections)  # pickles without its live client

    def __repr__(self) -> str:
        return (
            f"OllamaProvider(name={self.name!r}, model={self.model!r}, endpoint={self.endpoint!r})"
        )

    # -- Provider protocol -------------------------------------------------------------

    async def complete(self, request: CompletionRequest) -> Completion:
        """POST ``/api/chat`` without streaming and return the whole answer."""
        body = self._body(request, stream=False)
        url = f"{self.endpoint}/api/chat"
        try:
            response = await self._http().post(url, json=body, headers=self._headers())
        except httpx.TransportError as exc:
            raise self._transport_error(exc, url) from exc
        if response.status_code >= 400:
            raise self._status_error(response.status_code, response.content, url)
        try:
            data = response.json()
            if isinstance(data, dict) and data.get("error"):
                raise self._stream_error(data["error"])
            wire = data["message"]
            if not isinstance(wire, dict):
                raise TypeError(wire)
        except (ValueError, KeyError, TypeError) as exc:
            raise self._bad_response(f"not a chat response: {response.text[:200]!r}") from exc
        calls = [self._tool_call(i, c) for i, c in enumerate(wire.get("tool_calls") or [])]
        return Completion(
            message=Message(
                role="assistant", content=wire.get("content") or None, tool_calls=calls
            ),
            usage=_usage(data),
            model=str(data.get("model") or self.model),
            provider=self.name,
            finish_reason=_finish(data.get("done_reason"), calls),
        )

    async def stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        """Stream text and reasoning (``message.thinking``) deltas, and each tool call's
        arguments as it arrives; whole tool calls, usage and finish reason come in the
        last chunk."""
        body = self._body(request, stream=True)
        url = f"{self.endpoint}/api/chat"
        # Ollama sends each tool call whole, but possibly on any line: hold them so
        # the engine sees every call of the message at once, as other providers do.
        wire_calls: list[Any] = []
        final: dict[str, Any] = {}
        model = self.model
        try:
            async with self._http().stream(
                "POST", url, json=body, headers=self._headers()
            ) as response:
                if response.status_code >= 400:
                    raise self._status_error(response.status_code, await response.aread(), url)
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    part = self._decode_line(line)
                    model = str(part.get("model") or model)
                    message = part.get("message")
                    message = message if isinstance(message, dict) else {}
                    arrived = list(message.get("tool_calls") or [])
                    chunk = CompletionChunk(
                        text=str(message.get("content") or ""),
                        reasoning=str(message.get("thinking") or ""),
                        # Ollama sends each call whole: its arguments are one fragment.
                        tool_args=[
                            _args_delta(len(wire_calls) + i, call) for i, call in enumerate(arrived)
                        ],
                    )
                    wire_calls.extend(arrived)
                    if chunk.text or chunk.reasoning or chunk.tool_args:
                        yield chunk
                    if part.get("done"):
                        final = part
                        break
        except httpx.TransportError as exc:
            raise self._transport_error(exc, url) from exc
        if not final:
            raise self._bad_response("the stream ended without a final `done: true` line")
        calls = [self._tool_call(i, c) for i, c in enumerate(wire_calls)]
        yield CompletionChunk(
            tool_calls=calls,
            usage=_usage(final),
            finish_reason=_finish(final.get("done_reason"), calls),
            model=model,
        )

    async def health(self) -> bool:
        """Whether ``GET /api/tags`` answers 200 and lists the model; never raises."""
        try:
            response = await self._http().get(
                f"{self.endpoint}/api/tags",
                headers=self._headers(),
                timeout=min(self.timeout_s, 5.0),
            )
            if response.status_code != 200:
                return False
            listed = {
                str(entry.get(key))
                for entry in response.json().get("models") or []
                for key in ("name", "model")
                if isinstance(entry, dict) and entry.get(key)
            }
        except Exception:  # a probe: any failure just means "not healthy"
            return False
        # Ollama treats a model without a tag as `:latest`, on both sides.
        return _with_tag(self.model) in {_with_tag(m) for m in listed}

    async def aclose(self) -> None:
        """Close the pooled HTTP client (a later call opens a new one)."""
        await self._pool.aclose()

    # -- request side ------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        return self._pool.client(self.timeout_s)

    def _headers(self) -> dict[str, str]:
        return bearer_headers(self.extra_headers, self.api_key_env)

    def _body(self, request: CompletionRequest, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": _wire_messages(request.messages),
            "stream": stream,
        }
        if request.tools:
            body["tools"] = [wire_tool(t) for t in request.tools]
        options = self._sampling_options(request.parameters)
        if options:
            body["options"] = options
        if request.response_schema is not None:
            # Ollama constrains decoding to a schema given as `format` itself; the
            # request's schema is more specific than the block's options.format.
            body["format"] = dict(request.response_schema)
        elif self.format is not None:
            body["format"] = self.format
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        if self.think is not None:
            body["think"] = self.think
        return body

    def _sampling_options(self, overrides: dict[str, Any]) -> dict[str, Any]:
        options: dict[str, Any] = {}
        # Defaults first, then the request's: a request's `max_tokens` beats a default
        # `num_predict` because both land on the same Ollama key.
        for source in (self.parameters, overrides):
            for key, value in source.items():
                target = SAMPLING_PARAMETERS.get(key)
                if target is None:
                    # Ollama silently ignores options it does not know; we refuse, so a
                    # typo like `temprature` cannot go unnoticed.
                    raise self._error(
                        f"unknown sampling parameter {key!r} for Ollama",
                        hint="valid parameters: " + ", ".join(SAMPLING_PARAMETERS),
                        caller_fault=True,
                    )
                options[target] = value
        return options

    # -- response side -----------------------------------------------------------------

    def _tool_call(self, index: int, wire: Any) -> ToolCall:
        function = wire.get("function") if isinstance(wire, dict) else None
        if not isinstance(function, dict) or not function.get("name"):
            raise self._bad_response(f"tool call #{index} has no function name: {wire!r}")
        # Ollama gives no ids (newer versions may); the engine needs one to pair results.
        call_id = str(wire.get("id") or f"call_{index}")
        return ToolCall.parse(call_id, str(function["name"]), function.get("arguments"))

    def _decode_line(self, line: str) -> dict[str, Any]:
        try:
            part = json.loads(line)
        except ValueError:
            raise self._bad_response(f"undecodable stream line {line[:200]!r}") from None
        if not isinstance(part, dict):
            raise self._bad_response(f"stream line is not an object: {line[:200]!r}")
        if part.get("error"):
            raise self._stream_error(part["error"])
        return part

    # -- errors ------------------------------------------------------------------------

    def _error(
        self,
        what: str,
        *,
        hint: str | None = None,
        status: int | None = None,
        retry: bool = False,
        **details: Any,
    ) -> ProviderError:
        return ProviderError(
            f"{self.name}: {what}",
            hint=hint,
            provider=self.name,
            status=status,
            retryable=retry,
            **details,
        )

    def _stream_error(self, error: Any) -> ProviderError:
        # Ollama reports failures after the 200 (a crashed runner, out of memory) as an
        # `{"error": ...}` line: the backend's trouble, so another try may succeed.
        return self._error(f"Ollama failed mid-answer: {error}", retry=True)

    def _bad_response(self, what: str) -> ProviderError:
        return self._error(
            f"malformed response from {self.endpoint}: {what}",
            hint=f"check that {self.endpoint} is an Ollama server",
        )

    def _transport_error(self, exc: httpx.TransportError, url: str) -> ProviderError:
        return self._error(
            transport_message(exc, url, self.timeout_s),
            hint=f"start Ollama (`ollama serve`) at {self.endpoint} and pull the model "
            f"(`ollama pull {self.model}`)",
            retry=True,
            connection_lost=connection_lost(exc),
        )

    def _status_error(self, status: int, content: bytes, url: str) -> ProviderError:
        detail = backend_message(content, _error_text)
        hint: str | None = None
        if status == 404 and "not found" in detail and "model" in detail:
            hint = f"pull the model: `ollama pull {self.model}`"
        elif status == 404:
            hint = f"check that {self.endpoint} is an Ollama server"
        elif status in (401, 403):
            hint = auth_hint(self.api_key_env, credential="token", article="a")
        return self._error(
            status_message(status, url, detail),
            hint=hint,
            status=status,
            retry=retryable_status(status),
        )


def _check_options(name: str, opts: dict[str, Any]) -> None:
    alive, fmt = opts.get("keep_alive"), opts.get("format")
    if isinstance(alive, bool) or not isinstance(alive, (str, int, float, type(None))):
        raise ConfigError(
            f"{name}: options.keep_alive must be a duration or seconds, not {alive!r}",
            hint="e.g. keep_alive: 5m, or keep_alive: -1 to keep the model loaded",
        )
    if not (fmt is None or fmt == "json" or isinstance(fmt, dict)):
        raise ConfigError(f"{name}: options.format must be 'json' or a JSON schema, not {fmt!r}")
    think = opts.get("think")
    if not (think is None or isinstance(think, bool) or think in ("low", "medium", "high")):
        raise ConfigError(
            f"{name}: options.think must be true, false, 'low', 'medium' or 'high', not {think!r}"
        )
    if not isinstance(opts.get("headers") or {}, dict):
        raise ConfigError(f"{name}: options.headers must map header names to values")


def _args_delta(index: int, wire: Any) -> ToolArgsDelta:
    # The first (and only) fragment of a call: with the id and name the last chunk's
    # whole call will have.
    function = wire.get("function") if isinstance(wire, dict) else None
    function = function if isinstance(function, dict) else {}
    arguments = function.get("arguments")
    return ToolArgsDelta(
        index=index,
        arguments=arguments if isinstance(arguments, str) else json.dumps(arguments or {}),
        id=str(wire.get("id") or f"call_{index}") if isinstance(wire, dict) else f"call_{index}",
        name=str(function.get("name") or ""),
    )


def _usage(final: dict[str, Any]) -> Usage:
    # Ollama omits prompt_eval_count when the whole prompt was cached; still one call.
    return Usage(
        input_tokens=int(final.get("prompt_eval_count") or 0),
        output_tokens=int(final.get("eval_count") or 0),
        calls=1,
    )


def _finish(done_reason: Any, calls: list[ToolCall]) -> str:
    # Ollama says "stop" even when it stops to call tools; the engine wants to know.
    if calls:
        return "tool_calls"
    return str(done_reason or "stop")


def _with_tag(model: str) -> str:
    # The tag follows the last ':' after the last '/' (a registry host may have a port).
    return model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"


def _normalize_endpoint(endpoint: str) -> str:
    # Users often paste the OpenAI-style URL (…/v1); the native API lives at the root.
    endpoint = endpoint.rstrip("/")
    return endpoint.removesuffix("/v1").rstrip("/")


def _error_text(data: dict[str, Any]) -> str | None:
    error = data.get("error")
    return error if isinstance(error, str) else None  # Ollama's shape: {"error": "..."}


def _wire_messages(messages: list[Message]) -> list[dict[str, Any]]:
    # Ollama pairs a tool result with its call by tool name, not id: recover the name
    # from the assistant turn when a tool message lacks it.
    names: dict[str, str] = {}
    wire: list[dict[str, Any]] = []
    for message in messages:
        item: dict[str, Any] = {"role": message.role, "content": message.content or ""}
        if message.role == "assistant" and message.tool_calls:
            item["tool_calls"] = [
                {"function": {"name": c.name, "arguments": c.arguments}} for c in message.tool_calls
            ]
            names.update((c.id, c.name) for c in message.tool_calls)
        elif message.role == "tool":
            tool_name = message.name or names.get(message.tool_call_id or "")
            if tool_name:
                item["tool_name"] = tool_name
        wire.append(item)
    return wire
