"""How an agent replica reaches its models (``replica_provider``).

- A remote API (OpenAI, Ollama, TGI, an external vLLM or llama.cpp server) is called
  from the agent replica itself: one pooled client per endpoint and replica
  (``LocatedProvider``), no Serve hop between the agent and the API.
- A hosted model (ONNX, in-cluster vLLM), or a provider whose YAML says
  ``deployment: {mode: dedicated}``, has its own Serve deployment (one per endpoint,
  deduplicated by ``ModelEndpoint.key``, with ``ray_actor_options`` and autoscaling
  from YAML): ``ServeProvider`` implements the core ``Provider`` protocol over its
  handle, so the engine does not know the model runs in another replica, maybe on
  another node.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from ray import serve
from ray.serve.handle import DeploymentHandle

from astromesh_ray.core.messages import Completion, CompletionChunk, CompletionRequest
from astromesh_ray.core.providers.base import Provider, local_provider
from astromesh_ray.core.providers.http import DEFAULT_MAX_CONNECTIONS
from astromesh_ray.core.streams import closing_stream
from astromesh_ray.core.trace import Span, child_span
from astromesh_ray.errors import ProviderError
from astromesh_ray.serve.handles import RAY_FAILURES, AppHandle, describe, stream_outcomes
from astromesh_ray.serve.handles import failure as ray_failure
from astromesh_ray.serve.location import replica_location
from astromesh_ray.serve.outcome import failure, ok, unwrap
from astromesh_ray.serve.router_config import SHORT_BACKOFF
from astromesh_ray.spec import ModelEndpoint

_PROBE_FAILURES: tuple[type[BaseException], ...] = (ProviderError, *RAY_FAILURES)


def provider_app_name(endpoint: ModelEndpoint) -> str:
    """The Serve application that hosts ``endpoint``."""
    return endpoint.key


# What a replica holds decides how many requests it takes at once (Serve's own
# default, 5, would queue most of them in front of an idle client):
# - a remote API (OpenAI, Ollama, TGI, an external vLLM or llama.cpp server): as many
#   concurrent requests as the client pool has connections (local_provider sizes the
#   pool from the YAML's max_ongoing_requests, else this same default, 100); each one
#   is an await on a socket, so a replica holds a hundred for next to nothing;
# - a model in the replica (ONNX, `provider_app` sets it): HOSTED_MODEL_MAX_ONGOING_REQUESTS.
#   Generation runs in threads sharing the replica's CPUs or GPU, with no batching, so a
#   few at once keep the device busy; more would only slow every answer down, while
#   queued in Serve they are seen by the autoscaler and go to the next replica.
HOSTED_MODEL_MAX_ONGOING_REQUESTS = 8


_Answer = TypeVar("_Answer", Completion, CompletionChunk)


class LocatedProvider:
    """A provider client in this process whose answers say where they were made: the
    final completion or chunk carries this replica's location and a ``provider.*``
    span (child of the request's ``trace_parent``).  The body of a provider
    deployment, and what an agent replica calls a remote API with (``mode:
    in_replica``, the default for remote APIs)."""

    def __init__(self, provider: Provider, where: dict[str, str], *, mode: str) -> None:
        self.provider = provider
        self.name = provider.name
        self._where = where
        self._mode = mode

    async def complete(self, request: CompletionRequest) -> Completion:
        span = child_span(request.trace_parent, "provider.complete", self._where)
        return self._locate(await self.provider.complete(request), span)

    async def stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        span = child_span(request.trace_parent, "provider.stream", self._where)
        located = False
        chunks = self.provider.stream(request)
        async with closing_stream(chunks):
            async for chunk in chunks:
                if chunk.is_last:
                    self._locate(chunk, span)
                    located = True
                yield chunk
        if not located:  # a backend that sent no final chunk: add one
            yield self._locate(CompletionChunk(), span)

    def _locate(self, answer: _Answer, span: Span | None) -> _Answer:
        """The whole completion, or a stream's final chunk: where it was made, and
        this call's span."""
        answer.location.update(self._where)
        if span is not None:
            span.set(provider=self.name, mode=self._mode)
            span.end()
            answer.spans.append(span.to_dict())
        return answer

    async def health(self) -> bool:
        return await self.provider.health()

    async def aclose(self) -> None:
        await self.provider.aclose()


def replica_provider(endpoint: ModelEndpoint) -> Provider:
    """What an agent replica calls ``endpoint`` through: the dedicated provider
    deployment (``ServeProvider``) of a hosted model or of ``mode: dedicated``; else
    a pooled client of the remote API in this replica (one per endpoint and replica;
    the cluster-wide breaker and the agent's limits wrap it as they wrap the other)."""
    if endpoint.dedicated:
        return ServeProvider(endpoint)
    return LocatedProvider(local_provider(endpoint), replica_location(), mode="in_replica")


@serve.deployment(
    name="provider",
    max_ongoing_requests=DEFAULT_MAX_CONNECTIONS,
    ray_actor_options={"num_cpus": 0},
    request_router_config=SHORT_BACKOFF,  # callers retry a full replica every 25 ms
)
class ProviderDeployment:
    """Owns one provider client (an HTTP connection pool, or a model in memory)."""

    def __init__(self, endpoint: ModelEndpoint) -> None:
        # Sampling parameters travel with each request (agents sharing this
        # deployment may differ), so the client itself gets none.  Its pool holds as
        # many connections as this replica takes requests at once: the YAML's
        # max_ongoing_requests (which the builders give this deployment), else
        # DEFAULT_MAX_CONNECTIONS, the decorator's own.
        client = local_provider(dataclasses.replace(endpoint, parameters={}))
        self._provider = LocatedProvider(client, replica_location(), mode="dedicated")

    # The edge of the replica: every error leaves as a value (``failure`` reports an
    # unexpected one as a RunError and logs it), so the caller can tell a provider
    # failing from this replica dying.

    async def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            completion = await self._provider.complete(CompletionRequest.from_dict(request))
        except Exception as exc:
            return failure(exc)
        return ok(completion.to_dict())

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            async for chunk in self._provider.stream(CompletionRequest.from_dict(request)):
                yield ok(chunk.to_dict())
        except Exception as exc:
            yield failure(exc)

    async def health(self) -> bool:
        return await self._provider.health()

    async def __del__(self) -> None:
        await self._provider.aclose()


class ServeProvider:
    """``Provider`` over a provider deployment, looked up by application name on
    first use (``serve deploy`` starts applications in any order)."""

    def __init__(self, endpoint: ModelEndpoint) -> None:
        self.endpoint = endpoint
        self.name = f"{endpoint.provider}:{endpoint.model}"
        self._app = AppHandle(provider_app_name(endpoint))

    async def _get_handle(self) -> DeploymentHandle[Any]:
        try:
            return await self._app.get()
        except RAY_FAILURES as exc:
            raise ray_failure(exc, self._unavailable) from None

    def _unavailable(self, exc: BaseException) -> ProviderError:
        """A Ray/Serve failure reaching the deployment, as the ``ProviderError`` the
        router falls back on and counts against the breaker."""
        self._app.forget()  # it may have been redeployed
        return ProviderError(
            f"{self.name}: provider deployment {self._app.app!r} unavailable: {describe(exc)}",
            hint="check `serve status`",
            provider=self.name,
            status=None,
            retryable=True,
        )

    def _request(self, request: CompletionRequest) -> dict[str, Any]:
        body = request.to_dict()
        body["parameters"] = {**self.endpoint.parameters, **request.parameters}
        return body

    async def complete(self, request: CompletionRequest) -> Completion:
        handle = await self._get_handle()
        try:
            outcome = await handle.complete.remote(self._request(request))
        except RAY_FAILURES as exc:  # DeploymentUnavailableError, RayActorError, ...
            raise ray_failure(exc, self._unavailable) from None
        return Completion.from_dict(unwrap(outcome))

    async def stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        handle = await self._get_handle()
        body = self._request(request)
        outcomes = stream_outcomes(handle, "stream", body, self._unavailable)
        async with closing_stream(outcomes):  # stopped early: the replica stops too
            async for outcome in outcomes:
                yield CompletionChunk.from_dict(unwrap(outcome))

    async def health(self) -> bool:
        try:
            return bool(await (await self._get_handle()).health.remote())
        except _PROBE_FAILURES:  # a probe: unreachable means unhealthy
            return False

    async def aclose(self) -> None:
        self._app.forget()
