"""The Serve side of ``throughput.py`` and ``scaling.py``: the stack deployed as
``serve/builders.py`` plans it (a route overridden where a variant needs the old
path), and the floor it is compared with.

- ``deploy_stack``: every planned application, through its builder; ``routes``
  overrides an application's ``route_prefix`` (``None``: reached through the gateway
  only, as every agent was before its application got the agent's routes), ``apps``
  replaces an application (``with_options``: the builder's application with other
  Serve options).
- The bare chain (``bare-agent``): proxy -> one deployment calling the model server
  over HTTP with a pooled ``httpx`` client, as the agent replica calls a remote API:
  the same hops as an agent turn on the agent's own route, each doing nothing but
  forwarding.  It calls the same model server (rather than sleeping as long as its
  answers take), so that the floor holds the same model latency and the same HTTP
  call to the model: everything but our code.  With one hop it is also the issue's
  "one-hop floor".

The scripts register this module with ``cloudpickle.register_pickle_by_value``, so
the replicas get these classes by value, as they get what a script defines.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, cast

import httpx
from ray import serve
from ray.serve import Application, Deployment
from serve_load import MODEL
from starlette.requests import Request

from astromesh_ray.core.providers.http import DEFAULT_MAX_CONNECTIONS
from astromesh_ray.serve.agents import AgentDeployment
from astromesh_ray.serve.builders import BUILDERS, PlannedApp, plan
from astromesh_ray.serve.gateway import Gateway
from astromesh_ray.serve.providers import ProviderDeployment
from astromesh_ray.spec import LoadedConfig

SYSTEM = "You are a concise assistant. Answer in one short sentence."
BARE_ROUTE = "/bare"


def limits() -> dict[str, int]:
    """Each real deployment's ``max_ongoing_requests`` (the decorators' own: the
    benchmarks' YAML sets none), which the floor copies."""
    return {
        name: int(cast(Deployment, deployment).max_ongoing_requests)
        for name, deployment in (
            ("gateway", Gateway),
            ("agent", AgentDeployment),
            ("provider", ProviderDeployment),
        )
    }


def with_options(app: Application, **overrides: Any) -> Application:
    """``app`` (one deployment, as a builder returns it) with other Serve options:
    the same class and arguments."""
    deployment = cast(Any, app)._bound_deployment
    return cast(
        Application,
        deployment.options(**overrides).bind(*deployment.init_args, **deployment.init_kwargs),
    )


def deploy_stack(
    loaded: LoadedConfig,
    root: str,
    *,
    routes: Mapping[str, str | None] | None = None,
    apps: Mapping[str, Application] | None = None,
) -> list[PlannedApp]:
    """Every application ``plan`` lists, in its order, as ``serve/local.py`` runs
    them, with ``routes`` and ``apps`` overriding by application name.  Returns the
    plan, with the routes used."""
    routes, apps = dict(routes or {}), dict(apps or {})
    planned = []
    for app in plan(loaded, root):
        route = routes.get(app.name, app.route_prefix)
        application = apps.get(app.name) or BUILDERS[app.builder](app.args)
        serve.run(application, name=app.name, route_prefix=route)
        planned.append(PlannedApp(app.name, route, app.builder, app.args))
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


@serve.deployment(name="bare-agent", ray_actor_options={"num_cpus": 0})
class BareAgent(_ModelCall):
    """The bare chain: HTTP in, the model server's answer out (one Serve hop)."""

    async def __call__(self, request: Request) -> dict[str, str]:
        body = await request.json()
        return {"answer": await self.run(body["query"])}


def deploy_floor(model_url: str, max_ongoing: int | None = None) -> None:
    """The bare chain, taking as many requests at once as an agent replica (its
    deployment's own cap, or ``max_ongoing``)."""
    cap = max_ongoing or limits()["agent"]
    bare = cast(Deployment, BareAgent).options(max_ongoing_requests=cap)
    serve.run(bare.bind(model_url), name="bare", route_prefix=BARE_ROUTE)


def hops(planned: list[PlannedApp]) -> str:
    """The plan's applications and their routes, for the report."""
    return ", ".join(f"{app.name} ({app.route_prefix or 'no route'})" for app in planned)
