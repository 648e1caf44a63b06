"""``OpenAIProvider``: any OpenAI-compatible ``/v1/chat/completions`` endpoint.

One class serves the YAML providers ``openai``, ``openai_compat``, ``ollama`` (its
``/v1`` API), ``vllm`` and ``llamacpp``: they speak the same wire format and differ
only in default endpoint, whether an API key is needed, and how a response schema is
asked for (llama.cpp's ``json_object`` with a schema, OpenAI's ``json_schema`` for
the others: ``structured.py``).  Talks plain ``httpx``
(no vendor SDK) through one pooled client per event loop; the wire format itself
(body, answers, stream deltas, error bodies) is ``openai_wire``, shared with the
in-cluster vLLM adapter.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any, ClassVar
from urllib.parse import urlparse

import httpx

from astromesh_ray.core.messages import (
    Completion,
    CompletionChunk,
    CompletionRequest,
    ToolCall,
    Usage,
)
from astromesh_ray.core.providers.http import (
    DEFAULT_MAX_CONNECTIONS,
    ClientPool,
    api_key,
    auth_hint,
    backend_message,
    check_options,
    connection_lost,
    header_option,
    retryable_status,
    sse_data,
    status_message,
    transport_message,
)
from astromesh_ray.core.providers.openai_wire import OpenAIChatWire, error_text
from astromesh_ray.core.providers.retry import parse_retry_after
from astromesh_ray.core.providers.structured import (
    ResponseFormat,
    llamacpp_response_format,
    openai_response_format,
)
from astromesh_ray.errors import ConfigError, ProviderError

__all__ = ["DEFAULT_ENDPOINTS", "OpenAIProvider"]

_log = logging.getLogger("astromesh.providers")

DEFAULT_ENDPOINTS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "openai_compat": "https://api.openai.com/v1",
    "ollama": "http://localhost:11434/v1",
    "llamacpp": "http://localhost:8080/v1",
}
_KINDS = (*DEFAULT_ENDPOINTS, "vllm")
# How each kind takes a response schema (structured.py); the others take OpenAI's.
# vLLM is not among them: it takes OpenAI's json_schema response_format.
_RESPONSE_FORMATS: dict[str, ResponseFormat] = {"llamacpp": llamacpp_response_format}
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
    so rotating it needs no restart.  ``max_connections`` sizes the connection pool
    (all kept alive).  A request's ``response_schema`` goes out as the kind's own
    ``response_format`` (``structured.py``), or as ``response_format`` says (a
    server speaking this wire with its own shape, e.g. TGI's Messages API).
    """

    # Constrained decoding to request.response_schema, done by the backend.
    native_structured_output: ClassVar[bool] = True

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
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        response_format: ResponseFormat | None = None,
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
        self.max_connections = max_connections
        self._pool = ClientPool(max_connections)  # pickles without its live client
        self._wire = OpenAIChatWire(
            name=name,
            model=model,
            source=self.endpoint,
            hint=f"check that {self.endpoint} is an OpenAI-compatible API",
            response_format=response_format or _RESPONSE_FORMATS.get(kind, openai_response_format),
        )

    def __repr__(self) -> str:
        return f"OpenAIProvider(name={self.name!r}, kind={self.kind!r}, endpoint={self.endpoint!r})"

    # -- Provider protocol -------------------------------------------------------------

    async def complete(self, request: CompletionRequest) -> Completion:
        """Send one chat-completion request and return the whole answer."""
        body = self._wire.body(request, stream=False, defaults=self.parameters)
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
        except ValueError:
            raise self._wire.malformed(f"not JSON: {response.text[:200]!r}") from None
        return self._wire.completion(data, request)

    async def stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        """Stream text, reasoning and tool-argument deltas; whole tool calls, usage and
        finish reason come in the last chunk."""
        body = self._wire.body(request, stream=True, defaults=self.parameters)
        url = f"{self.endpoint}/chat/completions"
        decoder = self._wire.decoder(request)
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
                    chunk = decoder.decode(payload)
                    if chunk is not None:
                        yield chunk
        except httpx.TransportError as exc:
            raise self._transport_error(exc, url) from exc
        usage = None
        if not decoder.usage_reported and self.kind == "llamacpp":
            # llama-cpp-python ignores stream_options.include_usage: count with the
            # server's own tokenizer instead (the decoder estimates if that fails).
            usage = await self._count_with_server(request, decoder.text, decoder.tool_calls())
        yield decoder.finish(usage)

    async def _count_with_server(
        self, request: CompletionRequest, answer: str, calls: list[ToolCall]
    ) -> Usage | None:
        """Token counts from llama-cpp-python's ``/extras/tokenize/count``: the prompt
        side counts the messages' text (not the chat template's markup).  None, with
        a warning, when the server cannot count: the caller estimates instead."""
        root = self.endpoint.removesuffix("/v1")
        prompt = "\n".join(m.content or "" for m in request.messages)
        generated = answer + "".join(f"{c.name}{json.dumps(c.arguments)}" for c in calls)
        counts: list[int] = []
        for piece in (prompt, generated):
            try:
                response = await self._http().post(
                    f"{root}/extras/tokenize/count", json={"input": piece}
                )
                response.raise_for_status()
                counts.append(int(response.json()["count"]))
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                # Counting is best effort (the answer itself is fine), but a count of 0
                # would make the call free: estimate it rather.
                _log.warning(
                    "%s: cannot count tokens with %s/extras/tokenize/count (%s: %s); "
                    "estimating usage at about 4 characters a token",
                    self.name,
                    root,
                    type(exc).__name__,
                    exc,
                )
                return None
        return Usage(input_tokens=counts[0], output_tokens=counts[1], calls=1)

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

    # -- errors ------------------------------------------------------------------------

    def _transport_error(self, exc: httpx.TransportError, url: str) -> ProviderError:
        return ProviderError(
            f"{self.name}: {transport_message(exc, url, self.timeout_s)}",
            hint=self._reach_hint(),
            provider=self.name,
            status=None,
            retryable=True,
            connection_lost=connection_lost(exc),
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
        detail = backend_message(content, error_text)
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


def _normalize_endpoint(kind: str, endpoint: str) -> str:
    endpoint = endpoint.rstrip("/")
    # Ollama users often give the native root (http://localhost:11434); its OpenAI API is /v1.
    if kind == "ollama" and not endpoint.endswith("/v1"):
        endpoint += "/v1"
    return endpoint
