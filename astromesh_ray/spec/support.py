"""What the YAML contract describes but the runtime does not run yet.

The models parse these features, so the schema documents them; ``check_support``
refuses them at load time with a message naming the field.  ``RULES`` is the one
list of refusals: when a feature lands, delete its rule.

Besides the table, one check across fields that YAML alone can decide: an agent whose
tools are offered on every call of a role that ``capability_match`` routes to
candidates all declaring they lack ``tools`` (that role could never be served).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from astromesh_ray.spec.base import YamlPath


@dataclass(frozen=True)
class Rule:
    """Refuse the value at any of ``paths`` of a ``kind`` document when ``refuse(value)``.

    Paths are dotted YAML keys; ``*`` matches any key or list index.  ``message`` may
    use ``{value}`` (the value found) and ``{key}`` (the last key of the path).
    """

    kind: str
    paths: tuple[str, ...]
    refuse: Callable[[Any], bool]
    message: str
    hint: str


@dataclass(frozen=True)
class SupportIssue:
    """A feature a document uses that the runtime refuses."""

    path: YamlPath
    message: str
    hint: str


def _given(value: Any) -> bool:
    return value is not None


def _nonempty(value: Any) -> bool:
    return bool(value)


def _one_of(*names: str) -> Callable[[Any], bool]:
    return lambda value: value in names


def _glyph(value: Any) -> bool:
    return bool(value == "glyph")


_BLOCKS = (
    "spec.model.primary",
    "spec.model.fallback",
    "spec.model.default.candidates.*",
    "spec.model.roles.*.candidates.*",
)
_VISION = (
    "capability 'vision' is not supported yet: requests carry text only (no image "
    "parts), so none needs it"
)
_VISION_HINT = "remove vision from capabilities; capability_match matches tools and json_schema"
_FOREIGN = ("litellm", "azure_openai", "centinela")
_FOREIGN_HINT = "use openai for any OpenAI-compatible endpoint, or ollama, vllm, llamacpp"
_API_KEY = "inline api keys are not accepted"
_API_KEY_HINT = "put the key in an environment variable and name it in api_key_env"
_MESH_HINT = "astromesh-ray places services with Ray; remove spec.{key}"

RULES: tuple[Rule, ...] = (
    # --- Agent: models --------------------------------------------------------
    Rule(
        "Agent",
        tuple(f"{b}.capabilities.*" for b in _BLOCKS),
        _one_of("vision"),
        _VISION,
        _VISION_HINT,
    ),
    Rule(
        "Agent",
        tuple(f"{b}.provider" for b in _BLOCKS),
        _one_of(*_FOREIGN),
        "provider '{value}' is not supported by astromesh-ray",
        _FOREIGN_HINT,
    ),
    Rule("Agent", tuple(f"{b}.api_key" for b in _BLOCKS), _given, _API_KEY, _API_KEY_HINT),
    # --- Agent: orchestration -------------------------------------------------
    Rule(
        "Agent",
        ("spec.orchestration.pattern",),
        _glyph,
        "the glyph pattern is not supported by astromesh-ray",
        "use react, plan_and_execute, parallel_fan_out, pipeline, supervisor or swarm",
    ),
    Rule(
        "Agent",
        ("spec.orchestration.narrate", "spec.orchestration.max_repairs", "spec.program"),
        _given,
        "{key} is not supported yet",
        "it belongs to the glyph pattern; remove it",
    ),
    # --- Agent: tools ---------------------------------------------------------
    Rule(
        "Agent",
        ("spec.tools.*.context_transform",),
        _given,
        "context_transform is not supported yet",
        "the agent is called with the model's query as is; remove context_transform",
    ),
    Rule(
        "Agent",
        ("spec.tools.*",),
        lambda tool: (
            isinstance(tool, Mapping)
            and tool.get("type") == "agent"
            and tool.get("parameters") is not None
        ),
        "agent tools take one argument, query: parameters cannot be declared",
        "remove parameters from this agent tool",
    ),
    Rule(
        "Agent",
        ("spec.tools.*",),
        lambda tool: (
            isinstance(tool, Mapping)
            and tool.get("type") == "client"
            and tool.get("rate_limit") is not None
        ),
        "a client tool runs in the caller, which the runtime cannot rate-limit",
        "limit it in the client, or remove rate_limit",
    ),
    Rule(
        "Agent",
        ("spec.tools.*.type",),
        _one_of("integration", "api"),
        "tool type '{value}' is not supported by astromesh-ray",
        "reach the service through a webhook tool or an MCP server",
    ),
    # --- Agent: other blocks --------------------------------------------------
    Rule(
        "Agent",
        ("spec.memory.semantic.embedding.deployment.ray_actor_options.num_gpus",),
        _nonempty,
        "embedders on GPUs are not supported yet: the local MiniLM embedder computes on "
        "the CPU (NumPy), and the openai and ollama ones call a server",
        "serve the embedding model on a GPU server (vLLM, Ollama) and name it with "
        "provider openai or ollama; remove num_gpus",
    ),
    Rule(
        "Agent",
        ("spec.knowledge", "spec.prefetch", "spec.observability"),
        _given,
        "{key} is not supported yet",
        "remove spec.{key}",
    ),
    # --- ProviderConfig -------------------------------------------------------
    Rule(
        "ProviderConfig",
        ("spec.providers.*.capabilities.*",),
        _one_of("vision"),
        _VISION,
        _VISION_HINT,
    ),
    Rule("ProviderConfig", ("spec.providers.*.api_key",), _given, _API_KEY, _API_KEY_HINT),
    Rule(
        "ProviderConfig",
        ("spec.providers.*.type",),
        _one_of(*_FOREIGN),
        "provider '{value}' is not supported by astromesh-ray",
        _FOREIGN_HINT,
    ),
    # --- RuntimeConfig --------------------------------------------------------
    Rule(
        "RuntimeConfig",
        ("spec.services", "spec.peers", "spec.mesh"),
        _given,
        "{key} is not supported by astromesh-ray",
        _MESH_HINT,
    ),
    Rule(
        "RuntimeConfig",
        ("spec.defaults.orchestration.pattern",),
        _glyph,
        "the glyph pattern is not supported by astromesh-ray",
        "use react, plan_and_execute, parallel_fan_out, pipeline, supervisor or swarm",
    ),
)


def _expand(data: Any, parts: list[str], path: YamlPath) -> Iterator[tuple[YamlPath, Any]]:
    if not parts:
        yield path, data
        return
    head, rest = parts[0], parts[1:]
    if head == "*":
        if isinstance(data, Mapping):
            for key, value in data.items():
                yield from _expand(value, rest, (*path, key))
        elif isinstance(data, list):
            for index, value in enumerate(data):
                yield from _expand(value, rest, (*path, index))
    elif isinstance(data, Mapping) and head in data:
        yield from _expand(data[head], rest, (*path, head))


# The patterns whose one model role is offered the agent's tools on every call (a
# supervisor's workers are tools too).  Elsewhere tools reach a model on some calls
# only (plan steps naming a tool; pipeline tool stages call no model), so a gap there
# shows per request, as the router's error.
_TOOL_ROLES = {"react": "reasoner", "supervisor": "supervisor"}


def _tool_capability_issues(data: Mapping[str, Any]) -> list[SupportIssue]:
    """``capability_match`` on the role offered the agent's tools, where every
    candidate declares capabilities without ``tools``: no call of that role could be
    served.  A candidate that declares nothing, or takes its capabilities from
    providers.yaml (``providerRef``), is not known to lack tools: not refused here."""
    spec = data.get("spec")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("model"), Mapping):
        return []
    model = spec["model"]
    orchestration = spec.get("orchestration") or {}
    pattern = orchestration.get("pattern") or "react"
    role = _TOOL_ROLES.get(pattern)
    offered = bool(spec.get("tools")) or (
        pattern == "supervisor" and bool(orchestration.get("workers"))
    )
    if role is None or not offered:
        return []
    where: YamlPath
    if model.get("primary") is not None:
        where = ("spec", "model", "routing")
        group = {**(model.get("routing") or {}), "candidates": [model["primary"]]}
        group["candidates"] += [model["fallback"]] if model.get("fallback") else []
    else:
        mapped = (orchestration.get("role_map") or {}).get(role, role)
        roles = model.get("roles") or {}
        where = (
            ("spec", "model", "roles", mapped) if mapped in roles else ("spec", "model", "default")
        )
        group = roles.get(mapped) or model.get("default") or {}
    declared = [b.get("capabilities") for b in group.get("candidates") or ()]
    if group.get("strategy") != "capability_match" or any(
        c is None or "tools" in c for c in declared
    ):
        return []
    return [
        SupportIssue(
            path=(*where, "strategy"),
            message=f"the {role} role routes with capability_match, but none of its "
            f"candidates declares tools, and the {pattern} pattern offers this agent's "
            "tools on every call of that role",
            hint="add tools to the capabilities of a candidate that calls tools natively, "
            "or add such a candidate",
        )
    ]


def check_support_data(kind: str, data: Mapping[str, Any]) -> list[SupportIssue]:
    """The refusals for a document of ``kind`` given as plain data (YAML keys)."""
    issues: list[SupportIssue] = _tool_capability_issues(data) if kind == "Agent" else []
    for rule in RULES:
        if rule.kind != kind:
            continue
        for pattern in rule.paths:
            for path, value in _expand(data, pattern.split("."), ()):
                if rule.refuse(value):
                    key = next((p for p in reversed(path) if isinstance(p, str)), "")
                    issues.append(
                        SupportIssue(
                            path=path,
                            message=rule.message.format(value=value, key=key),
                            hint=rule.hint.format(value=value, key=key),
                        )
                    )
    return issues


def check_support(document: BaseModel) -> list[SupportIssue]:
    """What ``document`` (an AgentSpec, ProviderConfigSpec or RuntimeConfigSpec) uses
    that the runtime refuses."""
    data = document.model_dump(by_alias=True)
    return check_support_data(str(data.get("kind")), data)
