"""``OllamaEmbedder``: embeddings from Ollama's native ``/api/embed`` API.

The wire format: ``POST {endpoint}/api/embed`` with ``{model, input: [texts]}``,
answered by ``{model, embeddings: [[...], ...], ...}`` in input order (Ollama
normalises them; we do again, as every embedder does).  A model that is not pulled
answers 404 with ``{"error": ...}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from astromesh_ray.core.memory.embedders.base import check_batch_size, embed_batched
from astromesh_ray.core.memory.embedders.http import post_json
from astromesh_ray.core.providers.http import ClientPool
from astromesh_ray.core.providers.openai_wire import error_text
from astromesh_ray.errors import ConfigError, MemoryUnavailable

__all__ = ["OllamaEmbedder"]


class OllamaEmbedder:
    """Embeddings from an Ollama server; ``batch_size`` texts per request."""

    def __init__(
        self,
        model: str,
        *,
        endpoint: str = "http://127.0.0.1:11434",
        batch_size: int = 64,
        timeout_s: float = 30.0,
    ) -> None:
        if not model:
            raise ConfigError("OllamaEmbedder needs a model name")
        self.model = model
        # Users often give the /v1 URL of its OpenAI API: the native API is at the root.
        self.endpoint = endpoint.rstrip("/").removesuffix("/v1")
        self.batch_size = check_batch_size("OllamaEmbedder", batch_size)
        self.timeout_s = timeout_s
        self.name = f"ollama:{model}"
        self._pool = ClientPool()  # pickles without its live client

    def __repr__(self) -> str:
        return f"OllamaEmbedder(model={self.model!r}, endpoint={self.endpoint!r})"

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit vector per text, in order."""
        return await embed_batched(texts, self.batch_size, self._embed_batch, backend=self.name)

    async def aclose(self) -> None:
        """Close the pooled HTTP client (a later call opens a new one)."""
        await self._pool.aclose()

    async def _embed_batch(self, batch: list[str]) -> list[list[float]]:
        body: dict[str, Any] = {"model": self.model, "input": batch}
        data = await post_json(
            self._pool,
            f"{self.endpoint}/api/embed",
            body,
            headers={},
            timeout_s=self.timeout_s,
            backend=self.name,
            reach_hint=f"start Ollama (`ollama serve`) at {self.endpoint} and pull the model "
            f"(`ollama pull {self.model}`)",
            error_text=error_text,
            status_hints={404: f"pull the model (`ollama pull {self.model}`)"},
        )
        try:
            vectors = [[float(x) for x in vector] for vector in data["embeddings"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise MemoryUnavailable(
                f"{self.name}: not an /api/embed response: {str(data)[:200]!r}",
                hint=f"check that {self.endpoint} is an Ollama server",
                backend=self.name,
                retryable=False,
            ) from exc
        return vectors
