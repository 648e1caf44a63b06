"""The models: both model shapes, aliases, tool parameters, deployments."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from spec_helpers import AGENT, WriteYaml, issues_of

from astromesh_ray.spec import (
    AgentSpec,
    DeploymentSpec,
    InternalToolSpec,
    ModelBlockSpec,
    ModelSpec,
    OrchestrationSpec,
    load_document,
)
from astromesh_ray.spec.tools import McpToolSpec, WebhookToolSpec


def agent(**spec: Any) -> AgentSpec:
    body = {"model": {"primary": {"provider": "ollama", "model": "m"}}, **spec}
    return AgentSpec.model_validate(
        {"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": "ab"}, "spec": body}
    )


def test_legacy_shape_blocks_in_fallback_order() -> None:
    model = ModelSpec.model_validate(
        {"primary": {"provider": "ollama", "model": "a"}, "fallback": {"model": "b"}}
    )
    assert [b.model for b in model.blocks()] == ["a", "b"]
    assert model.fallback is not None
    assert model.fallback.provider == "openai_compat"  # the default when nothing is named


def test_role_shape_blocks_are_default_candidates() -> None:
    model = ModelSpec.model_validate(
        {"default": {"candidates": [{"source": "vllm", "model": "a"}, {"model": "b"}]}}
    )
    assert [(b.provider, b.model) for b in model.blocks()] == [
        ("vllm", "a"),
        ("openai_compat", "b"),
    ]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({}, "needs primary"),
        (
            {"primary": {"model": "a"}, "default": {"candidates": [{"model": "b"}]}},
            "not both",
        ),
        ({"default": {"candidates": [{"model": "b"}]}, "fallback": {"model": "c"}}, "fallback"),
        ({"primary": {"model": "a"}, "roles": {"x": {"candidates": [{"model": "b"}]}}}, "roles"),
        ({"default": {"candidates": []}}, "at least 1"),
    ],
)
def test_exactly_one_model_shape(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        ModelSpec.model_validate(data)
    assert fragment in str(info.value)


def test_source_is_an_alias_of_provider_but_not_both(write: WriteYaml) -> None:
    assert ModelBlockSpec.model_validate({"source": "ollama", "model": "m"}).provider == "ollama"
    text = AGENT.format(name="ab").replace(
        "      provider: ollama\n", "      provider: ollama\n      source: ollama\n"
    )
    issues = issues_of(lambda: load_document(write("a.agent.yaml", text)))
    assert [(i["path"], i["line"]) for i in issues] == [("spec.model.primary.source", 9)]
    assert "not both" in issues[0]["message"]


def test_model_block_needs_a_model_or_a_ref() -> None:
    with pytest.raises(ValidationError, match="needs model"):
        ModelBlockSpec.model_validate({"provider": "ollama"})
    ref = ModelBlockSpec.model_validate({"providerRef": "local"})
    assert (ref.provider_ref, ref.provider, ref.model) == ("local", None, None)


def test_temperature_and_max_tokens_shorthand_merge_into_parameters() -> None:
    block = ModelBlockSpec.model_validate(
        {"model": "m", "temperature": 0.5, "max_tokens": 10, "parameters": {"max_tokens": 99}}
    )
    assert block.parameters == {"temperature": 0.5, "max_tokens": 99}
    with pytest.raises(ValidationError):
        ModelBlockSpec.model_validate({"model": "m", "temperature": "hot"})


def test_model_block_timeout_is_seconds_and_positive() -> None:
    assert ModelBlockSpec.model_validate({"model": "m", "timeout": 2.5}).timeout_s == 2.5
    with pytest.raises(ValidationError):
        ModelBlockSpec.model_validate({"model": "m", "timeout": 0})


def test_timeout_is_the_deprecated_name_of_timeout_seconds(write: WriteYaml) -> None:
    assert OrchestrationSpec.model_validate({"timeout": 30}).timeout_s == 30
    assert OrchestrationSpec.model_validate({"timeout_seconds": 40}).timeout_s == 40
    assert OrchestrationSpec().timeout_s == 120
    text = AGENT.format(name="ab") + "  orchestration:\n    timeout_seconds: 3\n    timeout: 4\n"
    issues = issues_of(lambda: load_document(write("a.agent.yaml", text)))
    assert [(i["path"], i["line"]) for i in issues] == [("spec.orchestration.timeout", 13)]


def test_orchestration_bounds() -> None:
    for bad in ({"max_iterations": 0}, {"max_iterations": 1001}, {"timeout_seconds": 0}):
        with pytest.raises(ValidationError):
            OrchestrationSpec.model_validate(bad)


def test_version_number_is_coerced_to_text() -> None:
    spec = agent()
    assert spec.metadata.version == "0.1.0"
    data = spec.model_dump(by_alias=True)
    data["metadata"]["version"] = 1.5
    assert AgentSpec.model_validate(data).metadata.version == "1.5"


def test_models_are_frozen_and_reject_unknown_keys() -> None:
    spec = agent()
    with pytest.raises(ValidationError):
        spec.metadata.name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="Extra inputs"):
        OrchestrationSpec.model_validate({"patern": "react"})


def test_source_is_not_validated_and_travels_with_copies() -> None:
    spec = agent()
    assert spec.source is None
    located = spec.with_source("x.agent.yaml")
    assert located.source == "x.agent.yaml"
    assert spec.source is None
    assert located.model_copy().source == "x.agent.yaml"
    assert located.name == "ab"


def test_tool_type_defaults_to_internal_and_is_discriminated() -> None:
    spec = agent(
        tools=[
            {"name": "a", "function": "pkg.mod:fn"},
            {"name": "b", "type": "mcp", "mcp": {"transport": "stdio", "command": "srv"}},
            {"name": "c", "type": "webhook", "webhook": {"url": "http://h", "timeout": 3}},
        ]
    )
    first, second, third = spec.spec.tools
    assert isinstance(first, InternalToolSpec)
    assert first.function == "pkg.mod:fn"
    assert isinstance(second, McpToolSpec)
    assert second.mcp.command == "srv"
    assert isinstance(third, WebhookToolSpec)
    assert (third.webhook.method, third.webhook.timeout_s) == ("POST", 3)


@pytest.mark.parametrize(
    "tool",
    [
        {"name": "bad name"},
        {"name": "a", "function": "no_colon"},
        {"name": "a", "type": "mcp", "mcp": {"transport": "http"}},
        {"name": "a", "type": "rag", "rag": {"top_k": 3}},
        {"name": "a", "type": "rag", "rag": {"collection": "c", "pipeline": "p"}},
        {"name": "a", "type": "agent"},
    ],
)
def test_invalid_tools(tool: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        agent(tools=[tool])


def test_repeated_tool_names_are_an_error(write: WriteYaml) -> None:
    text = AGENT.format(name="ab") + "  tools:\n    - name: t\n    - name: t\n"
    issues = issues_of(lambda: load_document(write("a.agent.yaml", text)))
    assert [(i["path"], i["line"]) for i in issues] == [("spec.tools[1].name", 13)]


def test_parameters_shorthand_normalises_to_json_schema() -> None:
    tool = InternalToolSpec.model_validate(
        {
            "name": "lookup",
            "parameters": {
                "company": {"type": "string", "description": "Name", "required": True},
                "limit": {"type": "integer", "default": 5},
                "mode": {"type": "string", "enum": ["fast", "deep"]},
            },
        }
    )
    assert tool.json_schema() == {
        "type": "object",
        "properties": {
            "company": {"type": "string", "description": "Name"},
            "limit": {"type": "integer", "default": 5},
            "mode": {"type": "string", "enum": ["fast", "deep"]},
        },
        "required": ["company"],
    }


def test_parameters_full_json_schema_is_kept_and_checked() -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    tool = InternalToolSpec.model_validate({"name": "s", "parameters": schema})
    assert tool.json_schema() == schema
    with pytest.raises(ValidationError, match="not a valid JSON Schema"):
        InternalToolSpec.model_validate(
            {"name": "s", "parameters": {"type": "object", "properties": {"q": {"type": 5}}}}
        )
    assert InternalToolSpec.model_validate({"name": "s"}).json_schema() is None


def test_parameters_shorthand_entries_are_strict() -> None:
    with pytest.raises(ValidationError, match="requried"):
        InternalToolSpec.model_validate(
            {"name": "s", "parameters": {"q": {"type": "string", "requried": True}}}
        )
    with pytest.raises(ValidationError):
        InternalToolSpec.model_validate({"name": "s", "parameters": {"q": {"type": "strng"}}})


def test_prompt_templates_must_parse(write: WriteYaml) -> None:
    text = AGENT.format(name="ab") + (
        "  prompts:\n    system: hi {% include 'x' %}\n    templates:\n      x: '{% if %}'\n"
    )
    issues = issues_of(lambda: load_document(write("a.agent.yaml", text)))
    assert [(i["path"], i["line"]) for i in issues] == [("spec.prompts.templates.x", 14)]
    assert "template syntax error" in issues[0]["message"]


def test_deployment_to_serve_options() -> None:
    deployment = DeploymentSpec.model_validate(
        {
            "max_ongoing_requests": 32,
            "autoscaling_config": {"min_replicas": 1, "max_replicas": 4},
            "ray_actor_options": {"num_cpus": 0.5, "num_gpus": 1},
        }
    )
    assert deployment.to_serve_options() == {
        "max_ongoing_requests": 32,
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 4},
        "ray_actor_options": {"num_cpus": 0.5, "num_gpus": 1},
    }
    fixed = DeploymentSpec.model_validate(
        {"num_replicas": 2, "ray_actor_options": {"resources": {"accel": 1}}}
    )
    assert fixed.to_serve_options() == {
        "num_replicas": 2,
        "ray_actor_options": {"resources": {"accel": 1.0}},
    }
    auto = DeploymentSpec.model_validate(
        {"num_replicas": "auto", "autoscaling_config": {"max_replicas": 8}}
    )
    assert auto.to_serve_options() == {
        "num_replicas": "auto",
        "autoscaling_config": {"max_replicas": 8},
    }
    assert DeploymentSpec().to_serve_options() == {}


@pytest.mark.parametrize(
    "data",
    [
        {"num_replicas": 2, "autoscaling_config": {"max_replicas": 3}},
        {"num_replicas": 0},
        {"num_replicas": "many"},
        {"autoscaling_config": {"min_replicas": 5, "max_replicas": 2}},
        {"ray_actor_options": {"num_gpus": -1}},
        {"ray_actor_options": {"num_gpu": 1}},
    ],
)
def test_invalid_deployments(data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        DeploymentSpec.model_validate(data)


def test_agent_deployment_block(write: WriteYaml) -> None:
    text = AGENT.format(name="ab") + "  deployment:\n    num_replicas: 3\n"
    spec = load_document(write("a.agent.yaml", text))
    assert isinstance(spec, AgentSpec)
    assert spec.spec.deployment is not None
    assert spec.spec.deployment.to_serve_options() == {"num_replicas": 3}
