"""``OpenAIEmbedder``: any OpenAI-compatible ``/embeddings`` endpoint.

The wire format: ``POST {endpoint}/embeddings`` with ``{model, input: [texts],
encoding_format: "float"}`` (and ``dimensions`` when set), answered by ``{data:
[{index, embedding}], ...}``; vectors are put back in input order by ``index``.
OpenAI itself, vLLM, llama.cpp, TEI, Ollama's ``/v1`` and LiteLLM speak it.

The API key follows ``OpenAIProvider``'s rule: ``OPENAI_API_KEY`` is only ever sent
to api.openai.com itself; any other endpoint gets a key only when ``api_key_env``
names the variable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

from astromesh_ray.core.memory.embedders.base import check_batch_size, embed_batched
from astromesh_ray.core.memory.embedders.http import post_json
from astromesh_ray.core.providers.http import ClientPool, api_key
from astromesh_ray.core.providers.openai_wire import error_text
from astromesh_ray.errors import ConfigError, MemoryUnavailable

__all__ = ["OpenAIEmbedder"]

_OPENAI_HOST = "api.openai.com"


class OpenAIEmbedder:
    """Embeddings from an OpenAI-compatible API; ``batch_size`` texts per request.

    ``dimensions`` asks models that can shorten their vectors (text-embedding-3-*)
    for that many.  The key in ``api_key_env`` is read at call time, so rotating it
    needs no restart.
    """

    def __init__(
        self,
        model: str,
        *,
        endpoint: str = "https://api.openai.com/v1",
        api_key_env: str | None = None,
        batch_size: int = 64,
        timeout_s: float = 30.0,
        dimensions: int | None = None,
    ) -> None:
        if not model:
            raise ConfigError("OpenAIEmbedder needs a model name")
        if dimensions is not None and dimensions < 1:
            raise ConfigError(f"OpenAIEmbedder: dimensions must be positive, not {dimensions}")
        self.model = model
        self.endpoint = endpoint.rstrip("/")
        is_openai = urlparse(self.endpoint).hostname == _OPENAI_HOST
        self.api_key_env = api_key_env or ("OPENAI_API_KEY" if is_openai else None)
        self._key_required = is_openai
        self.batch_size = check_batch_size("OpenAIEmbedder", batch_size)
        self.timeout_s = timeout_s
        self.dimensions = dimensions
        self.name = f"openai:{model}"
        self._pool = ClientPool()  # pickles without its live client

    def __repr__(self) -> str:
        return f"OpenAIEmbedder(model={self.model!r}, endpoint={self.endpoint!r})"

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit vector per text, in order."""
        return await embed_batched(texts, self.batch_size, self._embed_batch, backend=self.name)

    async def aclose(self) -> None:
        """Close the pooled HTTP client (a later call opens a new one)."""
        await self._pool.aclose()

    def _headers(self) -> dict[str, str]:
        key = api_key(self.api_key_env)
        if key:
            return {"Authorization": f"Bearer {key}"}
        if self._key_required:
            var = self.api_key_env or "OPENAI_API_KEY"
            raise MemoryUnavailable(
                f"{self.name}: no API key for {self.endpoint}: ${var} is not set",
                hint=f"set {var}",
                backend=self.name,
                retryable=False,
            )
        return {}

    async def _embed_batch(self, batch: list[str]) -> list[list[float]]:
        body: dict[str, Any] = {"model": self.model, "input": batch, "encoding_format": "float"}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        data = await post_json(
            self._pool,
            f"{self.endpoint}/embeddings",
            body,
            headers=self._headers(),
            timeout_s=self.timeout_s,
            backend=self.name,
            reach_hint=f"check network access to {self.endpoint}",
            error_text=error_text,
            api_key_env=self.api_key_env,
        )
        try:
            entries = sorted(data["data"], key=lambda entry: int(entry["index"]))
            vectors = [[float(x) for x in entry["embedding"]] for entry in entries]
        except (KeyError, TypeError, ValueError) as exc:
            raise MemoryUnavailable(
                f"{self.name}: not an embeddings response: {str(data)[:200]!r}",
                hint=f"check that {self.endpoint} is an OpenAI-compatible API",
                backend=self.name,
                retryable=False,
            ) from exc
        return vectors
