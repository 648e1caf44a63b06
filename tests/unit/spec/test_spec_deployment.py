"""``deployment`` blocks: resources, accelerator type, autoscaling (scale to zero)
and placement (node labels, colocation) as the loader reads them."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError
from spec_helpers import AGENT, WriteYaml, issues_of

from astromesh_ray.spec import AgentDeploymentSpec, AgentSpec, DeploymentSpec, load_document
from astromesh_ray.spec.deployment import OFF_GPU_POOL, replica_selector, wants_accelerator

PROVIDERS = """
apiVersion: astromesh/v1
kind: ProviderConfig
metadata: {{name: pp}}
spec:
  providers:
    local:
      type: openai_compat
      endpoint: http://127.0.0.1:9/v1
      models: [m]
      deployment:
{deployment}
"""


def test_accelerator_type_and_node_labels_reach_the_actor_options() -> None:
    spec = DeploymentSpec.model_validate(
        {
            "ray_actor_options": {"num_gpus": 1, "accelerator_type": "H100"},
            "placement": {"node_labels": {"astromesh/pool": "gpu", "zone": "!in(a, b)"}},
        }
    )
    assert spec.to_serve_options() == {
        "ray_actor_options": {
            "num_gpus": 1,
            "accelerator_type": "H100",
            "label_selector": {"astromesh/pool": "gpu", "zone": "!in(a, b)"},
        }
    }
    # Placement alone still gives actor options (the selector); {} gives none.
    only = DeploymentSpec.model_validate({"placement": {"node_labels": {"disk": "ssd"}}})
    assert only.to_serve_options() == {"ray_actor_options": {"label_selector": {"disk": "ssd"}}}
    anywhere = DeploymentSpec.model_validate({"placement": {"node_labels": {}}})
    assert anywhere.to_serve_options() == {}


@pytest.mark.parametrize(
    ("actor", "labels", "selector"),
    [
        ({"num_cpus": 0}, None, OFF_GPU_POOL),  # CPU-only: off the GPU pool
        ({"num_gpus": 0.5}, None, {}),  # Ray puts it on a GPU node: no selector
        ({"num_gpus": 0, "accelerator_type": "L4"}, None, {}),
        ({"resources": {"accelerator_type:L4": 0.001}}, None, {}),
        ({"num_cpus": 1}, {"astromesh/pool": "cpu"}, {"astromesh/pool": "cpu"}),
        ({"num_cpus": 1}, {}, {}),  # asked: any node, the GPU pool included
        ({"num_gpus": 1}, {"astromesh/pool": "gpu"}, {"astromesh/pool": "gpu"}),
    ],
)
def test_replica_selector(
    actor: dict[str, Any], labels: dict[str, str] | None, selector: dict[str, str]
) -> None:
    placement = {"placement": {"node_labels": labels}} if labels is not None else {}
    spec = DeploymentSpec.model_validate(placement)
    assert replica_selector(spec, actor) == selector
    assert replica_selector(None, actor) == (OFF_GPU_POOL if not wants_accelerator(actor) else {})


def test_the_default_selector_is_a_negation_an_unlabelled_node_satisfies() -> None:
    # What keeps `ray.init()` on a laptop working: no label is required, one is excluded.
    assert OFF_GPU_POOL == {"astromesh/pool": "!gpu"}


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"astromesh pool": "gpu"}, "is not a Ray label key"),
        ({"-pool": "gpu"}, "is not a Ray label key"),
        ({"pool": "gpu!"}, "is not a value (gpu), a negation (!gpu), or a set"),
        ({"pool": "in()"}, "is not a value"),
        ({"pool": "in(a,,b)"}, "is not a value"),
        ({"pool": ""}, "is not a value"),
        ({"pool": "x" * 64}, "is not a value"),
    ],
)
def test_bad_node_labels_are_refused(labels: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        DeploymentSpec.model_validate({"placement": {"node_labels": labels}})


@pytest.mark.parametrize(
    "value", ["gpu", "!gpu", "in(a, b)", "!in(a,b)", "A100-80G", "us-east-1.a", "v1_2"]
)
def test_good_node_label_values(value: str) -> None:
    spec = DeploymentSpec.model_validate({"placement": {"node_labels": {"k8s.io/x": value}}})
    assert spec.placement is not None and spec.placement.node_labels == {"k8s.io/x": value}


def test_colocation_is_for_agents_only() -> None:
    agent = AgentDeploymentSpec.model_validate({"placement": {"colocate_with": "model"}})
    assert agent.colocates_with_model
    assert not AgentDeploymentSpec.model_validate({}).colocates_with_model
    with pytest.raises(ValidationError, match="colocate_with is for an agent's deployment"):
        DeploymentSpec.model_validate({"placement": {"colocate_with": "model"}})
    with pytest.raises(ValidationError, match="colocate_with"):
        AgentDeploymentSpec.model_validate({"placement": {"colocate_with": "tools"}})
    with pytest.raises(ValidationError, match="do not also select on it"):
        AgentDeploymentSpec.model_validate(
            {"placement": {"colocate_with": "model", "node_labels": {"ray.io/node-id": "x"}}}
        )


def test_agent_colocation_loads_from_yaml(write: WriteYaml) -> None:
    text = AGENT.format(name="ab") + (
        "  deployment:\n    placement:\n      colocate_with: model\n"
        "      node_labels: {astromesh/pool: gpu}\n"
    )
    spec = load_document(write("a.agent.yaml", text))
    assert isinstance(spec, AgentSpec)
    assert spec.spec.deployment is not None and spec.spec.deployment.colocates_with_model


def test_provider_colocation_is_refused_at_its_line(write: WriteYaml) -> None:
    block = "        placement:\n          colocate_with: model\n"
    path = write("providers.yaml", PROVIDERS.format(deployment=block))
    issues = issues_of(lambda: load_document(path))
    assert [(i["path"], i["line"]) for i in issues] == [
        ("spec.providers.local.deployment.placement.colocate_with", 12)
    ]
    assert "for an agent's deployment" in issues[0]["message"]


def test_runtime_gateway_placement_and_accelerator_load(write: WriteYaml) -> None:
    text = (
        "apiVersion: astromesh/v1\nkind: RuntimeConfig\nmetadata: {name: rt}\nspec:\n"
        "  gateway:\n    placement: {node_labels: {astromesh/pool: cpu}}\n"
    )
    runtime = load_document(write("runtime.yaml", text))
    gateway = runtime.spec.gateway  # type: ignore[union-attr]
    assert gateway.to_serve_options() == {
        "ray_actor_options": {"label_selector": {"astromesh/pool": "cpu"}}
    }
    bad = PROVIDERS.format(deployment="        ray_actor_options: {accelerator_type: 'H 100'}\n")
    issues = issues_of(lambda: load_document(write("providers.yaml", bad)))
    assert issues[0]["path"] == "spec.providers.local.deployment.ray_actor_options.accelerator_type"


def test_scale_to_zero() -> None:
    spec = DeploymentSpec.model_validate(
        {
            "autoscaling_config": {
                "min_replicas": 0,
                "max_replicas": 2,
                "downscale_to_zero_delay_s": 300,
            }
        }
    )
    assert spec.to_serve_options() == {
        "autoscaling_config": {
            "min_replicas": 0,
            "max_replicas": 2,
            "downscale_to_zero_delay_s": 300,
        }
    }
    # Alone, min_replicas 0 with Serve's default max_replicas (1) is fine too.
    DeploymentSpec.model_validate({"autoscaling_config": {"min_replicas": 0}})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"autoscaling_config": {"min_replicas": 1, "downscale_to_zero_delay_s": 5}},
            "needs min_replicas: 0",
        ),
        ({"autoscaling_config": {"downscale_to_zero_delay_s": 5}}, "needs min_replicas: 0"),
        (
            {"autoscaling_config": {"min_replicas": 2, "max_replicas": 4, "initial_replicas": 1}},
            "initial_replicas (1) is below min_replicas (2)",
        ),
        ({"autoscaling_config": {"min_replicas": 2}}, "exceeds Serve's default max_replicas"),
        ({"autoscaling_config": {"initial_replicas": 3}}, "exceeds Serve's default max_replicas"),
        ({"autoscaling_config": {"min_replicas": -1}}, "greater than or equal to 0"),
        ({"ray_actor_options": {"accelerator_type": ""}}, "should match pattern"),
    ],
)
def test_invalid_autoscaling(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        DeploymentSpec.model_validate(data)
    assert message in str(info.value)


def test_auto_replicas_keep_serves_larger_default_max() -> None:
    # With num_replicas: auto Serve's defaults are min 1, max 100: min 2 alone is fine.
    spec = DeploymentSpec.model_validate(
        {"num_replicas": "auto", "autoscaling_config": {"min_replicas": 2}}
    )
    assert spec.to_serve_options()["autoscaling_config"] == {"min_replicas": 2}
