"""Embedders in their own Serve deployment (``semantic.embedding.deployment``).

One application per distinct embedder (``embedder-<hash>``), with the YAML's
replicas, autoscaling and resources: every replica of every agent using that
embedder calls it by handle, so one model copy serves them all, and concurrent
calls from any replica are batched together (``serve.batch``: up to the YAML's
``batch_size`` texts' worth of calls, waiting at most ``BATCH_WAIT_S`` for more).
``ServeEmbedder`` is the ``Embedder`` the agent replica holds instead of a model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from ray import serve

from astromesh_ray.core.memory.base import Embedder
from astromesh_ray.core.memory.factory import build_embedder, embedder_identity, embedder_kwargs
from astromesh_ray.errors import MemoryUnavailable
from astromesh_ray.serve.handles import RAY_FAILURES, AppHandle, describe
from astromesh_ray.serve.handles import failure as ray_failure
from astromesh_ray.serve.location import replica_location
from astromesh_ray.serve.outcome import failure, ok, unwrap
from astromesh_ray.serve.router_config import SHORT_BACKOFF
from astromesh_ray.spec.memory import EmbeddingSpec

BATCH_WAIT_S = 0.01
"""How long a call waits for others to share its batch."""

APP_PREFIX = "embedder-"


def embedder_app_name(spec: EmbeddingSpec) -> str:
    """The Serve application of the embedder ``spec`` describes (agents declaring
    the same embedder and deployment share it)."""
    kind, _ = embedder_kwargs(spec)
    digest = hashlib.sha256(embedder_identity(spec).encode()).hexdigest()[:8]
    return f"{APP_PREFIX}{kind}-{digest}"


@serve.deployment(
    name="embedder",
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 0},
    request_router_config=SHORT_BACKOFF,  # callers retry a full replica every 25 ms
)
class EmbedderDeployment:
    """Owns one embedder (a model in memory, or an HTTP client) and batches calls."""

    def __init__(self, kind: str, kwargs: dict[str, Any], batch_size: int) -> None:
        self._embedder: Embedder = build_embedder(kind, kwargs)
        # serve.batch gives the method this setter; its stubs do not say so.
        self._batched.set_max_batch_size(batch_size)  # type: ignore[attr-defined]
        self._where = replica_location()
        self._batches: list[int] = []  # calls per batch, for stats()

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _batched(self, calls: list[list[str]]) -> list[list[list[float]]]:
        self._batches.append(len(calls))
        vectors = await self._embedder.embed([text for call in calls for text in call])
        out, start = [], 0
        for call in calls:
            out.append(vectors[start : start + len(call)])
            start += len(call)
        return out

    async def embed(self, texts: list[str]) -> dict[str, Any]:
        # The edge of the replica: errors leave as values (MemoryUnavailable stays one).
        try:
            return ok(await self._batched(list(texts)))
        except Exception as exc:
            return failure(exc)

    async def stats(self) -> dict[str, Any]:
        """How calls were batched (calls per batch, latest last) and where this runs."""
        return {"batches": list(self._batches[-1000:]), "where": dict(self._where)}

    async def __del__(self) -> None:
        await self._embedder.aclose()


class ServeEmbedder:
    """An ``Embedder`` over an ``EmbedderDeployment``'s handle."""

    def __init__(self, app: str) -> None:
        self.name = app
        self._app = AppHandle(app)

    def _unavailable(self, exc: BaseException) -> MemoryUnavailable:
        self._app.forget()
        return MemoryUnavailable(
            f"embedder application {self.name!r} cannot be reached: {describe(exc)}",
            hint="check `serve status`; redeploy the configuration",
            backend=self.name,
            retryable=True,
        )

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        try:
            outcome = await (await self._app.get()).embed.remote(list(texts))
        except RAY_FAILURES as exc:
            raise ray_failure(exc, self._unavailable) from None
        vectors: list[list[float]] = unwrap(outcome)
        return vectors

    async def aclose(self) -> None:
        pass  # the deployment owns the model
