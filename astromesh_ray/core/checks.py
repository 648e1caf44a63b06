"""Build checks: what the code can tell about a configuration before anything is
deployed (``check_buildable``), beyond what the loader's YAML checks see."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any, cast

from astromesh_ray.core.build import (
    agent_endpoints,
    can_pause,
    model_roles,
    peer_names,
    prepared,
    supervisor_workers,
)
from astromesh_ray.core.memory.factory import check_backends
from astromesh_ray.core.patterns import PAUSING_PATTERNS, pattern_for
from astromesh_ray.core.peers import Peer, check_peer_graph
from astromesh_ray.core.prompts import PromptSet
from astromesh_ray.core.providers.base import local_provider
from astromesh_ray.core.tools.builders import build_toolsets
from astromesh_ray.core.tools.env import ToolEnv
from astromesh_ray.core.tools.services import local_tool_services
from astromesh_ray.errors import ConfigError
from astromesh_ray.spec import AgentSpec, ProviderEntrySpec
from astromesh_ray.spec.guardrails import PiiDetectionSpec
from astromesh_ray.spec.tools import AgentToolSpec, McpToolSpec

__all__ = ["check_buildable"]


def check_buildable(
    agents: Iterable[AgentSpec],
    providers: Mapping[str, ProviderEntrySpec] | None = None,
    *,
    known: Mapping[str, AgentSpec] | None = None,
    rag: Mapping[str, Any] | None = None,
) -> None:
    """Raise one ``ConfigError`` listing every agent whose tools, prompts, pattern,
    peers or provider clients cannot be built (without ``providers``: the model blocks
    written out in the agent, not ``providerRef`` ones): a ``function:``
    that does not import, an unknown builtin, an agent tool naming an agent that is
    not loaded or closing a cycle, provider ``options`` or ``parameters`` a backend
    does not take, ...

    ``known`` is every agent of the configuration (default: ``agents``): agents may
    only call those.  The loader checks what YAML alone can tell; this checks what
    needs the code, before anything is deployed.  Building a provider client opens
    no connection.
    """
    agents = list(agents)
    known = {a.name: a for a in agents} if known is None else dict(known)
    problems: list[str] = []
    agents = [prepared(a) for a in agents]
    for agent in agents:
        try:
            _check_pattern(agent)
            build_toolsets(
                ToolEnv(
                    agent=agent,
                    services=_CHECK_SERVICES,
                    peers={name: _NO_PEER for name in peer_names(agent)},
                    rag=rag or {},
                )
            )
            _check_permissions(agent)
            PromptSet(agent.spec.prompts.system, agent.spec.prompts.templates, origin=agent.name)
            pattern = pattern_for(agent.spec.orchestration, supervisor_workers(agent))
            _check_roles(agent, model_roles(agent, pattern.roles))
            check_backends(agent.spec.memory)
            _check_guardrails(agent)
            for endpoint in agent_endpoints(agent, providers):
                if endpoint.options.get("mode") != "in_cluster":  # built by Serve
                    local_provider(endpoint)
        except ConfigError as exc:
            problems.append(f"{agent.source or agent.name}: {exc}")
    calls = {name: peer_names(spec) for name, spec in known.items()}
    calls.update({a.name: peer_names(a) for a in agents})
    try:
        check_peer_graph(calls, set(known))
    except ConfigError as exc:
        problems.extend(exc.details.get("problems") or [exc.message])
    for agent in agents:
        for member in agent.spec.orchestration.members or ():
            member_pattern = known[member].spec.orchestration.pattern if member in known else None
            if member_pattern not in (None, "react", "supervisor"):
                problems.append(
                    f"{agent.source or agent.name}: swarm member {member!r} runs the "
                    f"{member_pattern} pattern: a member's turn must be one model holding "
                    "the conversation (react or supervisor), which can call the handoff tools"
                )
        pausing = sorted(p for p in peer_names(agent) if p in known and can_pause(known[p]))
        if pausing:
            problems.append(
                f"{agent.source or agent.name}: agent {agent.name!r} calls agent(s) "
                f"{', '.join(map(repr, pausing))}, which have client tools or tools that "
                "require approval: a sub-run cannot pause for a caller (hint: give "
                f"{agent.name!r} those tools instead)"
            )
    if problems:
        raise ConfigError("\n".join(problems), problems=problems)


def _check_guardrails(agent: AgentSpec) -> None:
    """PII guardrails name entity types the detector has, and an NER model that is
    installed (the YAML checks cannot know either)."""
    guardrails = agent.spec.guardrails
    if guardrails is None:
        return
    for direction, specs in (("input", guardrails.input), ("output", guardrails.output)):
        for i, spec in enumerate(specs):
            if not isinstance(spec, PiiDetectionSpec):
                continue
            from astromesh_ray.core.guardrails.pii import pii_detector

            try:
                pii_detector(spec.entities, spec.score_threshold, spec.ner_model)
            except ValueError as exc:
                raise ConfigError(f"spec.guardrails.{direction}[{i}]: {exc}") from None


class _Unreachable:
    """A stand-in peer for build checks: it is never called."""

    name = "(check)"

    async def run(self, request: object) -> object:  # pragma: no cover - never called
        raise AssertionError("check_buildable does not run agents")

    def stream(self, request: object) -> object:  # pragma: no cover - never called
        raise AssertionError("check_buildable does not run agents")


_NO_PEER = cast(Peer, _Unreachable())
# Building toolsets starts nothing: check_buildable's services are never used.
_CHECK_SERVICES = local_tool_services()


def _check_permissions(agent: AgentSpec) -> None:
    """Refuse a name in ``allowed_actions`` that looks like a misspelt tool name.

    Other names that are not tool entries are accepted: an MCP server's tools are
    only known once it is reached, and agent files written for the original
    Astromesh grant actions they do not declare (``sales-qualifier``'s
    ``search_crm``).  Granting a tool that does not exist gives nothing."""
    permissions = agent.spec.permissions
    if permissions is None or permissions.allowed_actions is None:
        return
    declared = {t.name for t in agent.spec.tools}
    unknown = [a for a in permissions.allowed_actions if a not in declared]
    close = {a: difflib.get_close_matches(a, sorted(declared), n=1) for a in unknown}
    typos = {a: c[0] for a, c in close.items() if c}
    if typos:
        raise ConfigError(
            "spec.permissions.allowed_actions names "
            + ", ".join(map(repr, typos))
            + ", which "
            + ("is not a tool" if len(typos) == 1 else "are not tools")
            + " of this agent",
            hint="; ".join(f"{a!r}: did you mean {c!r}?" for a, c in typos.items()),
        )


def _check_roles(agent: AgentSpec, pattern_roles: tuple[str, ...]) -> None:
    # A role nobody asks for, or a role_map entry that maps nothing or to nothing,
    # would be parsed and never used: refuse it by name.
    pattern = agent.spec.orchestration.pattern
    role_map = agent.spec.orchestration.role_map
    declared = set(agent.spec.model.roles)
    for role, target in sorted(role_map.items()):
        if role not in pattern_roles:
            raise ConfigError(
                f"spec.orchestration.role_map: {role!r} is not a role of the {pattern} pattern",
                hint="its roles: " + ", ".join(pattern_roles),
            )
        if target not in declared:
            raise ConfigError(
                f"spec.orchestration.role_map: {role!r} maps to {target!r}, which "
                "spec.model.roles does not declare",
                hint="declared roles: "
                + (
                    ", ".join(sorted(declared))
                    or "(none: use the "
                    "default/roles shape of spec.model to give roles their own models)"
                ),
            )
    wanted = {role_map.get(r, r) for r in pattern_roles}
    unused = sorted(set(agent.spec.model.roles) - wanted)
    if unused:
        raise ConfigError(
            f"spec.model.roles: role(s) {', '.join(map(repr, unused))} are not used by the "
            f"{agent.spec.orchestration.pattern} pattern",
            hint="it asks for: " + ", ".join(sorted(wanted)) + " (map names with "
            "spec.orchestration.role_map)",
        )


def _check_pattern(agent: AgentSpec) -> None:
    """What the pattern needs of the agent's tools: only react and supervisor turns
    can pause for the caller; a pipeline tool stage names a tool of the agent."""
    orchestration = agent.spec.orchestration
    if can_pause(agent) and orchestration.pattern not in PAUSING_PATTERNS:
        raise ConfigError(
            f"the {orchestration.pattern} pattern runs tools inside tasks or sub-runs, "
            "which cannot pause for the caller: client tools and tools that require "
            "approval need the react or supervisor pattern",
            hint="remove requires_approval / the client tools, or use react or supervisor",
        )
    declared = {t.name for t in agent.spec.tools}
    if orchestration.pattern == "supervisor":
        agents = {t.name for t in agent.spec.tools if isinstance(t, AgentToolSpec)}
        clash = sorted(set(orchestration.workers or ()) & (declared - agents))
        if clash:
            raise ConfigError(
                f"spec.orchestration.workers: {', '.join(map(repr, clash))} is also the name "
                "of another tool of this agent, so the worker could not be offered",
                hint="rename that tool",
            )
    dynamic = any(isinstance(t, McpToolSpec) for t in agent.spec.tools)
    for stage in orchestration.stages or ():
        if stage.tool is not None and stage.tool not in declared and not dynamic:
            raise ConfigError(
                f"spec.orchestration.stages: stage {stage.name!r} calls tool {stage.tool!r}, "
                "which is not a tool of this agent",
                hint="declare it in spec.tools; tools: "
                + (", ".join(sorted(declared)) or "(none)"),
            )
