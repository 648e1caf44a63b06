"""The support check refuses, by name, what the runtime does not run yet."""

from __future__ import annotations

from typing import Any

import pytest
from spec_helpers import AGENT, WriteYaml, issues_of

from astromesh_ray.spec import RULES, AgentSpec, check_support, load_document

BLOCK = {"provider": "ollama", "model": "m"}


def agent(model: dict[str, Any] | None = None, **spec: Any) -> AgentSpec:
    body = {"model": model or {"primary": BLOCK}, **spec}
    return AgentSpec.model_validate(
        {"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": "ab"}, "spec": body}
    )


CASES: list[tuple[dict[str, Any], str, str]] = [
    (
        {"model": {"primary": {**BLOCK, "capabilities": ["tools", "vision"]}}},
        "spec.model.primary.capabilities[1]",
        "capability 'vision' is not supported yet",
    ),
    (
        {"model": {"default": {"candidates": [{**BLOCK, "capabilities": ["vision"]}]}}},
        "spec.model.default.candidates[0].capabilities[0]",
        "requests carry text only",
    ),
    (
        {"model": {"primary": {"provider": "azure_openai", "model": "m"}}},
        "spec.model.primary.provider",
        "not supported by astromesh-ray",
    ),
    (
        {"model": {"primary": BLOCK, "fallback": {"provider": "centinela", "model": "m"}}},
        "spec.model.fallback.provider",
        "not supported by astromesh-ray",
    ),
    (
        {"model": {"primary": {**BLOCK, "api_key": "sk-123"}}},
        "spec.model.primary.api_key",
        "api_key_env",
    ),
    ({"orchestration": {"pattern": "glyph"}}, "spec.orchestration.pattern", "glyph pattern"),
    ({"orchestration": {"narrate": True}}, "spec.orchestration.narrate", "glyph"),
    ({"orchestration": {"max_repairs": 2}}, "spec.orchestration.max_repairs", "glyph"),
    ({"program": {"steps": []}}, "spec.program", "glyph"),
    (
        {"tools": [{"name": "t", "type": "agent", "agent": "other", "context_transform": "x"}]},
        "spec.tools[0].context_transform",
        "context_transform is not supported yet",
    ),
    (
        {
            "tools": [
                {
                    "name": "t",
                    "type": "agent",
                    "agent": "o",
                    "parameters": {"q": {"type": "string"}},
                }
            ]
        },
        "spec.tools[0]",
        "agent tools take one argument, query",
    ),
    (
        {"tools": [{"name": "t", "type": "integration", "connection": "crm"}]},
        "spec.tools[0].type",
        "not supported by astromesh-ray",
    ),
    (
        {"tools": [{"name": "t", "type": "api", "operations": []}]},
        "spec.tools[0].type",
        "not supported by astromesh-ray",
    ),
    (
        {
            "memory": {
                "semantic": {
                    "backend": "faiss",
                    "embedding": {"deployment": {"ray_actor_options": {"num_gpus": 1}}},
                }
            }
        },
        "spec.memory.semantic.embedding.deployment.ray_actor_options.num_gpus",
        "embedders on GPUs are not supported yet",
    ),
    ({"knowledge": {"sources": []}}, "spec.knowledge", "knowledge is not supported"),
    ({"prefetch": {"x": 1}}, "spec.prefetch", "prefetch is not supported"),
    ({"observability": {"trace": True}}, "spec.observability", "observability"),
]


@pytest.mark.parametrize(("spec", "path", "words"), CASES)
def test_refused_feature(spec: dict[str, Any], path: str, words: str) -> None:
    from astromesh_ray.spec.base import render_path

    issues = check_support(agent(**spec))
    rendered = [(render_path(i.path), f"{i.message} ({i.hint})") for i in issues]
    assert any(p == path and words in text for p, text in rendered), rendered


def test_supported_agent_has_no_issues() -> None:
    spec = agent(
        tools=[
            {"name": "t", "function": "pkg.mod:fn", "confirm": True},
            {"name": "b", "type": "builtin", "rate_limit": {"max_calls": 2}},
            {"name": "c", "type": "client", "requires_approval": False},
        ],
        permissions={"allowed_actions": ["t"]},
        orchestration={"pattern": "react", "max_iterations": 3},
        deployment={"num_replicas": 1},
        guardrails={
            "input": [{"type": "pii_detection"}, {"type": "max_length", "max_chars": 10}],
            "output": [
                {"type": "topic_filter", "blocked_topics": ["x"], "method": "keywords"},
                {"type": "cost_limit", "max_tokens_per_turn": 5},
            ],
        },
    )
    assert check_support(spec) == []


@pytest.mark.parametrize(
    "spec",
    [
        {"tools": [{"name": "t", "type": "builtin", "config": {"k": 1}}]},
        {"permissions": {"filesystem": {"read": ["/tmp"], "write": ["/tmp/out"]}}},
        {"permissions": {"execution": {"dry_run": True}}},
        {"permissions": {"network": {"allowed": ["x"], "allow_private": ["127.0.0.1/32"]}}},
        {"tools": [{"name": "t", "type": "webhook", "webhook": {"url": "http://x"}}]},
    ],
)
def test_tool_permissions_and_builtin_config_load(spec: dict[str, Any]) -> None:
    # Checked where the tools are built (unknown config keys are a ConfigError there).
    assert check_support(agent(**spec)) == []


def test_inline_api_key_message(write: WriteYaml) -> None:
    text = AGENT.format(name="ab") + "      api_key: sk-secret\n"
    issues = issues_of(lambda: load_document(write("a.agent.yaml", text)))
    assert [(i["path"], i["line"]) for i in issues] == [("spec.model.primary.api_key", 11)]
    assert issues[0]["message"] == "inline api keys are not accepted"
    assert issues[0]["hint"] == (
        "put the key in an environment variable and name it in api_key_env"
    )


def test_rag_pipeline_kind_and_rag_tools_are_accepted(write: WriteYaml) -> None:
    path = write("p.yaml", "apiVersion: astromesh/v1\nkind: RAGPipeline\nmetadata: {name: p1}\n")
    assert load_document(path).kind == "RAGPipeline"
    tools = [{"name": "t", "type": "rag", "rag": {"collection": "c"}}]
    assert check_support(agent(tools=tools)) == []


def test_runtime_mesh_keys_are_refused(write: WriteYaml) -> None:
    path = write(
        "runtime.yaml",
        """
        apiVersion: astromesh/v1
        kind: RuntimeConfig
        metadata: {name: default}
        spec:
          services: {api: true}
          peers: [{name: b, url: http://b}]
          mesh: {enabled: true}
          defaults:
            orchestration: {pattern: glyph}
        """,
    )
    issues = issues_of(lambda: load_document(path))
    assert [(i["path"], i["line"]) for i in issues] == [
        ("spec.services", 5),
        ("spec.peers", 6),
        ("spec.mesh", 7),
        ("spec.defaults.orchestration.pattern", 9),
    ]
    assert issues[2]["hint"] == "astromesh-ray places services with Ray; remove spec.mesh"


def test_provider_entry_api_key_is_refused(write: WriteYaml) -> None:
    path = write(
        "providers.yaml",
        """
        apiVersion: astromesh/v1
        kind: ProviderConfig
        metadata: {name: p1}
        spec:
          providers:
            x: {type: litellm, api_key: sk, models: [m]}
        """,
    )
    issues = issues_of(lambda: load_document(path))
    assert sorted(i["message"] for i in issues) == [
        "inline api keys are not accepted",
        "provider 'litellm' is not supported by astromesh-ray",
    ]


def test_rules_table_is_one_flat_list() -> None:
    kinds = {rule.kind for rule in RULES}
    assert kinds == {"Agent", "ProviderConfig", "RuntimeConfig"}
    assert all(rule.paths and rule.message and rule.hint for rule in RULES)


CAPABLE = {**BLOCK, "capabilities": ["tools"]}
TOOLLESS = {**BLOCK, "capabilities": ["json_schema"]}
TOOLS = [{"name": "t", "type": "builtin"}]
LEGACY = {"primary": TOOLLESS, "fallback": {**BLOCK, "capabilities": []}}


@pytest.mark.parametrize(
    "strategy", [{"routing": {"strategy": "capability_match"}}, {"routing": {}}, {}]
)
def test_capability_match_is_supported_in_the_legacy_shape(strategy: dict[str, Any]) -> None:
    spec = agent({"primary": CAPABLE, "fallback": BLOCK, **strategy}, tools=TOOLS)
    assert check_support(spec) == []


def test_capability_match_and_capabilities_load_in_the_role_shape() -> None:
    model = {
        "default": {"candidates": [CAPABLE, BLOCK], "strategy": "capability_match"},
        "roles": {"reasoner": {"candidates": [TOOLLESS, CAPABLE], "strategy": "capability_match"}},
    }
    spec = agent(model, tools=TOOLS)
    assert check_support(spec) == []
    reasoner = spec.spec.model.roles["reasoner"].candidates
    assert [c.capabilities for c in reasoner] == [["json_schema"], ["tools"]]


def test_unknown_capability_is_a_validation_error(write: WriteYaml) -> None:
    text = AGENT.format(name="ab") + "      capabilities: [tools, telepathy]\n"
    issues = issues_of(lambda: load_document(write("a.agent.yaml", text)))
    assert [(i["path"], i["line"]) for i in issues] == [("spec.model.primary.capabilities[1]", 11)]
    assert "json_schema" in issues[0]["message"]  # the valid values are listed


def test_tools_no_candidate_can_call_are_refused_at_the_strategy_line(write: WriteYaml) -> None:
    text = (
        AGENT.format(name="ab")
        + "      capabilities: [json_schema]\n"
        + "    fallback: {provider: ollama, model: m, capabilities: []}\n"
        + "    routing:\n      strategy: capability_match\n"
        + "  tools:\n    - {name: t, type: builtin}\n"
    )
    issues = issues_of(lambda: load_document(write("a.agent.yaml", text)))
    assert [(i["path"], i["line"]) for i in issues] == [("spec.model.routing.strategy", 14)]
    assert "none of its candidates declares tools" in issues[0]["message"]
    assert "react pattern offers" in issues[0]["message"]
    assert issues[0]["hint"].startswith("add tools to the capabilities")


@pytest.mark.parametrize(
    ("model", "path"),
    [
        ({**LEGACY, "routing": {"strategy": "capability_match"}}, "spec.model.routing.strategy"),
        (
            {"default": {"candidates": [TOOLLESS], "strategy": "capability_match"}},
            "spec.model.default.strategy",
        ),
        (
            {
                "default": {"candidates": [CAPABLE]},
                "roles": {"reasoner": {"candidates": [TOOLLESS], "strategy": "capability_match"}},
            },
            "spec.model.roles.reasoner.strategy",
        ),
    ],
)
def test_tool_role_without_tools_is_refused(model: dict[str, Any], path: str) -> None:
    from astromesh_ray.spec.base import render_path

    issues = check_support(agent(model, tools=TOOLS))
    assert [render_path(i.path) for i in issues] == [path]


def test_role_map_and_supervisor_workers_are_followed() -> None:
    from astromesh_ray.spec.base import render_path

    model = {
        "default": {"candidates": [CAPABLE]},
        "roles": {"boss": {"candidates": [TOOLLESS], "strategy": "capability_match"}},
    }
    orchestration = {"pattern": "supervisor", "workers": ["w1"], "role_map": {"supervisor": "boss"}}
    issues = check_support(agent(model, orchestration=orchestration))
    assert [render_path(i.path) for i in issues] == ["spec.model.roles.boss.strategy"]
    assert "supervisor pattern" in issues[0].message


@pytest.mark.parametrize(
    ("model", "spec"),
    [
        # Another strategy: capabilities are not consulted.
        ({**LEGACY, "routing": {"strategy": "round_robin"}}, {"tools": TOOLS}),
        # No tools are offered.
        ({**LEGACY, "routing": {"strategy": "capability_match"}}, {}),
        # One candidate declares nothing: it is not known to lack tools.
        (
            {"primary": TOOLLESS, "fallback": BLOCK, "routing": {"strategy": "capability_match"}},
            {"tools": TOOLS},
        ),
        # Capabilities from providers.yaml: not known to the agent file.
        (
            {
                "primary": TOOLLESS,
                "fallback": {"providerRef": "p"},
                "routing": {"strategy": "capability_match"},
            },
            {"tools": TOOLS},
        ),
        # A pipeline calls its tool stages itself, with no model.
        (
            {"default": {"candidates": [TOOLLESS], "strategy": "capability_match"}},
            {
                "tools": TOOLS,
                "orchestration": {"pattern": "pipeline", "stages": [{"name": "s", "tool": "t"}]},
            },
        ),
        # The role offered the tools routes elsewhere (the default keeps its capable one).
        (
            {
                "default": {"candidates": [CAPABLE], "strategy": "capability_match"},
                "roles": {"judge": {"candidates": [TOOLLESS], "strategy": "capability_match"}},
            },
            {"tools": TOOLS},
        ),
    ],
)
def test_capability_gaps_the_yaml_cannot_decide_are_left_to_the_router(
    model: dict[str, Any], spec: dict[str, Any]
) -> None:
    assert check_support(agent(model, **spec)) == []


def test_provider_entry_capabilities_and_default_strategy(write: WriteYaml) -> None:
    good = write(
        "providers.yaml",
        """
        apiVersion: astromesh/v1
        kind: ProviderConfig
        metadata: {name: p1}
        spec:
          providers:
            x: {type: ollama, models: [m], capabilities: [tools, json_schema]}
          routing: {default_strategy: capability_match}
        """,
    )
    document = load_document(good)
    assert check_support(document) == []
    bad = write(
        "bad/providers.yaml",
        """
        apiVersion: astromesh/v1
        kind: ProviderConfig
        metadata: {name: p1}
        spec:
          providers:
            x: {type: ollama, models: [m], capabilities: [vision]}
        """,
    )
    issues = issues_of(lambda: load_document(bad))
    assert [(i["path"], i["line"]) for i in issues] == [("spec.providers.x.capabilities[0]", 6)]
    assert "'vision' is not supported yet" in issues[0]["message"]
