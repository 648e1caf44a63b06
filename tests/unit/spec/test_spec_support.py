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
        {"model": {"primary": BLOCK, "routing": {"strategy": "capability_match"}}},
        "spec.model.routing.strategy",
        "strategy 'capability_match' is not supported",
    ),
    (
        {"model": {"default": {"candidates": [BLOCK], "strategy": "capability_match"}}},
        "spec.model.default.strategy",
        "strategy 'capability_match' is not supported",
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
