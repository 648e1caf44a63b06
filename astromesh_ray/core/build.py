"""From an ``AgentSpec`` to a ready ``AgentRuntime``.

``make_provider`` decides what a provider *is* and ``make_peer`` what another agent
is: in this process (``local_provider``, ``LocalAgents``: ``astromesh run``, unit
tests) or handles to Serve applications (the serve layer).  Nothing else differs.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, cast

from astromesh_ray.core.breaker import BreakerPolicy, BreakerStore, LocalBreakerStore
from astromesh_ray.core.chain import ChainSteps
from astromesh_ray.core.guardrails.build import (
    JUDGE_ROLE,
    GuardrailEnv,
    budget_policy,
    guardrail_resources,
    has_guardrails,
    needs_judge,
)
from astromesh_ray.core.memory.build import build_memory, has_memory
from astromesh_ray.core.memory.factory import (
    MemoryFactory,
    default_memory_factory,
)
from astromesh_ray.core.memory.redact import secret_values
from astromesh_ray.core.memory.stages import SUMMARIZER_ROLE
from astromesh_ray.core.patterns import (
    AfterStep,
    Pattern,
    final_role,
    pattern_for,
)
from astromesh_ray.core.peers import LocalPeer, Peer
from astromesh_ray.core.pricing import Price, price_for
from astromesh_ray.core.providers.base import Provider, local_provider
from astromesh_ray.core.providers.retry import RetryingProvider
from astromesh_ray.core.router import Candidate, ModelRouter, Strategy
from astromesh_ray.core.runtime import AgentRuntime, Closeable
from astromesh_ray.core.stages import StageEnv, stages_for
from astromesh_ray.core.structured import StructuredAnswer
from astromesh_ray.core.tasks import TaskRunner
from astromesh_ray.core.tools.builders import build_toolsets
from astromesh_ray.core.tools.env import ToolEnv, ToolServices
from astromesh_ray.core.tools.services import local_tool_services
from astromesh_ray.errors import ConfigError
from astromesh_ray.spec import (
    AgentSpec,
    AgentToolSpec,
    ModelEndpoint,
    ProviderEntrySpec,
    ProviderRoutingSpec,
    output_json_schema,
    resolve_models,
    resolve_route,
)
from astromesh_ray.spec.resolve import resolve_block
from astromesh_ray.spec.tools import BuiltinToolSpec, McpToolSpec, WebhookToolSpec

ProviderFactory = Callable[[ModelEndpoint], Provider]
PeerFactory = Callable[[str], Peer]


def build_models(
    agent: AgentSpec,
    providers: Mapping[str, ProviderEntrySpec],
    make_provider: ProviderFactory = local_provider,
    *,
    roles: Iterable[str],
    routing: ProviderRoutingSpec | None = None,
    breakers: BreakerStore | None = None,
    health_checks: bool = True,
) -> dict[str, Provider]:
    """The routed model of each pattern role (``reasoner``, ``planner``, ...).

    Each role gets a ``ModelRouter`` over its candidates (``spec.model.roles`` after
    ``orchestration.role_map``, else the default ones) with the strategy, breaker
    policy and health checks from YAML.  Roles with the same candidates and policy
    share one router; every endpoint has one client, shared by the roles using it.
    ``health_checks=False`` leaves probing to someone else (under Serve, one prober
    per provider deployment instead of one per agent replica).
    """
    breakers = breakers or LocalBreakerStore()
    clients: dict[str, Provider] = {}
    routers: dict[object, Provider] = {}
    models: dict[str, Provider] = {}
    for role in roles:
        route = resolve_route(agent, providers, routing, role=role)
        # What the router ranks by is part of its identity: the same endpoints with
        # other pricing, quality or capabilities in another role need their own router.
        identity = (
            tuple((ep.key, ep.pricing, ep.quality, ep.capabilities) for ep in route.endpoints),
            route.strategy,
            route.failure_threshold,
            route.cooldown_s,
            route.fallback,
            route.health_check_interval_s,
        )
        if identity not in routers:
            candidates = []
            for ep in route.endpoints:
                if ep.key not in clients:
                    clients[ep.key] = _with_retries(make_provider(ep), ep)
                candidates.append(
                    Candidate(
                        key=ep.key,
                        provider=clients[ep.key],
                        price=price_for(ep.provider, ep.model, _price(ep)),
                        quality=ep.quality,
                        capabilities=ep.capabilities,
                    )
                )
            routers[identity] = ModelRouter(
                candidates,
                strategy=cast(Strategy | None, route.strategy),
                breakers=breakers,
                policy=BreakerPolicy(route.failure_threshold, route.cooldown_s),
                fallback=route.fallback,
                health_check_interval_s=route.health_check_interval_s if health_checks else None,
            )
        models[role] = routers[identity]
    return models


def _with_retries(provider: Provider, endpoint: ModelEndpoint) -> Provider:
    # Retries are the caller's policy (per agent), so they wrap the client side and
    # provider deployments stay shared between agents.  Always wrapped: a connection
    # lost on a pooled keep-alive socket is retried once even with max_retries 0.
    return RetryingProvider(provider, max_retries=endpoint.max_retries)


def _price(endpoint: ModelEndpoint) -> Price | None:
    p = endpoint.pricing
    return Price(p.input_per_mtok, p.output_per_mtok) if p is not None else None


def peer_names(agent: AgentSpec) -> set[str]:
    """The agents ``agent`` may call: its ``type: agent`` tools, its pattern's workers,
    members and agent stages, and its ``spec.chain`` steps."""
    body = agent.spec
    orchestration = body.orchestration
    names = {t.agent for t in body.tools if isinstance(t, AgentToolSpec)}
    names.update(orchestration.workers or ())
    names.update(orchestration.members or ())
    names.update(s.agent for s in orchestration.stages or () if s.agent)
    if body.chain is not None:
        names.update(step.agent for step in body.chain.on_complete)
    return names


def prepared(agent: AgentSpec) -> AgentSpec:
    """``agent`` as the runtime builds it: a supervisor's ``orchestration.workers``
    become agent tools (unless declared as such), and a ``plan_and_execute`` agent
    that names a ``worker`` model role (the original's spelling) but no ``executor``
    runs its executor on it."""
    body = agent.spec
    orchestration = body.orchestration
    update: dict[str, Any] = {}
    if orchestration.pattern == "supervisor" and orchestration.workers:
        declared = {t.agent for t in body.tools if isinstance(t, AgentToolSpec)}
        names = {t.name for t in body.tools}
        extra = [
            AgentToolSpec(
                name=w,
                type="agent",
                agent=w,
                description=f"Delegate a task to the {w} agent; it answers it on its own.",
            )
            for w in orchestration.workers
            if w not in declared and w not in names
        ]
        update["tools"] = [*body.tools, *extra]
    roles = body.model.roles
    if (
        orchestration.pattern == "plan_and_execute"
        and "worker" in roles
        and "executor" not in roles
        and "executor" not in orchestration.role_map
    ):
        update["orchestration"] = orchestration.model_copy(
            update={"role_map": {**orchestration.role_map, "executor": "worker"}}
        )
    if not update:
        return agent
    copy = agent.model_copy(update={"spec": body.model_copy(update=update)})
    return copy


def supervisor_workers(agent: AgentSpec) -> dict[str, str]:
    """A supervisor's worker tools: tool name → agent."""
    if agent.spec.orchestration.pattern != "supervisor":
        return {}
    return {t.name: t.agent for t in agent.spec.tools if isinstance(t, AgentToolSpec)}


def after_steps(agent: AgentSpec, pattern: Pattern) -> list[AfterStep]:
    """What runs once the pattern answered: the structured answer check, the chain."""
    steps: list[AfterStep] = []
    if agent.spec.output_schema is not None:
        steps.append(
            StructuredAnswer(output_json_schema(agent.spec.output_schema), final_role(pattern))
        )
    if agent.spec.chain is not None:
        steps.append(ChainSteps(agent.spec.chain.on_complete))
    return steps


def reachable(name: str, agents: Mapping[str, AgentSpec]) -> list[AgentSpec]:
    """Agent ``name`` and every agent it can reach through agent tools (the known ones)."""
    found: dict[str, AgentSpec] = {}
    todo = [name]
    while todo:
        current = todo.pop()
        if current in found or current not in agents:
            continue
        found[current] = agents[current]
        todo.extend(sorted(peer_names(agents[current])))
    return list(found.values())


def build_runtime(
    agent: AgentSpec,
    providers: Mapping[str, ProviderEntrySpec] | None = None,
    *,
    make_provider: ProviderFactory = local_provider,
    provider: Provider | None = None,
    models: Mapping[str, Provider] | None = None,
    make_peer: PeerFactory | None = None,
    where: Mapping[str, str] | None = None,
    routing: ProviderRoutingSpec | None = None,
    breakers: BreakerStore | None = None,
    health_checks: bool = True,
    memory: MemoryFactory | None = None,
    tools: ToolServices | None = None,
    rag: Mapping[str, Any] | None = None,
    workdir: Path | None = None,
    make_tasks: Callable[[str], TaskRunner] | None = None,
) -> AgentRuntime:
    """A runtime for ``agent``.

    Models come from the YAML (``make_provider`` builds each endpoint's client), or
    from ``models`` by role, or ``provider`` for every role (tests with
    ``ScriptedProvider``).  Peers (agents called as tools) come from ``make_peer``.
    Memory backends come from ``memory`` (default: a factory of this process, with
    ``./data`` as data directory, closed with the runtime).  Tool machinery (MCP stdio
    servers, rate limits, the tool cache) comes from ``tools`` (default: this
    process's); ``rag`` holds the configuration's RAG pipelines by name, ``workdir``
    is where relative permission paths start (default: the working directory).
    ``make_tasks`` says where the pattern's tasks run (default: in this runtime; under
    Serve, on any replica of the agent's application).
    """
    agent = prepared(agent)
    body = agent.spec
    pattern = pattern_for(body.orchestration, supervisor_workers(agent))
    roles = model_roles(agent, pattern.roles)
    resources: list[Closeable] = []
    counter_endpoint: ModelEndpoint | None = None
    if models is None:
        if provider is not None:
            models = {role: provider for role in roles}
        else:
            models = build_models(
                agent,
                providers or {},
                make_provider,
                roles=roles,
                routing=routing,
                breakers=breakers,
                health_checks=health_checks,
            )
            counter_endpoint = resolve_route(
                agent, providers or {}, routing, role=pattern.roles[0]
            ).endpoints[0]
    else:  # the extra roles default to the pattern's first
        extra = [r for r in (SUMMARIZER_ROLE, JUDGE_ROLE) if r in roles and r not in models]
        models = {**models, **{r: models[pattern.roles[0]] for r in extra}}
    agent_memory = None
    pauses = can_pause(agent)
    guarded = has_guardrails(agent)
    if memory is None and (has_memory(agent) or pauses or guarded):
        memory = default_memory_factory()
        resources.append(memory)
    if has_memory(agent):
        assert memory is not None
        agent_memory, counter = build_memory(agent, memory, counter_endpoint)
        if counter is not None:
            resources.append(counter)
    paused = None
    if pauses:
        assert memory is not None
        paused = memory.paused_runs(body.memory.conversational if body.memory else None)
    names = peer_names(agent)
    if names and make_peer is None:
        raise ConfigError(
            f"agent {agent.name!r} calls other agents ({', '.join(sorted(names))}): build "
            "it with make_peer"
        )
    peers = {name: make_peer(name) for name in sorted(names)} if make_peer else {}
    permissions = body.permissions
    allowed = permissions.allowed_actions if permissions else None
    guardrails = None
    if guarded:
        assert memory is not None
        guardrails = GuardrailEnv(
            vault=memory.placeholder_vault(), ledger=memory.budget_ledger, embedder=memory.embedder
        )
    env = StageEnv(
        memory=agent_memory,
        secrets=tuple(secret_values(_secret_envs(agent, providers))),
        guardrails=guardrails,
    )
    stages = stages_for(agent, env)
    resources += guardrail_resources(stages)
    return AgentRuntime(
        name=agent.name,
        models=models,
        pattern=pattern,
        stages=stages,
        toolsets=build_toolsets(
            ToolEnv(
                agent=agent,
                services=tools or local_tool_services(),
                peers=peers,
                memory=memory,
                rag=dict(rag or {}),
                workdir=workdir or Path.cwd(),
            )
        ),
        allowed_tools=allowed,
        peers=peers,
        max_iterations=body.orchestration.max_iterations,
        timeout_s=body.orchestration.timeout_s,
        where=where,
        memory=agent_memory,
        resources=resources,
        paused=paused,
        tasks=make_tasks(agent.name) if make_tasks is not None else None,
        output_schema=(
            output_json_schema(body.output_schema) if body.output_schema is not None else None
        ),
        after=after_steps(agent, pattern),
        budget=budget_policy(agent, guardrails),
    )


def can_pause(agent: AgentSpec) -> bool:
    """Whether a run of ``agent`` can pause for its caller: it has client tools, or
    tools that require approval."""
    return any(t.type == "client" or t.requires_approval for t in agent.spec.tools)


def model_roles(agent: AgentSpec, pattern_roles: tuple[str, ...]) -> tuple[str, ...]:
    """The model roles ``agent`` needs: its pattern's, ``summarizer`` when its
    conversation is kept with the ``summary`` strategy, and ``judge`` when a content
    filter judges categories with the LLM judge."""
    roles = pattern_roles
    conversational = agent.spec.memory.conversational if agent.spec.memory else None
    if conversational is not None and conversational.strategy == "summary":
        roles = (*roles, SUMMARIZER_ROLE)
    if needs_judge(agent):
        roles = (*roles, JUDGE_ROLE)
    return roles


def _secret_envs(agent: AgentSpec, providers: Mapping[str, ProviderEntrySpec] | None) -> list[str]:
    """The environment variables holding ``agent``'s API keys."""
    names = [e.api_key_env for e in agent_endpoints(agent, providers) if e.api_key_env]
    semantic = agent.spec.memory.semantic if agent.spec.memory else None
    if semantic is not None and semantic.embedding.api_key_env:
        names.append(semantic.embedding.api_key_env)
    return names + tool_secret_envs(agent)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def tool_secret_envs(agent: AgentSpec) -> list[str]:
    """The environment variables ``agent``'s tools read secrets from: ``${NAME}`` in
    webhook URLs and headers and in MCP headers and env, MCP bearer tokens, the
    ``sql_query`` DSN (the episodic log redacts their values)."""
    names: list[str] = []
    for tool in agent.spec.tools:
        texts: list[str] = []
        if isinstance(tool, WebhookToolSpec):
            texts = [tool.webhook.url, *tool.webhook.headers.values()]
        elif isinstance(tool, McpToolSpec):
            texts = [tool.mcp.url or "", *tool.mcp.headers.values(), *tool.mcp.env.values()]
            if tool.mcp.bearer_token_env:
                names.append(tool.mcp.bearer_token_env)
        elif isinstance(tool, BuiltinToolSpec) and isinstance(tool.config.get("dsn_env"), str):
            names.append(tool.config["dsn_env"])
        names += [m.group(1) for text in texts for m in _ENV_REF.finditer(text)]
    return names


class LocalAgents:
    """Runtimes of a set of agents in this process, each built (and started) on
    first use; agents calling each other reach one another as ``LocalPeer``s."""

    def __init__(
        self,
        agents: Mapping[str, AgentSpec],
        providers: Mapping[str, ProviderEntrySpec] | None = None,
        *,
        routing: ProviderRoutingSpec | None = None,
        make_provider: ProviderFactory = local_provider,
        scripted: Mapping[str, Provider] | None = None,
        memory: MemoryFactory | None = None,
        tools: ToolServices | None = None,
        rag: Mapping[str, Any] | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.agents = dict(agents)
        # One set of tool services (rate limits, caches, MCP servers) for all agents.
        self.tools = tools or local_tool_services()
        self.rag = dict(rag or {})
        self.workdir = workdir
        # One owner of every agent's memory backends (one SQLite file, one embedder).
        self.memory = memory or default_memory_factory()
        self.providers = dict(providers or {})
        self.routing = routing
        self.make_provider = make_provider
        # Agents whose every role uses the given provider instead of their YAML
        # models (tests with ScriptedProvider).
        self.scripted = dict(scripted or {})
        self.breakers = LocalBreakerStore()  # one process: one set of breakers
        self._runtimes: dict[str, AgentRuntime] = {}
        self._lock = asyncio.Lock()

    def peer(self, name: str) -> Peer:
        """``name`` as a peer of another agent."""
        return LocalPeer(name, lambda: self.runtime(name))

    async def runtime(self, name: str) -> AgentRuntime:
        """The started runtime of agent ``name``."""
        runtime = self._runtimes.get(name)
        if runtime is None:
            async with self._lock:
                runtime = self._runtimes.get(name)
                if runtime is None:
                    runtime = build_runtime(
                        self.agents[name],
                        self.providers,
                        make_provider=self.make_provider,
                        provider=self.scripted.get(name),
                        make_peer=self.peer,
                        routing=self.routing,
                        breakers=self.breakers,
                        memory=self.memory,
                        tools=self.tools,
                        rag=self.rag,
                        workdir=self.workdir,
                    )
                    self._runtimes[name] = runtime
        await runtime.start()
        return runtime

    async def aclose(self) -> None:
        """Close every runtime built, then the memory backends."""
        for runtime in self._runtimes.values():
            await runtime.aclose()
        await self.memory.aclose()


def agent_endpoints(
    agent: AgentSpec, providers: Mapping[str, ProviderEntrySpec] | None
) -> list[ModelEndpoint]:
    """The model endpoints to build-check: all of them given ``providers``; without
    them, those written out in the agent itself (``providerRef`` needs providers)."""
    if providers is not None:
        return resolve_models(agent, providers)
    model = agent.spec.model
    blocks = [*model.blocks(), *(b for role in model.roles.values() for b in role.candidates)]
    where = f"{agent.source or agent.name}: "
    return [resolve_block(b, {}, where=where) for b in blocks if b.provider_ref is None]


# The build checks live in core/checks.py; imported here last (they use this module).
from astromesh_ray.core.checks import check_buildable  # noqa: E402

__all__ = [
    "LocalAgents",
    "build_models",
    "build_runtime",
    "can_pause",
    "check_buildable",
    "model_roles",
    "peer_names",
    "prepared",
    "reachable",
    "supervisor_workers",
    "tool_secret_envs",
]
