"""Which Serve applications a redeploy deletes (``serve/local.py``), without a cluster."""

from __future__ import annotations

import inspect
from typing import cast

from ray.serve import Deployment

from astromesh_ray.serve import vllm
from astromesh_ray.serve.agents import AgentDeployment
from astromesh_ray.serve.builders import GATEWAY_APP
from astromesh_ray.serve.embedders import EmbedderDeployment
from astromesh_ray.serve.gateway import Gateway
from astromesh_ray.serve.local import is_runtime_app, stale_apps
from astromesh_ray.serve.providers import ProviderDeployment

PROVIDER = "provider-openai_compat-scripted-model-1a2b3c"
VLLM = "provider-vllm-qwen-qwen2-5-7b-instruct-4d5e6f"
EMBEDDER = "embedder-local-1a2b3c4d"


def test_our_apps_are_recognised_by_name_and_deployments() -> None:
    assert is_runtime_app("gateway", ["gateway"])
    assert is_runtime_app("agent-support", ["agent"])
    assert is_runtime_app(PROVIDER, ["provider"])
    assert is_runtime_app(VLLM, ["AstromeshLLMServer:qwen2_5-7b"])
    assert is_runtime_app(EMBEDDER, ["embedder"])
    assert not is_runtime_app("embedder-x", ["embedder", "Other"])
    # Someone else's, even under a name that looks like ours.
    assert not is_runtime_app("foreign", ["Foreign"])
    assert not is_runtime_app("agent-imposter", ["Imposter"])
    assert not is_runtime_app("gateway", ["gateway", "Sidecar"])
    assert not is_runtime_app("provider-x", ["provider", "Other"])
    assert not is_runtime_app("agent", ["agent"])  # our deployment, not our app name


def test_the_recognised_deployment_names_are_the_ones_we_deploy() -> None:
    # `@serve.deployment` returns a Deployment; its stubs still type it as the class.
    deployments = (Gateway, AgentDeployment, ProviderDeployment, EmbedderDeployment)
    names = [cast(Deployment, d).name for d in deployments]
    assert names == ["gateway", "agent", "provider", "embedder"]
    assert GATEWAY_APP == "gateway"
    # build_llm_deployment names the deployment "<class name>:<model id>".
    assert "class AstromeshLLMServer(" in inspect.getsource(vllm._server_class)


def test_stale_apps_are_ours_not_kept_callers_first() -> None:
    running = {
        "gateway": ["gateway"],
        "agent-kept": ["agent"],
        "agent-removed": ["agent"],
        PROVIDER: ["provider"],
        VLLM: ["AstromeshLLMServer:qwen"],
        EMBEDDER: ["embedder"],
        "foreign": ["Foreign"],
        "agent-imposter": ["Imposter"],
    }
    keep = ["gateway", "agent-kept", "provider-new"]
    assert stale_apps(keep, running) == ["agent-removed", EMBEDDER, PROVIDER, VLLM]
    assert stale_apps([], running)[0] == "gateway"  # nothing kept: the ingress goes first
    assert stale_apps(list(running), running) == []
