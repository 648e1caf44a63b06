"""From an ``AgentSpec`` to a ready ``AgentRuntime``.

``make_provider`` decides what a provider *is*: ``local_provider`` builds an HTTP
client in this process (``astromesh run``, unit tests); the serve layer passes a
function returning handles to provider deployments.  Nothing else differs.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from typing import cast

from astromesh_ray.core.breaker import BreakerPolicy, BreakerStore
from astromesh_ray.core.messages import ToolSchema
from astromesh_ray.core.patterns import pattern_for
from astromesh_ray.core.pricing import Price, price_for
from astromesh_ray.core.prompts import PromptSet
from astromesh_ray.core.providers.base import Provider, local_provider
from astromesh_ray.core.providers.retry import RetryingProvider
from astromesh_ray.core.router import Candidate, ModelRouter, Strategy
from astromesh_ray.core.runtime import AgentRuntime
from astromesh_ray.core.tools.base import Tool
from astromesh_ray.core.tools.python import resolve_python_tool
from astromesh_ray.core.tools.registry import DeclaredTool, ToolRegistry
from astromesh_ray.errors import ConfigError
from astromesh_ray.spec import (
    AgentSpec,
    ModelEndpoint,
    ProviderEntrySpec,
    ProviderRoutingSpec,
    resolve_models,
    resolve_route,
)

ProviderFactory = Callable[[ModelEndpoint], Provider]


def build_provider(
    agent: AgentSpec,
    providers: Mapping[str, ProviderEntrySpec],
    make_provider: ProviderFactory = local_provider,
    *,
    routing: ProviderRoutingSpec | None = None,
    breakers: BreakerStore | None = None,
    role: str = "reasoner",
) -> ModelRouter:
    """The model an agent's pattern uses for ``role``: a ``ModelRouter`` over the
    role's candidates, with the strategy, breaker policy and health checks from YAML."""
    route = resolve_route(agent, providers, routing, role=role)
    candidates = [
        Candidate(
            key=ep.key,
            provider=_with_retries(make_provider(ep), ep),
            price=price_for(ep.provider, ep.model, _price(ep)),
            quality=ep.quality,
        )
        for ep in route.endpoints
    ]
    return ModelRouter(
        candidates,
        strategy=cast(Strategy | None, route.strategy),
        breakers=breakers,
        policy=BreakerPolicy(route.failure_threshold, route.cooldown_s),
        fallback=route.fallback,
        health_check_interval_s=route.health_check_interval_s,
    )


def _with_retries(provider: Provider, endpoint: ModelEndpoint) -> Provider:
    # Retries are the caller's policy (per agent), so they wrap the client side and
    # provider deployments stay shared between agents.
    if endpoint.max_retries:
        return RetryingProvider(provider, max_retries=endpoint.max_retries)
    return provider


def _price(endpoint: ModelEndpoint) -> Price | None:
    p = endpoint.pricing
    return Price(p.input_per_mtok, p.output_per_mtok) if p is not None else None


def build_tools(agent: AgentSpec) -> ToolRegistry:
    """The agent's Python tools, filtered by ``spec.permissions.allowed_actions``."""
    registry = ToolRegistry()
    permissions = agent.spec.permissions
    allowed = (
        set(permissions.allowed_actions)
        if permissions and permissions.allowed_actions is not None
        else None
    )
    for spec in agent.spec.tools:
        if spec.type not in ("internal", "builtin"):
            # The loader's support check refuses these; reaching here is a bug.
            raise ConfigError(f"tool {spec.name!r}: type {spec.type!r} is not supported yet")
        if allowed is not None and spec.name not in allowed:
            continue  # not permitted: the model is never offered it
        function = getattr(spec, "function", None)
        tool: Tool = resolve_python_tool(spec.name, function)
        declared_parameters = spec.json_schema() if hasattr(spec, "json_schema") else None
        if declared_parameters is not None:
            _check_declared_parameters(spec.name, declared_parameters, tool.schema.parameters)
        if declared_parameters is not None or spec.description:
            tool = DeclaredTool(
                inner=tool,
                declared=ToolSchema(
                    name=spec.name,
                    description=spec.description or tool.schema.description,
                    parameters=declared_parameters or tool.schema.parameters,
                ),
            )
        registry.add(tool)
    return registry


def build_runtime(
    agent: AgentSpec,
    providers: Mapping[str, ProviderEntrySpec] | None = None,
    *,
    make_provider: ProviderFactory = local_provider,
    provider: Provider | None = None,
    where: Mapping[str, str] | None = None,
    routing: ProviderRoutingSpec | None = None,
    breakers: BreakerStore | None = None,
) -> AgentRuntime:
    """A runtime for ``agent``.  Pass ``provider`` to bypass the YAML model block
    (tests with ``ScriptedProvider``)."""
    body = agent.spec
    pattern = pattern_for(body.orchestration.pattern)
    if provider is None:
        provider = build_provider(
            agent,
            providers or {},
            make_provider,
            routing=routing,
            breakers=breakers,
            role=pattern.roles[0],
        )
    return AgentRuntime(
        name=agent.name,
        provider=provider,
        tools=build_tools(agent),
        prompts=PromptSet(
            body.prompts.system, body.prompts.templates, origin=agent.source or agent.name
        ),
        pattern=pattern,
        max_iterations=body.orchestration.max_iterations,
        timeout_s=body.orchestration.timeout_s,
        where=where,
    )


def check_buildable(
    agents: Iterable[AgentSpec], providers: Mapping[str, ProviderEntrySpec] | None = None
) -> None:
    """Raise one ``ConfigError`` listing every agent whose tools, prompts, pattern or
    (given ``providers``) provider clients cannot be built: a ``function:`` that does
    not import, an unknown builtin, provider ``options`` or ``parameters`` a backend
    does not take, ...

    The loader checks what YAML alone can tell; this checks what needs the code,
    before anything is deployed.  Building a provider client opens no connection.
    """
    problems: list[str] = []
    for agent in agents:
        try:
            tools = build_tools(agent)
            _check_permissions(agent, tools)
            PromptSet(agent.spec.prompts.system, agent.spec.prompts.templates, origin=agent.name)
            pattern = pattern_for(agent.spec.orchestration.pattern)
            _check_roles(agent, pattern.roles)
            if providers is not None:
                for endpoint in resolve_models(agent, providers):
                    if endpoint.options.get("mode") != "in_cluster":  # built by Serve
                        local_provider(endpoint)
        except ConfigError as exc:
            problems.append(f"{agent.source or agent.name}: {exc}")
    if problems:
        raise ConfigError("\n".join(problems), problems=problems)


def _check_declared_parameters(
    name: str, declared: dict[str, object], actual: dict[str, object]
) -> None:
    # The YAML schema is what the model sees: it must describe the function's real
    # arguments, or every call would fail validation inside the tool.
    def props(schema: dict[str, object]) -> set[str]:
        value = schema.get("properties")
        return set(value) if isinstance(value, dict) else set()

    def required(schema: dict[str, object]) -> set[str]:
        value = schema.get("required")
        return set(value) if isinstance(value, list) else set()

    extra = sorted(props(declared) - props(actual))
    missing = sorted(required(actual) - props(declared))
    if extra or missing:
        problems = []
        if extra:
            problems.append("the function has no argument " + ", ".join(map(repr, extra)))
        if missing:
            problems.append("it requires " + ", ".join(map(repr, missing)))
        raise ConfigError(
            f"tool {name!r}: its YAML parameters do not match the function: " + "; ".join(problems),
            hint="function arguments: " + (", ".join(sorted(props(actual))) or "(none)"),
        )


def _check_permissions(agent: AgentSpec, tools: ToolRegistry) -> None:
    permissions = agent.spec.permissions
    if permissions is None or permissions.allowed_actions is None:
        return
    declared = {t.name for t in agent.spec.tools}
    unknown = [a for a in permissions.allowed_actions if a not in declared]
    if unknown:
        close = {a: difflib.get_close_matches(a, sorted(declared), n=1) for a in unknown}
        hints = [f"{a!r}: did you mean {c[0]!r}?" for a, c in close.items() if c]
        raise ConfigError(
            "spec.permissions.allowed_actions names "
            + ", ".join(map(repr, unknown))
            + ", which "
            + ("is not a tool" if len(unknown) == 1 else "are not tools")
            + " of this agent",
            hint="; ".join(hints) or "tools: " + (", ".join(sorted(declared)) or "(none)"),
        )


def _check_roles(agent: AgentSpec, pattern_roles: tuple[str, ...]) -> None:
    # A role nobody asks for would be parsed and never used: refuse it by name.
    wanted = {agent.spec.orchestration.role_map.get(r, r) for r in pattern_roles}
    unused = sorted(set(agent.spec.model.roles) - wanted)
    if unused:
        raise ConfigError(
            f"spec.model.roles: role(s) {', '.join(map(repr, unused))} are not used by the "
            f"{agent.spec.orchestration.pattern} pattern",
            hint="it asks for: " + ", ".join(sorted(wanted)) + " (map names with "
            "spec.orchestration.role_map)",
        )
