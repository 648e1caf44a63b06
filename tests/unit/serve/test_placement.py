"""Placement without a cluster: the label selectors and resources the builders give
each deployment, colocation's checks and its wait, and what is refused
(``serve/placement.py``, ``serve/builders.py``).  On a cluster:
``tests/integration/test_placement.py``."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, cast

import pytest
from ray.serve import Application

from astromesh_ray.errors import ConfigError
from astromesh_ray.serve.agents import AgentDeployment
from astromesh_ray.serve.builders import plan, provider_app, provider_endpoints, serve_options
from astromesh_ray.serve.gateway import Gateway
from astromesh_ray.serve.placement import (
    check_accelerator_type,
    colocated,
    colocation_target,
    wait_for_replica_nodes,
)
from astromesh_ray.serve.providers import HOSTED_MODEL_MAX_ONGOING_REQUESTS, ProviderDeployment
from astromesh_ray.serve.vllm import llm_config_fields
from astromesh_ray.spec import (
    AgentDeploymentSpec,
    DeploymentSpec,
    LoadedConfig,
    ModelEndpoint,
    load_config,
)

OFF_GPU = {"astromesh/pool": "!gpu"}


def deployment(data: dict[str, Any]) -> DeploymentSpec:
    return DeploymentSpec.model_validate(data)


@pytest.mark.parametrize("decorated", [ProviderDeployment, AgentDeployment, Gateway])
def test_cpu_deployments_stay_off_the_gpu_pool_by_default(decorated: object) -> None:
    for spec in (None, DeploymentSpec(), deployment({"ray_actor_options": {"num_cpus": 2}})):
        actor = serve_options(decorated, spec)["ray_actor_options"]
        assert actor["label_selector"] == OFF_GPU
        assert "num_gpus" not in actor


def test_gpu_deployments_get_no_selector_only_their_gpus() -> None:
    # Ray schedules num_gpus replicas on nodes with GPUs; no selector may fight that.
    spec = deployment({"ray_actor_options": {"num_gpus": 1, "accelerator_type": "H100"}})
    assert serve_options(ProviderDeployment, spec) == {
        "ray_actor_options": {"num_cpus": 0, "num_gpus": 1, "accelerator_type": "H100"}
    }
    custom = deployment({"ray_actor_options": {"resources": {"accelerator_type:L4": 0.001}}})
    actor = serve_options(ProviderDeployment, custom)["ray_actor_options"]
    assert "label_selector" not in actor and actor["resources"] == {"accelerator_type:L4": 0.001}


def test_node_labels_replace_the_default() -> None:
    cpu = deployment({"placement": {"node_labels": {"astromesh/pool": "cpu"}}})
    assert serve_options(Gateway, cpu)["ray_actor_options"] == {
        "num_cpus": 0,
        "label_selector": {"astromesh/pool": "cpu"},
    }
    anywhere = deployment({"placement": {"node_labels": {}}})
    assert serve_options(AgentDeployment, anywhere)["ray_actor_options"] == {"num_cpus": 0}
    # A GPU deployment may narrow its nodes further.
    pool = deployment(
        {"ray_actor_options": {"num_gpus": 1}, "placement": {"node_labels": {"zone": "a"}}}
    )
    assert serve_options(ProviderDeployment, pool)["ray_actor_options"]["label_selector"] == {
        "zone": "a"
    }


def test_colocated_agents_prefer_the_models_nodes_and_fall_back() -> None:
    spec = AgentDeploymentSpec.model_validate(
        {"ray_actor_options": {"num_cpus": 0.5}, "placement": {"colocate_with": "model"}}
    )
    options = serve_options(AgentDeployment, spec, near=["n2", "n1"])
    assert options["ray_actor_options"] == {
        "num_cpus": 0.5,
        # Asked for: the model's nodes, GPU pool or not (the default is replaced).
        "label_selector": {"ray.io/node-id": "in(n1,n2)"},
        # Where it would have gone without colocation, when those nodes cannot take it.
        "fallback_strategy": [{"label_selector": {"astromesh/pool": "!gpu"}}],
    }
    # node_labels the YAML names still apply, both ways.
    both = AgentDeploymentSpec.model_validate(
        {"placement": {"colocate_with": "model", "node_labels": {"zone": "a"}}}
    )
    assert serve_options(AgentDeployment, both, near=["n"])["ray_actor_options"] == {
        "num_cpus": 0,
        "label_selector": {"zone": "a", "ray.io/node-id": "in(n)"},
        "fallback_strategy": [{"label_selector": {"zone": "a"}}],
    }
    assert colocated({}, ["n"], otherwise={}) == {
        "label_selector": {"ray.io/node-id": "in(n)"},
        "fallback_strategy": [{"label_selector": {}}],
    }
    with pytest.raises(ValueError, match="at least one node"):
        colocated({}, [], otherwise=OFF_GPU)


def test_the_options_are_what_ray_accepts() -> None:
    # Ray's own validation of actor options (label syntax, fallback_strategy shape).
    from ray._common.ray_option_utils import validate_actor_options

    spec = AgentDeploymentSpec.model_validate(
        {"placement": {"colocate_with": "model", "node_labels": {"zone": "!in(a, b)"}}}
    )
    node = "a" * 56  # a Ray node id: 56 hex digits, a valid label value
    actor = serve_options(AgentDeployment, spec, near=[node, "b" * 56])["ray_actor_options"]
    validate_actor_options(actor, in_options=True)
    validate_actor_options(serve_options(Gateway, None)["ray_actor_options"], in_options=True)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_waiting_for_the_models_nodes() -> None:
    clock = Clock()
    answers = iter([[], [], ["n1"]])
    seen: list[str] = []

    def lookup(app: str) -> list[str]:
        seen.append(app)
        return next(answers)

    nodes = wait_for_replica_nodes(
        "provider-x", why="w", timeout_s=10, lookup=lookup, clock=clock, sleep=clock.sleep
    )
    assert nodes == ["n1"] and seen == ["provider-x"] * 3 and clock.now == 2.0


def test_a_model_never_placed_fails_the_build_with_its_name() -> None:
    clock = Clock()
    with pytest.raises(ConfigError) as info:
        wait_for_replica_nodes(
            "provider-x",
            why="agent a: placement.colocate_with: model",
            timeout_s=5,
            lookup=lambda app: [],
            clock=clock,
            sleep=clock.sleep,
        )
    message = str(info.value)
    assert "agent a: placement.colocate_with: model" in message
    assert "'provider-x'" in message and "within 5 s" in message
    assert clock.now >= 5


def test_accelerator_types_are_rays() -> None:
    for known in ("H100", "A10G", "L4", "TPU-V6E"):
        check_accelerator_type("x", known)
    check_accelerator_type("x", "A10", llm=True)  # LLMConfig maps A10 to A10G
    with pytest.raises(ConfigError, match="'A10' is not a Ray accelerator type"):
        check_accelerator_type("x", "A10")  # a plain replica would wait for A10 nodes
    with pytest.raises(ConfigError) as info:
        check_accelerator_type("provider p: deployment.ray_actor_options", "H10O")
    assert "provider p: deployment.ray_actor_options.accelerator_type" in str(info.value)
    assert "H100" in str(info.value.hint)


# -- through plan() and the builders, from YAML files ---------------------------------


def write_config(root: Path, providers: str, agents: dict[str, str]) -> LoadedConfig:
    (root / "agents").mkdir(parents=True)
    (root / "providers.yaml").write_text(textwrap.dedent(providers).lstrip())
    for name, body in agents.items():
        (root / "agents" / f"{name}.agent.yaml").write_text(
            "apiVersion: astromesh/v1\nkind: Agent\n"
            f"metadata: {{name: {name}}}\nspec:\n" + textwrap.indent(textwrap.dedent(body), "  ")
        )
    return load_config(root)


PROVIDERS = """
apiVersion: astromesh/v1
kind: ProviderConfig
metadata: {name: pp}
spec:
  providers:
    gpu-model:
      type: openai_compat
      endpoint: http://127.0.0.1:9/v1
      models: [m]
      deployment:
        mode: dedicated
        ray_actor_options: {num_gpus: 1, accelerator_type: %s}
        autoscaling_config: {min_replicas: %d, max_replicas: 2}
    tiny:
      type: onnx
      models: [some/model]
"""
COLOCATED = """
model: {primary: {providerRef: gpu-model}}
deployment: {placement: {colocate_with: model}}
"""


def test_plan_checks_colocation_and_accelerators(tmp_path: Path) -> None:
    loaded = write_config(tmp_path / "ok", PROVIDERS % ("H100", 1), {"near": COLOCATED})
    endpoints = provider_endpoints(loaded)
    target = colocation_target(loaded.agents["near"], loaded.providers, endpoints)
    assert target in endpoints and endpoints[target].model == "m"
    assert [app.name for app in plan(loaded, "cfg")][-2:] == ["agent-near", "gateway"]

    zero = write_config(tmp_path / "zero", PROVIDERS % ("H100", 0), {"near": COLOCATED})
    with pytest.raises(ConfigError, match=r"scales to zero \(min_replicas: 0\)"):
        plan(zero, "cfg")

    typo = write_config(tmp_path / "typo", PROVIDERS % ("H1OO", 1), {"near": COLOCATED})
    with pytest.raises(ConfigError, match="'H1OO' is not a Ray accelerator type"):
        plan(typo, "cfg")

    # A model with no deployment of its own (none in `endpoints`) has no node.
    with pytest.raises(ConfigError, match="runs in no deployment of its own"):
        colocation_target(loaded.agents["near"], loaded.providers, {})


def test_hosted_onnx_models_take_a_few_requests_at_once(tmp_path: Path) -> None:
    loaded = write_config(
        tmp_path / "c",
        PROVIDERS % ("H100", 1),
        {
            "small": "model: {primary: {providerRef: tiny}}\n",
            "big": "model: {primary: {providerRef: gpu-model}}\n",
        },
    )
    (name,) = [n for n, ep in provider_endpoints(loaded).items() if ep.provider == "onnx"]
    app = provider_app({"config_dir": str(tmp_path / "c"), "provider": name})
    bound = cast(Any, app)._bound_deployment
    assert bound.max_ongoing_requests == HOSTED_MODEL_MAX_ONGOING_REQUESTS == 8
    assert bound.ray_actor_options["label_selector"] == OFF_GPU  # an ONNX model on CPU
    (gpu,) = [n for n, ep in provider_endpoints(loaded).items() if ep.provider != "onnx"]
    remote = cast(Any, provider_app({"config_dir": str(tmp_path / "c"), "provider": gpu}))
    assert remote._bound_deployment.max_ongoing_requests == 100  # its client pool
    assert remote._bound_deployment.ray_actor_options == {
        "num_cpus": 0,
        "num_gpus": 1,
        "accelerator_type": "H100",
    }
    assert isinstance(app, Application)


def vllm(deployment: dict[str, Any], **options: Any) -> ModelEndpoint:
    return ModelEndpoint(
        provider="vllm",
        model="Qwen/Qwen2.5-7B-Instruct",
        options={"mode": "in_cluster", **options},
        deployment=DeploymentSpec.model_validate(deployment),
    )


def test_in_cluster_vllm_is_placed_by_its_gpu_bundles_only() -> None:
    fields = llm_config_fields(vllm({"ray_actor_options": {"num_gpus": 1}}, accelerator_type="L4"))
    assert fields["accelerator_type"] == "L4"
    assert "ray_actor_options" not in fields["deployment_config"]  # no selector added
    with pytest.raises(ConfigError, match=r"in-cluster vLLM takes the GPU type in options"):
        llm_config_fields(vllm({"ray_actor_options": {"accelerator_type": "L4"}}))
    with pytest.raises(ConfigError, match="placed by its GPU bundles"):
        llm_config_fields(vllm({"placement": {"node_labels": {"astromesh/pool": "gpu"}}}))
