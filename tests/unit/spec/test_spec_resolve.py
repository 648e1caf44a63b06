"""resolve_models: endpoints in fallback order, providerRef bases, stable keys."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from astromesh_ray.errors import ConfigError
from astromesh_ray.spec import AgentSpec, ModelEndpoint, ProviderEntrySpec, resolve_models


def agent(model: dict[str, Any]) -> AgentSpec:
    return AgentSpec.model_validate(
        {
            "apiVersion": "astromesh/v1",
            "kind": "Agent",
            "metadata": {"name": "ab"},
            "spec": {"model": model},
        }
    )


PROVIDERS = {
    "gpu": ProviderEntrySpec.model_validate(
        {
            "type": "vllm",
            "endpoint": "http://gpu:8000/v1",
            "models": ["big", "small"],
            "api_key_env": "VLLM_KEY",
            "timeout": 30,
            "parameters": {"temperature": 0.1, "top_p": 0.9},
            "deployment": {"mode": "dedicated", "ray_actor_options": {"num_gpus": 1}},
        }
    )
}


def test_legacy_order_and_openai_compat_normalised() -> None:
    endpoints = resolve_models(
        agent(
            {
                "primary": {"provider": "ollama", "model": "llama3.1:8b", "temperature": 0.2},
                "fallback": {"provider": "openai_compat", "model": "gpt-4o-mini", "timeout": 9},
            }
        ),
        {},
    )
    assert [(e.provider, e.model) for e in endpoints] == [
        ("ollama", "llama3.1:8b"),
        ("openai", "gpt-4o-mini"),
    ]
    assert endpoints[0].parameters == {"temperature": 0.2}
    assert endpoints[1].timeout_s == 9
    assert endpoints[0].deployment is None and endpoints[0].ref is None


def test_default_candidates_order() -> None:
    endpoints = resolve_models(
        agent({"default": {"candidates": [{"model": "a"}, {"source": "llamacpp", "model": "b"}]}}),
        {},
    )
    assert [(e.provider, e.model) for e in endpoints] == [("openai", "a"), ("llamacpp", "b")]


def test_provider_ref_gives_base_values_and_block_overrides() -> None:
    first, second = resolve_models(
        agent(
            {
                "primary": {"providerRef": "gpu", "parameters": {"temperature": 0.7}},
                "fallback": {"providerRef": "gpu", "model": "small", "timeout": 5},
            }
        ),
        PROVIDERS,
    )
    assert first == ModelEndpoint(
        provider="vllm",
        model="big",
        endpoint="http://gpu:8000/v1",
        api_key_env="VLLM_KEY",
        parameters={"temperature": 0.7, "top_p": 0.9},
        timeout_s=30,
        deployment=PROVIDERS["gpu"].deployment,
        ref="gpu",
    )
    assert (second.model, second.timeout_s, second.parameters) == (
        "small",
        5,
        {"temperature": 0.1, "top_p": 0.9},
    )


def test_unknown_ref_raises_with_did_you_mean() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_models(agent({"primary": {"providerRef": "gpus"}}), PROVIDERS)
    assert info.value.hint == "did you mean 'gpu'?"


def test_keys_are_stable_distinct_and_ignore_parameters() -> None:
    a = ModelEndpoint(provider="ollama", model="llama3.1:8b", endpoint="http://h:11434")
    same = ModelEndpoint(
        provider="ollama", model="llama3.1:8b", endpoint="http://h:11434", parameters={"t": 1}
    )
    other_host = ModelEndpoint(provider="ollama", model="llama3.1:8b", endpoint="http://x:11434")
    other_key = ModelEndpoint(
        provider="ollama", model="llama3.1:8b", endpoint="http://h:11434", api_key_env="K"
    )
    other_timeout = ModelEndpoint(
        provider="ollama", model="llama3.1:8b", endpoint="http://h:11434", timeout_s=3
    )
    assert a.key == same.key
    assert a.key.startswith("provider-ollama-llama3-1-8b-")
    assert len(a.key.rsplit("-", 1)[1]) == 6
    other_options = ModelEndpoint(
        provider="ollama", model="llama3.1:8b", endpoint="http://h:11434", options={"x": 1}
    )
    keys = {a.key, other_host.key, other_key.key, other_timeout.key, other_options.key}
    assert len(keys) == 5
    # Stable across processes: a pure function of the values (sha1, not hash()).
    identity = "\x1f".join(["ollama", "llama3.1:8b", "http://h:11434", "None", "None", "{}"])
    assert a.key == "provider-ollama-llama3-1-8b-" + hashlib.sha1(identity.encode()).hexdigest()[:6]


def test_endpoints_are_hashable_values() -> None:
    endpoint = resolve_models(agent({"primary": {"providerRef": "gpu"}}), PROVIDERS)[0]
    assert hash(endpoint) == hash(endpoint)
    assert endpoint == resolve_models(agent({"primary": {"providerRef": "gpu"}}), PROVIDERS)[0]
