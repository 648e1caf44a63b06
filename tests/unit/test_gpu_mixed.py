"""``deployments/gpu-mixed.yaml``: GPU models with CPU agents and a tool server.

The Serve config is what ``astromesh deploy-config`` writes for
``deployments/gpu-mixed/`` (so the two never drift), Ray's Serve schema accepts it,
and each application gets the resources and placement the directory asks for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import yaml

from astromesh_ray.serve.agents import AgentDeployment
from astromesh_ray.serve.builders import deploy_config, plan, provider_app, provider_endpoints
from astromesh_ray.serve.builders import serve_options as options_of
from astromesh_ray.serve.gateway import Gateway
from astromesh_ray.serve.placement import colocation_target
from astromesh_ray.serve.vllm import in_cluster, llm_config_fields
from astromesh_ray.spec import load_config
from astromesh_ray.spec.tools import McpToolSpec

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deployments" / "gpu-mixed"
OFF_GPU = {"astromesh/pool": "!gpu"}


def test_serve_config_validates_and_matches_its_config_dir() -> None:
    from ray.serve.schema import ServeDeploySchema

    text = (ROOT / "deployments" / "gpu-mixed.yaml").read_text()
    assert "astromesh deploy-config --config deployments/gpu-mixed --host 0.0.0.0" in text
    body = yaml.safe_load(text)
    schema = ServeDeploySchema.model_validate(body)
    assert [app.name for app in schema.applications][-1] == "gateway"
    assert {app["args"]["config_dir"] for app in body["applications"]} == {"deployments/gpu-mixed"}
    loaded = load_config(CONFIG)
    assert sorted(loaded.agents) == ["assistant", "triage"]
    # The file is what `astromesh deploy-config` writes for that directory.
    assert body == deploy_config(loaded, "deployments/gpu-mixed", host="0.0.0.0")


def test_gpu_models_cpu_agents_and_a_tool_server() -> None:
    loaded = load_config(CONFIG)
    endpoints = provider_endpoints(loaded)
    by_kind = {ep.provider: name for name, ep in endpoints.items()}
    assert sorted(by_kind) == ["onnx", "openai", "vllm"]

    # vLLM in the cluster: one A10G per replica, through its GPU bundles.
    qwen = endpoints[by_kind["vllm"]]
    assert in_cluster(qwen)
    fields = llm_config_fields(qwen)
    assert fields["accelerator_type"] == "A10G"
    assert fields["placement_group_config"] == {"bundle_per_worker": {"GPU": 1.0}}
    assert "label_selector" not in fields["deployment_config"].get("ray_actor_options", {})

    # ONNX on a quarter GPU of an A10G node: a GPU deployment, so no selector.
    def built(name: str) -> Any:
        app = provider_app({"config_dir": str(CONFIG), "provider": name})
        return cast(Any, app)._bound_deployment

    onnx = built(by_kind["onnx"])
    assert onnx.ray_actor_options == {"num_cpus": 1, "num_gpus": 0.25, "accelerator_type": "A10G"}
    assert onnx.max_ongoing_requests == 16
    # The remote API is called from the agent replicas: it has no application.
    assert not endpoints[by_kind["openai"]].dedicated
    planned = {app.name for app in plan(loaded, str(CONFIG))}
    assert by_kind["openai"] not in planned and {by_kind["vllm"], by_kind["onnx"]} <= planned

    # The assistant runs next to Qwen; its tool server is an MCP stdio server.
    assistant = loaded.agents["assistant"]
    assert colocation_target(assistant, loaded.providers, endpoints) == by_kind["vllm"]
    actor = options_of(AgentDeployment, assistant.spec.deployment, near=["n1"])
    assert actor["ray_actor_options"]["label_selector"] == {"ray.io/node-id": "in(n1)"}
    assert actor["ray_actor_options"]["fallback_strategy"] == [{"label_selector": OFF_GPU}]
    (mcp,) = [t for t in assistant.spec.tools if isinstance(t, McpToolSpec)]
    assert mcp.mcp.transport == "stdio"

    # Triage: CPU, off the GPU pool, scaling to zero.
    triage = options_of(AgentDeployment, loaded.agents["triage"].spec.deployment)
    assert triage["ray_actor_options"] == {"num_cpus": 0.25, "label_selector": OFF_GPU}
    assert triage["autoscaling_config"]["min_replicas"] == 0

    # The gateway: two replicas on CPU workers.
    gateway = options_of(Gateway, loaded.runtime.spec.gateway)
    assert gateway["num_replicas"] == 2
    assert gateway["ray_actor_options"] == {
        "num_cpus": 1,
        "label_selector": {"astromesh/pool": "cpu"},
    }
