"""Agent files written for the original Astromesh load unchanged, or fail only with
support-check refusals, each at the right line."""

from __future__ import annotations

import pytest
from spec_helpers import ORIGINAL, issues_of

from astromesh_ray.spec import AgentSpec, ProviderConfigSpec, RuntimeConfigSpec, load_document
from astromesh_ray.spec.support import check_support

SUPPORT_WORDS = ("not supported yet", "not supported by astromesh-ray", "not accepted")


@pytest.mark.parametrize("name", ["web-researcher.agent.yaml", "email-composer.agent.yaml"])
def test_plain_originals_load_fully(name: str) -> None:
    agent = load_document(ORIGINAL / name)
    assert isinstance(agent, AgentSpec)
    assert agent.source == str(ORIGINAL / name)
    assert check_support(agent) == []


def test_web_researcher_values() -> None:
    agent = load_document(ORIGINAL / "web-researcher.agent.yaml")
    assert isinstance(agent, AgentSpec)
    assert agent.name == "web-researcher"
    assert agent.metadata.namespace == "sales"
    assert agent.metadata.labels == {"team": "revenue"}
    assert agent.spec.identity is not None
    assert agent.spec.identity.display_name == "Web Researcher"
    primary = agent.spec.model.primary
    assert primary is not None
    assert (primary.provider, primary.model) == ("ollama", "llama3.1:8b")
    assert primary.parameters == {"temperature": 0.2, "max_tokens": 2048}
    assert agent.spec.orchestration.pattern == "react"
    assert agent.spec.orchestration.max_iterations == 5
    assert agent.spec.orchestration.timeout_s == 90
    assert agent.spec.prompts.system.startswith("Reunís contexto público")


def test_runtime_original_with_legacy_api_version_loads() -> None:
    runtime = load_document(ORIGINAL / "runtime.yaml")
    assert isinstance(runtime, RuntimeConfigSpec)
    assert runtime.api_version == "astromech/v1"
    assert (runtime.spec.api.host, runtime.spec.api.port) == ("0.0.0.0", 8000)
    assert runtime.spec.defaults.orchestration.max_iterations == 10


@pytest.mark.parametrize(
    "name",
    [
        "sales-qualifier.agent.yaml",
        "support-agent.agent.yaml",
        "autolink-parts.agent.yaml",
    ],
)
def test_originals_with_guardrails_load_fully(name: str) -> None:
    agent = load_document(ORIGINAL / name)
    assert isinstance(agent, AgentSpec)
    assert check_support(agent) == []
    assert agent.spec.guardrails is not None


def test_original_guardrail_blocks_keep_their_meaning() -> None:
    from astromesh_ray.spec.guardrails import CostLimitSpec, MaxLengthSpec, PiiDetectionSpec

    sales = load_document(ORIGINAL / "sales-qualifier.agent.yaml")
    assert isinstance(sales, AgentSpec) and sales.spec.guardrails is not None
    pii, length = sales.spec.guardrails.input
    assert isinstance(pii, PiiDetectionSpec) and pii.action == "redact"
    assert isinstance(length, MaxLengthSpec) and length.max_chars == 5000
    (cost,) = sales.spec.guardrails.output
    assert isinstance(cost, CostLimitSpec) and cost.max_tokens_per_turn == 1000
    support = load_document(ORIGINAL / "support-agent.agent.yaml")
    assert isinstance(support, AgentSpec) and support.spec.guardrails is not None
    assert [g.type for g in support.spec.guardrails.output] == ["pii_detection", "cost_limit"]


def test_whatsapp_assistant_loads_with_its_capability_match_routing() -> None:
    """Upstream's whatsapp-assistant loads with no issue: its capability_match routing
    is supported, and its two models (which declare no capabilities) are kept in
    declared order, llava first."""
    from astromesh_ray.spec import resolve_route

    agent = load_document(ORIGINAL / "whatsapp-assistant.agent.yaml")
    assert isinstance(agent, AgentSpec)
    assert check_support(agent) == []
    assert agent.spec.model.routing is not None
    assert agent.spec.model.routing.strategy == "capability_match"
    route = resolve_route(agent, {})
    assert route.strategy == "capability_match"
    assert [(e.model, e.capabilities) for e in route.endpoints] == [
        ("llava:7b", None),
        ("llama3.1:8b", None),
    ]


def test_role_router_demo_refusals_name_source_key() -> None:
    issues = issues_of(lambda: load_document(ORIGINAL / "role-router-demo.agent.yaml"))
    by_path = {i["path"]: i for i in issues}
    assert set(by_path) == {
        "spec.model.roles.planner.candidates[0].source",
    }
    litellm = by_path["spec.model.roles.planner.candidates[0].source"]
    assert litellm["line"] == 21
    assert "'litellm' is not supported by astromesh-ray" in litellm["message"]


def test_providers_original_loads_with_its_routing() -> None:
    document = load_document(ORIGINAL / "providers.yaml")
    assert isinstance(document, ProviderConfigSpec)
    routing = document.spec.routing
    assert routing is not None and routing.default_strategy == "cost_optimized"
    assert routing.circuit_breaker is not None
    assert routing.circuit_breaker.cooldown_s == 60  # from the original recovery_timeout
    assert document.spec.providers["ollama"].health_check_interval == 30
    assert document.spec.providers["hf_tgi"].type == "hf_tgi"


def test_original_models_parse_before_support_check() -> None:
    """The refused features are parsed by the models (the schema documents them)."""
    import yaml

    for name in ("sales-qualifier.agent.yaml", "support-agent.agent.yaml"):
        data = yaml.safe_load((ORIGINAL / name).read_text(encoding="utf-8"))
        agent = AgentSpec.model_validate(data)
        assert agent.spec.memory is not None
        assert agent.spec.guardrails is not None
    data = yaml.safe_load((ORIGINAL / "providers.yaml").read_text(encoding="utf-8"))
    providers = ProviderConfigSpec.model_validate(data)
    assert providers.spec.providers["openai"].type == "openai_compat"
    assert providers.spec.routing is not None


# The memory blocks of the original example agents that use memory (astromesh-copilot,
# chef-iberia and whatsapp-assistant as they are upstream; support-agent and
# sales-qualifier are the fixtures above).
ORIGINAL_MEMORY_BLOCKS = {
    "astromesh-copilot": {
        "conversational": {"backend": "sqlite", "strategy": "sliding_window", "max_turns": 20}
    },
    "chef-iberia": {"conversational": {"backend": "in_memory", "strategy": "sliding_window"}},
    "whatsapp-assistant": {
        "conversational": {
            "backend": "sqlite",
            "strategy": "sliding_window",
            "max_turns": 30,
            "ttl": 86400,
        }
    },
}


@pytest.mark.parametrize("name", ["support-agent.agent.yaml", "sales-qualifier.agent.yaml"])
def test_original_memory_blocks_are_supported(name: str) -> None:
    import yaml

    data = yaml.safe_load((ORIGINAL / name).read_text(encoding="utf-8"))
    agent = AgentSpec.model_validate(data)
    assert agent.spec.memory is not None and agent.spec.memory.conversational is not None
    assert check_support(agent) == []


@pytest.mark.parametrize("name", sorted(ORIGINAL_MEMORY_BLOCKS))
def test_upstream_memory_blocks_load(name: str) -> None:
    data = {
        "apiVersion": "astromesh/v1",
        "kind": "Agent",
        "metadata": {"name": name},
        "spec": {
            "model": {"primary": {"provider": "ollama", "model": "llama3.1:8b"}},
            "memory": ORIGINAL_MEMORY_BLOCKS[name],
        },
    }
    agent = AgentSpec.model_validate(data)
    assert check_support(agent) == []
