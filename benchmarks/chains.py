"""The Serve side of ``throughput.py`` and ``scaling.py``: the full stack deployed as
``serve/builders.py`` plans it, and the floors it is compared with.

- ``DirectAgent``: ``AgentDeployment`` plus an HTTP ``__call__`` (the turn as the
  gateway's ``POST /v1/agents/{name}/run`` answers it), so that the agent's own
  application can be given a ``route_prefix``: proxy -> agent -> provider, the shape
  a ``route_prefix`` per agent would give, without the gateway hop.
- ``TinyIngress``: the least an HTTP deployment in front of the agent's application
  can do (read the query, call the agent's handle, return its result): proxy ->
  ingress -> agent -> provider, the gateway's hops without the gateway's work.
- The bare chain (``bare-ingress`` -> ``bare-agent`` -> ``bare-provider``): the same
  hops as the full stack, each forwarding, the last calling the model server over
  HTTP with a pooled ``httpx`` client as ours does.  It calls the same model server
  (rather than sleeping as long as its answers take) so that the floor holds the same
  model latency and the same HTTP call to the model: everything but our code.
- ``one-hop``: proxy -> one deployment calling the model server: the floor of any
  Serve deployment, the issue's "one-hop floor".

The scripts register this module with ``cloudpickle.register_pickle_by_value``, so
the replicas get these classes by value, as they get what a script defines.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, cast

import httpx
from ray import serve
from ray.serve import Application, Deployment
from serve_load import MODEL
from starlette.requests import Request

from astromesh_ray.core.build import check_buildable
from astromesh_ray.core.memory.factory import memory_defaults
from astromesh_ray.core.providers.http import DEFAULT_MAX_CONNECTIONS
from astromesh_ray.serve.agents import AgentDeployment, agent_app_name
from astromesh_ray.serve.breaker import agent_probes, ensure_breaker_actor
from astromesh_ray.serve.builders import BUILDERS, PlannedApp, named_providers, plan, serve_options
from astromesh_ray.serve.gateway import Gateway
from astromesh_ray.serve.handles import AppHandle
from astromesh_ray.serve.outcome import unwrap
from astromesh_ray.serve.providers import ProviderDeployment
from astromesh_ray.spec import LoadedConfig

SYSTEM = "You are a concise assistant. Answer in one short sentence."
DIRECT_ROUTE = "/direct"
TINY_ROUTE = "/ingress"
BARE_ROUTE = "/bare"
ONE_HOP_ROUTE = "/one-hop"


def limits() -> dict[str, int]:
    """Each real deployment's ``max_ongoing_requests`` (the decorators' own: the
    benchmarks' YAML sets none), which the floors copy hop for hop."""
    return {
        name: int(cast(Deployment, deployment).max_ongoing_requests)
        for name, deployment in (
            ("gateway", Gateway),
            ("agent", AgentDeployment),
            ("provider", ProviderDeployment),
        )
    }


# -- the agent's own route ---------------------------------------------------------------

if TYPE_CHECKING:
    AgentBody = AgentDeployment  # what mypy sees: the stubs type the decorated class as itself
else:
    # The class under Serve's Deployment: a subclass of it is deployed with the
    # decorator's options (AgentDeployment.options(func_or_class=...)).
    AgentBody = cast(Deployment, AgentDeployment).func_or_class


class DirectAgent(AgentBody):
    """``AgentDeployment`` answering HTTP too: a turn's result, as the gateway's
    ``/run`` returns it (an error as HTTP 500, which the load generator reports)."""

    async def __call__(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        result: dict[str, Any] = unwrap(await self.run({"query": body["query"]}))
        return result


def agent_application(
    loaded: LoadedConfig, agent_name: str, body: type | None = None, **overrides: Any
) -> Application:
    """What ``builders.agent_app`` builds for ``agent_name`` (the same checks, options
    and arguments), with ``body`` as the replica's class when given (``DirectAgent``)
    and ``overrides`` over the options (Serve ones the YAML has no field for)."""
    agent = loaded.agents[agent_name]
    check_buildable([agent], loaded.providers, known=loaded.agents, rag=loaded.rag_pipelines)
    ensure_breaker_actor(agent_probes(agent, loaded.providers, loaded.routing))
    options = {**serve_options(AgentDeployment, agent.spec.deployment), **overrides}
    if body is not None:
        options["func_or_class"] = body
    deployment = cast(Deployment, AgentDeployment).options(**options)
    return deployment.bind(
        agent,
        named_providers(agent, loaded.providers),
        loaded.routing,
        memory_defaults(loaded),
        rag=loaded.rag_pipelines,
    )


def deploy_stack(
    loaded: LoadedConfig,
    root: str,
    agent: Application | None = None,
    agent_route: str | None = None,
) -> list[PlannedApp]:
    """Every application ``plan`` lists, in its order, as ``serve/local.py`` runs
    them; with ``agent`` given, it is the (one) agent's application, at
    ``agent_route``.  Returns the plan."""
    planned = plan(loaded, root)
    for app in planned:
        if agent is not None and app.builder == "agent_app":
            serve.run(agent, name=app.name, route_prefix=agent_route)
        else:
            serve.run(BUILDERS[app.builder](app.args), name=app.name, route_prefix=app.route_prefix)
    return planned


# -- the floors ----------------------------------------------------------------------------


class _ModelCall:
    """One chat completion from the model server, with one pooled client per replica
    (``DEFAULT_MAX_CONNECTIONS`` connections, as our provider's)."""

    def __init__(self, base_url: str) -> None:
        self._url = f"{base_url}/chat/completions"
        self._client: httpx.AsyncClient | None = None

    async def run(self, query: str) -> str:
        if self._client is None:  # made in the replica's event loop
            pool = httpx.Limits(
                max_connections=DEFAULT_MAX_CONNECTIONS,
                max_keepalive_connections=DEFAULT_MAX_CONNECTIONS,
            )
            self._client = httpx.AsyncClient(timeout=60.0, limits=pool)
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": query}]
        reply = await self._client.post(self._url, json={"model": MODEL, "messages": messages})
        reply.raise_for_status()
        content: str = reply.json()["choices"][0]["message"]["content"]
        return content

    def pid(self) -> int:
        return os.getpid()


@serve.deployment(name="bare-provider", ray_actor_options={"num_cpus": 0})
class BareProvider(_ModelCall):
    """The provider hop of the bare chain."""


@serve.deployment(name="bare-agent", ray_actor_options={"num_cpus": 0})
class BareAgent:
    """The agent hop of the bare chain: forwards to the provider hop."""

    def __init__(self, provider: Any) -> None:
        self._provider = provider

    async def run(self, query: str) -> str:
        answer: str = await self._provider.run.remote(query)
        return answer


@serve.deployment(name="bare-ingress", ray_actor_options={"num_cpus": 0})
class BareIngress:
    """The gateway hop of the bare chain: HTTP in, forwards to the agent hop."""

    def __init__(self, agent: Any) -> None:
        self._agent = agent

    async def __call__(self, request: Request) -> dict[str, str]:
        body = await request.json()
        return {"answer": await self._agent.run.remote(body["query"])}


@serve.deployment(name="tiny-ingress", ray_actor_options={"num_cpus": 0})
class TinyIngress:
    """HTTP in, the agent application's ``run`` by handle, its result out."""

    def __init__(self, app: str) -> None:
        self._agent = AppHandle(app)

    async def __call__(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        handle = await self._agent.get()
        result: dict[str, Any] = unwrap(await handle.run.remote({"query": body["query"]}))
        return result


@serve.deployment(name="one-hop", ray_actor_options={"num_cpus": 0})
class OneHop(_ModelCall):
    """HTTP in, the model server's answer out: one Serve hop."""

    async def __call__(self, request: Request) -> dict[str, str]:
        body = await request.json()
        return {"answer": await self.run(body["query"])}


def _options(decorated: object, max_ongoing: int) -> Deployment:
    return cast(Deployment, decorated).options(max_ongoing_requests=max_ongoing)


def deploy_floors(model_url: str, agent_name: str, provider_hop: bool) -> None:
    """The bare chain (with a provider hop when the stack has one), the tiny ingress
    in front of agent ``agent_name``'s application and the one-hop floor, each
    deployment taking as many requests at once as its counterpart in the stack."""
    cap = limits()
    if provider_hop:
        last = _options(BareProvider, cap["provider"]).bind(model_url)
        agent = _options(BareAgent, cap["agent"]).bind(last)
    else:  # the stack calls the model from the agent replica: so does the chain
        agent = _options(BareProvider, cap["agent"]).options(name="bare-agent").bind(model_url)
    ingress = _options(BareIngress, cap["gateway"]).bind(agent)
    serve.run(ingress, name="bare", route_prefix=BARE_ROUTE)
    tiny = _options(TinyIngress, cap["gateway"]).bind(agent_app_name(agent_name))
    serve.run(tiny, name="tiny-ingress", route_prefix=TINY_ROUTE)
    serve.run(
        _options(OneHop, cap["gateway"]).bind(model_url), name="one-hop", route_prefix=ONE_HOP_ROUTE
    )


def hops(planned: list[PlannedApp]) -> str:
    """The plan's applications and their routes, for the report."""
    return ", ".join(f"{app.name} ({app.route_prefix or 'no route'})" for app in planned)
