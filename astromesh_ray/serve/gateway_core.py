"""``GatewayCore``: what every route of the gateway builds on.

``RouteCore`` (``route_core.py``: the agents, the request's key, ``call`` and
``open_run``, telemetry) with agents reached by Serve handle (``HandleLink``), plus
what only the gateway has: the providers (``GET /v1/providers``), RAG pipelines,
channels' settings and the listing of the agents a key covers.  The protocols
(``gateway.py``, ``protocols/``) and the agent routes (``agent_routes.py``, which the
gateway answers for unknown agents, or an agent whose application is gone) inherit
it through ``Gateway``.
"""

# No `from __future__ import annotations` here: the route classes that inherit this
# one declare FastAPI routes, which must see real annotation objects.
import asyncio
from typing import Any

from astromesh_ray.core.providers.base import local_provider
from astromesh_ray.errors import ProviderError
from astromesh_ray.serve.agent_link import CALL_FAILURES, HandleLink
from astromesh_ray.serve.auth import current_key
from astromesh_ray.serve.breaker import ActorBreakerStore
from astromesh_ray.serve.handles import AppHandle
from astromesh_ray.serve.rag import GatewayRag
from astromesh_ray.serve.route_core import MEMORY_PATIENCE_S, RouteCore
from astromesh_ray.spec.auth import AuthSpec
from astromesh_ray.spec.config import TelemetrySpec
from astromesh_ray.spec.resolve import ModelEndpoint

__all__ = [
    "CALL_FAILURES",
    "MEMORY_PATIENCE_S",
    "GatewayCore",
    "describe_endpoint",
    "probe",
    "probe_endpoint",
]


async def probe(app: AppHandle) -> bool:
    try:
        healthy = await asyncio.wait_for((await app.get()).health.remote(), 5)
    except CALL_FAILURES:  # a probe: unreachable, missing or slow mean "not healthy"
        app.forget()
        return False
    return bool(healthy)


async def probe_endpoint(endpoint: ModelEndpoint) -> bool:
    """A remote API's health, asked with a one-connection client of this replica (an
    agent replica calls it with its own pool: there is no deployment to ask)."""
    client = local_provider(endpoint, max_connections=1)
    try:
        return bool(await asyncio.wait_for(client.health(), 5))
    except (ProviderError, TimeoutError):
        return False
    finally:
        await client.aclose()


def describe_endpoint(endpoint: ModelEndpoint) -> dict[str, Any]:
    """What ``GET /v1/providers`` says a provider serves, and where it runs."""
    return {
        "provider": endpoint.provider,
        "model": endpoint.model,
        "endpoint": endpoint.endpoint,
        "mode": "dedicated" if endpoint.dedicated else "in_replica",
    }


class GatewayCore(RouteCore):
    """Knows each agent's description and the Serve application that runs it."""

    def __init__(
        self,
        agents: dict[str, dict[str, Any]],
        apps: dict[str, str],
        providers: dict[str, ModelEndpoint],
        rag: dict[str, Any] | None = None,
        memory: Any = None,
        channels: dict[str, Any] | None = None,
        telemetry: TelemetrySpec | None = None,
        auth: AuthSpec | None = None,
    ) -> None:
        self._handle_link = HandleLink(apps)
        super().__init__(agents, apps, self._handle_link, telemetry=telemetry, auth=auth)
        # RAG pipelines (RAGPipelineSpec by name) with the memory defaults their
        # stores use: ingested and searched in this replica (serve/rag.py).
        self._rag = GatewayRag(rag or {}, memory)
        self._providers = providers
        self._provider_apps = {n: AppHandle(n) for n, ep in providers.items() if ep.dedicated}
        # Snapshots only: read straight from the breaker actor (no cached copy).
        self._breakers = ActorBreakerStore()
        # Channel adapters' settings (protocols/channels): by channel name.
        self._channels = dict(channels or {})

    async def _provider_healthy(self, name: str) -> bool:
        app = self._provider_apps.get(name)
        return await (probe(app) if app is not None else probe_endpoint(self._providers[name]))

    async def __del__(self) -> None:
        # Serve calls this on shutdown: the RAG pipelines' pools and embedders.
        rag = getattr(self, "_rag", None)
        if rag is not None:
            await rag.aclose()
        await self._close_telemetry()

    def _visible_agents(self) -> list[str]:
        """The names of the agents the request's key covers, sorted."""
        key = current_key()
        return [n for n in sorted(self._agents) if key.sees(n, self._agents[n].get("namespace"))]
