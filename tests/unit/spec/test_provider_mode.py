"""Where a provider's client runs (``deployment.mode``): a remote API in each agent
replica by default, a hosted model (ONNX, in-cluster vLLM) or ``mode: dedicated`` in a
deployment of its own; Serve options that would apply to nothing are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from spec_helpers import WriteYaml, issues_of

from astromesh_ray.spec import load_config, resolve_models

HEADER = (
    "apiVersion: astromesh/v1\nkind: ProviderConfig\nmetadata: {name: pp}\nspec:\n  providers:\n"
)
AGENT = """\
apiVersion: astromesh/v1
kind: Agent
metadata: {name: aa}
spec:
  model:
    primary: {providerRef: main}
"""


def entry(body: str) -> str:
    return HEADER + "    main:\n" + "".join(f"      {line}\n" for line in body.splitlines())


@pytest.mark.parametrize(
    ("body", "dedicated"),
    [
        ("type: openai\nmodels: [m]", False),
        ("type: ollama\nmodels: [m]\ndeployment: {mode: in_replica}", False),
        ("type: openai\nmodels: [m]\ndeployment: {mode: dedicated, num_replicas: 2}", True),
        ("type: vllm\nendpoint: http://x:8000/v1\nmodels: [m]", False),  # an external server
        ("type: vllm\nmodels: [m]\noptions: {mode: in_cluster}", True),
        ("type: onnx\nmodels: [m]\ndeployment: {max_ongoing_requests: 4}", True),
    ],
)
def test_where_each_kind_of_provider_runs(
    write: WriteYaml, tmp_path: Path, body: str, dedicated: bool
) -> None:
    write("providers.yaml", entry(body))
    write("agents/a.agent.yaml", AGENT)
    loaded = load_config(tmp_path)
    (endpoint,) = resolve_models(loaded.agents["aa"], loaded.providers)
    assert endpoint.dedicated is dedicated


def test_serve_options_on_a_remote_api_need_mode_dedicated(
    write: WriteYaml, tmp_path: Path
) -> None:
    write(
        "providers.yaml",
        entry(
            "type: openai\nmodels: [m]\ndeployment:\n  max_ongoing_requests: 20\n  num_replicas: 2"
        ),
    )
    (issue,) = issues_of(lambda: load_config(tmp_path))
    # The first offending key, by its own line.
    assert issue["path"] == "spec.providers.main.deployment.max_ongoing_requests"
    assert issue["line"] == 10
    assert "max_ongoing_requests, num_replicas" in issue["message"]
    assert "add `mode: dedicated`" in issue["message"]


def test_in_replica_is_refused_for_a_hosted_model(write: WriteYaml, tmp_path: Path) -> None:
    write("providers.yaml", entry("type: onnx\nmodels: [m]\ndeployment: {mode: in_replica}"))
    (issue,) = issues_of(lambda: load_config(tmp_path))
    assert issue["path"] == "spec.providers.main.deployment.mode"
    assert "hosts its model in its own Serve deployment" in issue["message"]


def test_an_unknown_mode_names_the_choices(write: WriteYaml, tmp_path: Path) -> None:
    write("providers.yaml", entry("type: openai\nmodels: [m]\ndeployment: {mode: shared}"))
    (issue,) = issues_of(lambda: load_config(tmp_path))
    assert issue["path"] == "spec.providers.main.deployment.mode"
    assert "'dedicated'" in issue["message"] and "'in_replica'" in issue["message"]
