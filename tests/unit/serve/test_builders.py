"""Builder options: YAML deployment blocks over each deployment's own defaults."""

from __future__ import annotations

import pytest

from astromesh_ray.serve.agents import AgentDeployment
from astromesh_ray.serve.builders import serve_options
from astromesh_ray.serve.gateway import Gateway
from astromesh_ray.serve.providers import ProviderDeployment
from astromesh_ray.spec import DeploymentSpec


@pytest.mark.parametrize("deployment", [ProviderDeployment, AgentDeployment, Gateway])
def test_yaml_actor_options_merge_over_the_deployments_defaults(deployment: object) -> None:
    spec = DeploymentSpec.model_validate(
        {"num_replicas": 2, "ray_actor_options": {"num_gpus": 1, "resources": {"tpu": 1}}}
    )
    options = serve_options(deployment, spec)
    # A GPU provider keeps the decorator's num_cpus: 0 (it does not also reserve a CPU).
    assert options["ray_actor_options"] == {"num_cpus": 0, "num_gpus": 1, "resources": {"tpu": 1}}
    assert options["num_replicas"] == 2


def test_yaml_actor_options_win_over_the_defaults() -> None:
    spec = DeploymentSpec.model_validate({"ray_actor_options": {"num_cpus": 2}})
    # (A CPU-only deployment also gets the selector keeping it off the GPU pool:
    # tests/unit/serve/test_placement.py.)
    off_gpu = {"label_selector": {"astromesh/pool": "!gpu"}}
    assert serve_options(ProviderDeployment, spec) == {
        "ray_actor_options": {"num_cpus": 2, **off_gpu}
    }
    assert serve_options(ProviderDeployment, DeploymentSpec()) == {
        "ray_actor_options": {"num_cpus": 0, **off_gpu}
    }
    assert serve_options(ProviderDeployment, None) == serve_options(
        ProviderDeployment, DeploymentSpec()
    )
