"""From an ``AgentSpec`` to a ready ``AgentRuntime``.

``make_provider`` decides what a provider *is*: ``local_provider`` builds an HTTP
client in this process (``astromesh run``, unit tests); the serve layer passes a
function returning handles to provider deployments.  Nothing else differs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from astromesh_ray.core.messages import ToolSchema
from astromesh_ray.core.patterns import pattern_for
from astromesh_ray.core.prompts import PromptSet
from astromesh_ray.core.providers.base import Provider, provider_class
from astromesh_ray.core.providers.fallback import FallbackProvider
from astromesh_ray.core.runtime import AgentRuntime
from astromesh_ray.core.tools.base import Tool
from astromesh_ray.core.tools.python import resolve_python_tool
from astromesh_ray.core.tools.registry import DeclaredTool, ToolRegistry
from astromesh_ray.errors import ConfigError
from astromesh_ray.spec import AgentSpec, ModelEndpoint, ProviderEntrySpec, resolve_models

ProviderFactory = Callable[[ModelEndpoint], Provider]


def local_provider(endpoint: ModelEndpoint) -> Provider:
    """A provider client living in this process."""
    cls = provider_class(endpoint.provider)
    provider: Provider = cls(
        name=f"{endpoint.provider}:{endpoint.model}",
        kind=endpoint.provider,
        model=endpoint.model,
        endpoint=endpoint.endpoint,
        api_key_env=endpoint.api_key_env,
        parameters=dict(endpoint.parameters),
        timeout_s=endpoint.timeout_s or 60.0,
        options=dict(endpoint.options),
    )
    return provider


def build_provider(
    agent: AgentSpec,
    providers: Mapping[str, ProviderEntrySpec],
    make_provider: ProviderFactory = local_provider,
) -> Provider:
    """The agent's model: one provider, or its candidates in fallback order."""
    built = [make_provider(ep) for ep in resolve_models(agent, providers)]
    return built[0] if len(built) == 1 else FallbackProvider(built)


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
) -> AgentRuntime:
    """A runtime for ``agent``.  Pass ``provider`` to bypass the YAML model block
    (tests with ``ScriptedProvider``)."""
    body = agent.spec
    return AgentRuntime(
        name=agent.name,
        provider=provider or build_provider(agent, providers or {}, make_provider),
        tools=build_tools(agent),
        prompts=PromptSet(
            body.prompts.system, body.prompts.templates, origin=agent.source or agent.name
        ),
        pattern=pattern_for(body.orchestration.pattern),
        max_iterations=body.orchestration.max_iterations,
        timeout_s=body.orchestration.timeout_s,
        where=where,
    )


def check_buildable(agents: Iterable[AgentSpec]) -> None:
    """Raise one ``ConfigError`` listing every agent whose tools, prompts or pattern
    cannot be built (a ``function:`` that does not import, an unknown builtin, ...).

    The loader checks what YAML alone can tell; this checks what needs the code,
    before anything is deployed.
    """
    problems: list[str] = []
    for agent in agents:
        try:
            build_tools(agent)
            PromptSet(agent.spec.prompts.system, agent.spec.prompts.templates, origin=agent.name)
            pattern_for(agent.spec.orchestration.pattern)
        except ConfigError as exc:
            problems.append(f"{agent.source or agent.name}: {exc}")
    if problems:
        raise ConfigError("\n".join(problems), problems=problems)
