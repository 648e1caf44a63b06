"""Application builders: what ``serve deploy deployments/<file>.yaml`` calls by
``import_path``, and what ``astromesh serve`` runs locally.  Both go through ``plan``,
so the deployed shape is the same either way:

- one application per provider entry (``provider-...``), not exposed over HTTP;
- one application per embedder with its own ``deployment`` (``embedder-...``), not
  exposed over HTTP;
- one application per agent (``agent-<name>``), not exposed over HTTP;
- the ``gateway`` application at ``/``, routing to agents by handle.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application, Deployment

from astromesh_ray.core.build import check_buildable
from astromesh_ray.core.memory.factory import embedder_kwargs, memory_defaults
from astromesh_ray.errors import ConfigError
from astromesh_ray.serve.agents import AgentDeployment, agent_app_name, describe_agent
from astromesh_ray.serve.breaker import agent_probes, ensure_breaker_actor
from astromesh_ray.serve.embedders import EmbedderDeployment, embedder_app_name
from astromesh_ray.serve.gateway import Gateway
from astromesh_ray.serve.placement import (
    check_accelerator_type,
    colocation_target,
    placed_actor_options,
    wait_for_replica_nodes,
)
from astromesh_ray.serve.providers import (
    HOSTED_MODEL_MAX_ONGOING_REQUESTS,
    ProviderDeployment,
    provider_app_name,
)
from astromesh_ray.serve.vllm import in_cluster, llm_config_fields, vllm_app
from astromesh_ray.spec import (
    AgentSpec,
    DeploymentSpec,
    LoadedConfig,
    ModelEndpoint,
    ProviderEntrySpec,
    load_from_environment,
    resolve_models,
)
from astromesh_ray.spec.memory import EmbeddingSpec

GATEWAY_APP = "gateway"


class AppArgs(BaseModel):
    """Builder arguments (the ``args`` block of a Serve config application)."""

    model_config = ConfigDict(extra="forbid")

    config_dir: str | None = Field(
        default="config",
        description="Directory with runtime.yaml, providers*.yaml and agents/; relative "
        "paths resolve against $ASTROMESH_PROJECT_DIR, else the working directory; null: "
        "found as the CLI finds it ($ASTROMESH_CONFIG_DIR, ./config, /etc/astromesh, or "
        "none when agents_dir is given).",
    )
    agents_dir: str | None = Field(
        default=None,
        description="Agents directory override (default: $ASTROMESH_AGENTS_DIR, else "
        "<config_dir>/agents).",
    )
    agent: str | None = Field(default=None, description="The agent (agent_app only).")
    provider: str | None = Field(default=None, description="Provider app name (provider_app only).")
    embedder: str | None = Field(default=None, description="Embedder app name (embedder_app only).")


@dataclass(frozen=True)
class PlannedApp:
    """One Serve application of the deployment: its name, route and builder call."""

    name: str
    route_prefix: str | None
    builder: str
    args: dict[str, Any]


def provider_endpoints(loaded: LoadedConfig) -> dict[str, ModelEndpoint]:
    """Every provider deployment the agents need, deduplicated by endpoint key."""
    found: dict[str, ModelEndpoint] = {}
    for agent in loaded.agents.values():
        for endpoint in resolve_models(agent, loaded.providers):
            name = provider_app_name(endpoint)
            seen = found.get(name)
            if seen is None or (seen.deployment is None and endpoint.deployment is not None):
                found[name] = endpoint
            elif endpoint.deployment is not None and endpoint.deployment != seen.deployment:
                raise ConfigError(
                    f"{agent.source}: provider {endpoint.provider}:{endpoint.model} at "
                    f"{endpoint.endpoint} is declared twice with different deployment options",
                    hint="declare it once in providers.yaml and use providerRef",
                )
    return found


def embedder_specs(loaded: LoadedConfig) -> dict[str, EmbeddingSpec]:
    """Every embedder the agents want in its own deployment, by application name
    (agents declaring the same one share it)."""
    found: dict[str, EmbeddingSpec] = {}
    for agent in loaded.agents.values():
        semantic = agent.spec.memory.semantic if agent.spec.memory else None
        if semantic is not None and semantic.embedding.deployment is not None:
            found[embedder_app_name(semantic.embedding)] = semantic.embedding
    for pipeline in loaded.rag_pipelines.values():  # RAG pipelines' embedders too
        if pipeline.spec.embedding.deployment is not None:
            found[embedder_app_name(pipeline.spec.embedding)] = pipeline.spec.embedding
    return found


def plan(
    loaded: LoadedConfig, config_dir: str | None, agents_dir: str | None = None
) -> list[PlannedApp]:
    """The applications to deploy for ``loaded``, providers first, gateway last."""
    base: dict[str, Any] = {"config_dir": config_dir}
    if agents_dir:
        base["agents_dir"] = agents_dir
    endpoints = provider_endpoints(loaded)
    for endpoint in endpoints.values():
        if in_cluster(endpoint):
            llm_config_fields(endpoint)  # option mistakes fail here, not in the cluster
    for where, spec in _deployment_specs(loaded, endpoints):
        actor = spec.ray_actor_options if spec is not None else None
        if actor is not None:
            check_accelerator_type(f"{where}.ray_actor_options", actor.accelerator_type)
    for agent in loaded.agents.values():
        if agent.spec.deployment is not None and agent.spec.deployment.colocates_with_model:
            colocation_target(agent, loaded.providers, endpoints)  # fails here, not later
    apps = [
        PlannedApp(name, None, "provider_app", {**base, "provider": name})
        for name in sorted(endpoints)
    ]
    apps += [
        PlannedApp(name, None, "embedder_app", {**base, "embedder": name})
        for name in sorted(embedder_specs(loaded))
    ]
    apps += [
        PlannedApp(agent_app_name(name), None, "agent_app", {**base, "agent": name})
        for name in sorted(loaded.agents)
    ]
    apps.append(PlannedApp(GATEWAY_APP, "/", "gateway_app", dict(base)))
    return apps


def _deployment_specs(
    loaded: LoadedConfig, endpoints: Mapping[str, ModelEndpoint]
) -> Iterator[tuple[str, DeploymentSpec | None]]:
    """Every ``deployment`` block of the plan, with where it was written."""
    for name, endpoint in endpoints.items():
        yield f"provider {name}: deployment", endpoint.deployment
    for name, embedding in embedder_specs(loaded).items():
        yield f"embedder {name}: deployment", embedding.deployment
    for agent in loaded.agents.values():
        yield f"{agent.source or agent.name}: spec.deployment", agent.spec.deployment
    yield "runtime: spec.gateway", loaded.runtime.spec.gateway


def _deployment(decorated: object) -> Deployment:
    # `@serve.deployment` returns a Deployment; its stubs still type it as the class.
    return cast(Deployment, decorated)


def serve_options(
    deployment: object, spec: DeploymentSpec | None, *, near: Sequence[str] = ()
) -> dict[str, Any]:
    """``Deployment.options()`` for a YAML ``deployment`` block: its
    ``ray_actor_options`` merged over the deployment's own defaults, so
    ``{num_gpus: 1}`` keeps the decorator's ``num_cpus: 0``, with the replicas'
    label selector (``serve/placement.py``: off the GPU pool unless the deployment
    asks for an accelerator or names its nodes; ``near``: node ids preferred)."""
    options = spec.to_serve_options() if spec else {}
    defaults = _deployment(deployment).ray_actor_options or {}
    options["ray_actor_options"] = placed_actor_options(defaults, spec, near)
    return options


def _load(args: AppArgs) -> LoadedConfig:
    # Found as the CLI finds them, relative paths against the project directory.
    base = Path(os.environ.get("ASTROMESH_PROJECT_DIR", "."))
    return load_from_environment(args.config_dir, args.agents_dir, base=base)


def provider_app(raw: dict[str, Any]) -> Application:
    """A provider deployment, with ``ray_actor_options``/autoscaling from YAML; an
    in-cluster vLLM endpoint gets Ray's ``LLMServer`` instead (``serve/vllm.py``)."""
    args = AppArgs.model_validate(raw)
    endpoints = provider_endpoints(_load(args))
    if args.provider not in endpoints:
        raise ConfigError(
            f"no agent uses provider {args.provider!r}",
            hint="regenerate the Serve config: astromesh deploy-config",
        )
    endpoint = endpoints[args.provider]
    if in_cluster(endpoint):
        # vLLM inside the cluster: Ray's own LLMServer on GPU nodes (serve/vllm.py),
        # answering the same complete/stream/health calls as ProviderDeployment.
        return vllm_app(endpoint)
    options = serve_options(ProviderDeployment, endpoint.deployment)
    if endpoint.provider == "onnx":  # a model in the replica, not a connection pool
        options.setdefault("max_ongoing_requests", HOSTED_MODEL_MAX_ONGOING_REQUESTS)
    return _deployment(ProviderDeployment).options(**options).bind(endpoint)


def named_providers(
    agent: AgentSpec, providers: Mapping[str, ProviderEntrySpec]
) -> dict[str, ProviderEntrySpec]:
    """The entries of providers.yaml that ``agent``'s model blocks name (``providerRef``):
    all its replica reads of them (``resolve_models`` / ``resolve_route``).  Bound
    alone, so that changing another entry leaves this agent's application as it is
    (``serve/reload.py`` redeploys only what changed)."""
    model = agent.spec.model
    blocks = [*model.blocks(), *(b for group in model.roles.values() for b in group.candidates)]
    refs = {block.provider_ref for block in blocks if block.provider_ref is not None}
    return {name: entry for name, entry in providers.items() if name in refs}


def agent_app(raw: dict[str, Any]) -> Application:
    """One agent's application."""
    args = AppArgs.model_validate(raw)
    loaded = _load(args)
    if args.agent not in loaded.agents:
        raise ConfigError(
            f"no agent named {args.agent!r} in {loaded.agents_dir or loaded.root}",
            hint="loaded agents: " + (", ".join(sorted(loaded.agents)) or "(none)"),
        )
    agent = loaded.agents[args.agent]
    # Fail the build, not the replica; the agents it calls must be in this config.
    check_buildable([agent], loaded.providers, known=loaded.agents, rag=loaded.rag_pipelines)
    # The breaker actor exists, and probes this agent's providers, before any request.
    ensure_breaker_actor(agent_probes(agent, loaded.providers, loaded.routing))
    deployment = agent.spec.deployment
    near: list[str] = []
    if deployment is not None and deployment.colocates_with_model:
        # The nodes its model runs on now (waiting for the first under `serve deploy`).
        model_app = colocation_target(agent, loaded.providers, provider_endpoints(loaded))
        why = f"agent {agent.name}: placement.colocate_with: model"
        near = wait_for_replica_nodes(model_app, why=why)
    options = serve_options(AgentDeployment, deployment, near=near)
    return (
        _deployment(AgentDeployment)
        .options(**options)
        .bind(
            agent,
            named_providers(agent, loaded.providers),
            loaded.routing,
            memory_defaults(loaded),
            rag=loaded.rag_pipelines,
        )
    )


def embedder_app(raw: dict[str, Any]) -> Application:
    """An embedder's own deployment, with replicas and resources from YAML."""
    args = AppArgs.model_validate(raw)
    specs = embedder_specs(_load(args))
    if args.embedder not in specs:
        raise ConfigError(
            f"no agent uses embedder {args.embedder!r}",
            hint="regenerate the Serve config: astromesh deploy-config",
        )
    spec = specs[args.embedder]
    kind, kwargs = embedder_kwargs(spec)
    options = serve_options(EmbedderDeployment, spec.deployment)
    return _deployment(EmbedderDeployment).options(**options).bind(kind, kwargs, spec.batch_size)


def gateway_app(raw: dict[str, Any]) -> Application:
    """The HTTP ingress."""
    args = AppArgs.model_validate(raw)
    loaded = _load(args)
    options = serve_options(Gateway, loaded.runtime.spec.gateway)
    ensure_breaker_actor()  # GET /v1/providers reads it: created now, not on first use
    agents = {name: describe_agent(agent) for name, agent in loaded.agents.items()}
    apps = {name: agent_app_name(name) for name in loaded.agents}
    providers = {
        name: {"provider": ep.provider, "model": ep.model, "endpoint": ep.endpoint}
        for name, ep in provider_endpoints(loaded).items()
    }
    return (
        _deployment(Gateway)
        .options(**options)
        .bind(
            agents,
            apps,
            providers,
            rag=loaded.rag_pipelines,
            memory=memory_defaults(loaded),
            channels=loaded.channels,
            telemetry=loaded.runtime.spec.telemetry,
            auth=loaded.runtime.spec.auth,
        )
    )


BUILDERS = {
    "provider_app": provider_app,
    "embedder_app": embedder_app,
    "agent_app": agent_app,
    "gateway_app": gateway_app,
}


def portable_path(path: Path | None) -> str | None:
    """``path`` for a Serve config file: relative to the working directory when it is
    under it (the builders resolve it against ``$ASTROMESH_PROJECT_DIR`` or theirs),
    else absolute."""
    if path is None:
        return None
    resolved = path.resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


def deploy_config(
    loaded: LoadedConfig,
    config_dir: str | None,
    *,
    agents_dir: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
) -> dict[str, Any]:
    """A Serve config file (``serve deploy``) for ``loaded``, whose builders load
    ``config_dir`` (and ``agents_dir``; see ``portable_path``)."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [
            {
                "name": app.name,
                "route_prefix": app.route_prefix,
                "import_path": f"astromesh_ray.serve.builders:{app.builder}",
                "args": app.args,
            }
            for app in plan(loaded, config_dir, agents_dir)
        ],
    }
