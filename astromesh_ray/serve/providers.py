"""Providers as Ray Serve deployments, and the ``Provider`` the agent uses to call them.

One deployment per provider entry (deduplicated by ``ModelEndpoint.key``), with
``ray_actor_options`` and autoscaling from YAML.  ``ServeProvider`` implements the
core ``Provider`` protocol over a deployment handle, so the engine does not know the
model runs in another replica, maybe on another node.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any, cast

from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from astromesh_ray.core.providers.base import local_provider
from astromesh_ray.core.messages import Completion, CompletionChunk, CompletionRequest
from astromesh_ray.errors import AstromeshError, ProviderError
from astromesh_ray.serve.location import replica_location
from astromesh_ray.serve.outcome import failure, ok, unwrap
from astromesh_ray.spec import ModelEndpoint


def provider_app_name(endpoint: ModelEndpoint) -> str:
    """The Serve application that hosts ``endpoint``."""
    return endpoint.key


@serve.deployment(name="provider", max_ongoing_requests=100, ray_actor_options={"num_cpus": 0})
class ProviderDeployment:
    """Owns one provider client (an HTTP connection pool, or a model in memory)."""

    def __init__(self, endpoint: ModelEndpoint) -> None:
        # Sampling parameters travel with each request (agents sharing this
        # deployment may differ), so the client itself gets none.
        self._provider = local_provider(dataclasses.replace(endpoint, parameters={}))
        self._where = replica_location()

    async def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            completion = await self._provider.complete(CompletionRequest.from_dict(request))
        except Exception as exc:
            return failure(exc)
        completion.location.update(self._where)
        return ok(completion.to_dict())

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        located = False
        try:
            async for chunk in self._provider.stream(CompletionRequest.from_dict(request)):
                if chunk.usage is not None or chunk.finish_reason is not None:
                    # The final chunk says where the model ran, for the trace.
                    chunk.location.update(self._where)
                    located = True
                yield ok(chunk.to_dict())
        except Exception as exc:
            yield failure(exc)
            return
        if not located:  # a backend that sent no final chunk: add one
            yield ok(CompletionChunk(location=dict(self._where)).to_dict())

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
        self._app = provider_app_name(endpoint)
        self._handle: DeploymentHandle[Any] | None = None

    def _get_handle(self) -> DeploymentHandle[Any]:
        if self._handle is None:
            try:
                self._handle = serve.get_app_handle(self._app)
            except Exception as exc:
                raise self._unavailable(exc) from None
        return self._handle

    def _unavailable(self, exc: Exception) -> ProviderError:
        """A Ray/Serve failure reaching the deployment, as the ``ProviderError`` the
        router falls back on and counts against the breaker."""
        # Look the application up again next time: it may have been redeployed.
        self._handle = None
        return ProviderError(
            f"{self.name}: provider deployment {self._app!r} unavailable: "
            f"{type(exc).__name__}: {exc}",
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
        handle = self._get_handle()
        try:
            outcome = await handle.complete.remote(self._request(request))
        except AstromeshError:
            raise
        except Exception as exc:  # DeploymentUnavailableError, RayActorError, ...
            raise self._unavailable(exc) from None
        return Completion.from_dict(unwrap(outcome))

    async def stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        handle = self._get_handle().options(stream=True)
        try:
            outcomes = cast(
                DeploymentResponseGenerator[Any], handle.stream.remote(self._request(request))
            ).__aiter__()
        except Exception as exc:
            raise self._unavailable(exc) from None
        while True:
            # Only the handle's own calls are guarded: what the consumer throws in at
            # `yield` is not a provider failure.
            try:
                outcome = await outcomes.__anext__()
            except StopAsyncIteration:
                return
            except AstromeshError:
                raise
            except Exception as exc:
                raise self._unavailable(exc) from None
            yield CompletionChunk.from_dict(unwrap(outcome))

    async def health(self) -> bool:
        try:
            return bool(await self._get_handle().health.remote())
        except (AstromeshError, Exception):
            return False

    async def aclose(self) -> None:
        self._handle = None
