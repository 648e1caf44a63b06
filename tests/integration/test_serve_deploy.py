"""`ray start` + `serve deploy deployments/local.yaml`, as a user deploys on a cluster.

It runs its own Ray cluster (with the dashboard, which `serve deploy` talks to) in
a private temp dir, and stops exactly that cluster's processes afterwards
(``deploy_cluster.py``).  The committed config serves the example agent; with no
Ollama and no OPENAI_API_KEY here, a turn must answer 502 with a hint naming what to
start or set.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import yaml

from .deploy_cluster import ROOT, deploy_cluster


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with deploy_cluster() as cluster:
        config = yaml.safe_load((ROOT / "deployments" / "local.yaml").read_text())
        config["http_options"]["port"] = cluster.http_port
        config_file = tmp_path_factory.mktemp("deploy") / "serve.yaml"
        config_file.write_text(yaml.safe_dump(config))
        cluster.deploy(config_file)
        url = cluster.url
        cluster.wait_for(
            lambda: httpx.get(f"{url}/v1/agents/assistant", timeout=5).status_code == 200,
            "serve deploy did not come up",
        )
        yield url


def test_serve_deploy_serves_the_example_agent(deployed: str) -> None:
    listed = httpx.get(f"{deployed}/v1/agents").json()["agents"]
    assert [a["name"] for a in listed] == ["assistant"]
    assert listed[0]["tools"] == ["datetime_now", "calculator"]


def test_no_reachable_provider_is_502_naming_what_to_start_or_set(deployed: str) -> None:
    reply = httpx.post(
        f"{deployed}/v1/agents/assistant/run", json={"query": "What is 17 * 23?"}, timeout=120
    )
    assert reply.status_code == 502, reply.text
    error = reply.json()["error"]
    assert error["code"] == "provider_error"
    assert "ollama serve" in error["hint"] and "ollama pull llama3.1:8b" in error["hint"]
    assert "OPENAI_API_KEY" in error["hint"]
    assert "onnx-community/Qwen2.5-0.5B-Instruct" in error["message"]  # the third candidate
    assert [s["candidate"].split("-")[1] for s in error["route"]] == ["ollama", "openai", "onnx"]
