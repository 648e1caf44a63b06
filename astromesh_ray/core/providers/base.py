"""The ``Provider`` protocol and the registry that maps YAML provider names to classes."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from astromesh_ray.core.messages import Completion, CompletionChunk, CompletionRequest
from astromesh_ray.core.providers.http import DEFAULT_MAX_CONNECTIONS
from astromesh_ray.core.streams import closing_stream
from astromesh_ray.errors import ConfigError

__all__ = ["Provider", "closing_stream", "local_provider", "provider_class"]

if TYPE_CHECKING:
    from astromesh_ray.spec import ModelEndpoint


@runtime_checkable
class Provider(Protocol):
    """A chat model behind some API.  Implementations: ``<Backend>Provider``.

    ``complete`` returns one whole answer (text and/or native tool calls, with usage);
    ``stream`` yields text deltas and whole tool calls, usage on the last chunk.
    Failures raise ``ProviderError`` with ``provider``, ``status`` and ``retryable``.
    A provider whose backend has native constrained decoding honours
    ``request.response_schema`` (and says so with ``native_structured_output = True``);
    the others ignore it, and the engine validates the answer and asks again.
    """

    name: str

    async def complete(self, request: CompletionRequest) -> Completion: ...

    def stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]: ...

    async def health(self) -> bool: ...

    async def aclose(self) -> None: ...


# YAML name -> "module:Class", imported lazily so a backend's dependencies load only when used.
_REGISTRY: dict[str, str] = {
    "openai": "astromesh_ray.core.providers.openai:OpenAIProvider",
    "openai_compat": "astromesh_ray.core.providers.openai:OpenAIProvider",
    "ollama": "astromesh_ray.core.providers.ollama:OllamaProvider",
    "vllm": "astromesh_ray.core.providers.openai:OpenAIProvider",
    "llamacpp": "astromesh_ray.core.providers.openai:OpenAIProvider",
    "hf_tgi": "astromesh_ray.core.providers.tgi:TGIProvider",
    "onnx": "astromesh_ray.core.providers.onnx:OnnxProvider",
}


def provider_class(kind: str) -> type[Any]:
    """The class implementing provider ``kind``; a miss lists the valid names."""
    try:
        target = _REGISTRY[kind]
    except KeyError:
        raise ConfigError(
            f"unknown provider {kind!r}",
            hint="valid providers: " + ", ".join(sorted(_REGISTRY)),
        ) from None
    module, _, attr = target.partition(":")
    cls: type[Any] = getattr(importlib.import_module(module), attr)
    return cls


def local_provider(endpoint: ModelEndpoint, *, max_connections: int | None = None) -> Provider:
    """A provider client for ``endpoint`` living in this process (``astromesh run``,
    unit tests, and the body of each provider deployment).

    Its connection pool holds ``max_connections``: by default as many requests as the
    endpoint's deployment takes at once (``deployment.max_ongoing_requests``), else
    the provider deployment's own default, ``DEFAULT_MAX_CONNECTIONS``.
    """
    if max_connections is None:
        limit = endpoint.deployment.max_ongoing_requests if endpoint.deployment else None
        max_connections = limit or DEFAULT_MAX_CONNECTIONS
    cls = provider_class(endpoint.provider)
    provider: Provider = cls(
        name=f"{endpoint.provider}:{endpoint.model}",
        kind=endpoint.provider,
        model=endpoint.model,
        endpoint=endpoint.endpoint,
        api_key_env=endpoint.api_key_env,
        parameters=dict(endpoint.parameters),
        timeout_s=endpoint.timeout_s or 60.0,
        options=dict(endpoint.options),
        max_connections=max_connections,
    )
    return provider
