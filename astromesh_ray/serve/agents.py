"""Each agent YAML as its own Serve application: ``AgentDeployment`` wires a core
``AgentRuntime`` to provider deployments by handle."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import PurePath
from typing import Any

from ray import serve

from astromesh_ray.core.build import build_runtime
from astromesh_ray.core.runtime import RunRequest
from astromesh_ray.serve.breaker import ServeBreakerStore
from astromesh_ray.serve.location import replica_location
from astromesh_ray.serve.outcome import failure, ok
from astromesh_ray.serve.providers import ServeProvider
from astromesh_ray.spec import AgentSpec, ProviderEntrySpec, ProviderRoutingSpec


def agent_app_name(agent: str) -> str:
    """The Serve application of agent ``agent``."""
    return f"agent-{agent}"


def describe_agent(agent: AgentSpec) -> dict[str, Any]:
    """What ``GET /v1/agents/{name}`` shows about an agent."""
    body = agent.spec
    identity = body.identity
    allowed = body.permissions.allowed_actions if body.permissions else None
    return {
        "name": agent.name,
        "version": agent.metadata.version,
        "namespace": agent.metadata.namespace,
        "labels": dict(agent.metadata.labels),
        "display_name": identity.display_name if identity else None,
        "description": identity.description if identity else None,
        "pattern": body.orchestration.pattern,
        "max_iterations": body.orchestration.max_iterations,
        "timeout_seconds": body.orchestration.timeout_s,
        # Only the tools the agent can call (the model is never offered the others).
        "tools": [t.name for t in body.tools if allowed is None or t.name in allowed],
        # The file name only: the server's directory layout is not the client's business.
        "source": PurePath(agent.source).name if agent.source else None,
    }


@serve.deployment(name="agent", max_ongoing_requests=100, ray_actor_options={"num_cpus": 0})
class AgentDeployment:
    """Runs turns of one agent; its model calls go to provider deployments."""

    def __init__(
        self,
        agent: AgentSpec,
        providers: Mapping[str, ProviderEntrySpec],
        routing: ProviderRoutingSpec | None = None,
    ) -> None:
        self._runtime = build_runtime(
            agent,
            providers,
            make_provider=ServeProvider,
            where=replica_location(),
            routing=routing,
            breakers=ServeBreakerStore(),
        )
        # Health probes start now if the replica's loop runs, else on the first call.
        start = getattr(self._runtime.provider, "start_health_checks", None)
        if start is not None:
            start()

    async def run(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            result = await self._runtime.run(RunRequest(**request))
        except Exception as exc:
            return failure(exc)
        return ok(result.to_dict())

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            async for event in self._runtime.stream(RunRequest(**request)):
                yield ok(event.to_dict())
        except Exception as exc:
            yield failure(exc)
