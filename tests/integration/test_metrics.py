"""The gateway's Prometheus metrics on real Serve, scraped from Ray's metrics
endpoint (the port this node's Ray chose) after a few turns over HTTP: requests by
agent, route and status; latency and time-to-first-token histograms; tokens and
cost by provider and model; tool calls; errors by code; breaker states; active
sessions.  Ray exports them every few seconds: the test polls with a bounded wait."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from astromesh_ray.testing import ScriptedOpenAIServer

from .conftest import deployed, free_port

pytestmark = pytest.mark.integration

AGENT = """\
apiVersion: astromesh/v1
kind: Agent
metadata: {{name: {name}}}
spec:
  model:
    primary:
      provider: openai_compat
      model: metered-model
      endpoint: "{endpoint}"
      pricing: {{input_per_mtok: 1000, output_per_mtok: 2000}}
  prompts: {{system: "You do arithmetic."}}
  orchestration: {{pattern: react, max_iterations: 4, timeout_seconds: 30}}
  tools:
    - {{name: calculator, type: builtin}}
"""
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(model="metered-model") as server:
        yield server


@pytest.fixture(scope="module")
def api(
    serve_url: str, llm: ScriptedOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("metrics")
    (root / "agents").mkdir()
    (root / "agents" / "metered.agent.yaml").write_text(
        AGENT.format(name="metered", endpoint=llm.url)
    )
    unplugged = f"http://127.0.0.1:{free_port()}/v1"
    (root / "agents" / "meterless.agent.yaml").write_text(
        AGENT.format(name="meterless", endpoint=unplugged)
    )
    with deployed(root):
        yield serve_url


def _metrics_url() -> str:
    import ray

    node = ray._private.worker.global_worker.node
    return f"http://{node.node_ip_address}:{node.metrics_export_port}/metrics"


def scrape() -> Samples:
    text = httpx.get(_metrics_url(), timeout=10).text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "astromesh" in sample.name:
                # One series per gateway process: a redeployed gateway's old ones add up.
                key = (sample.name, frozenset(sample.labels.items()))
                samples[key] = samples.get(key, 0.0) + sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        v
        for (n, tags), v in samples.items()
        if n == name and set(labels.items()) <= dict(tags).items()
    )


def eventually(check: Callable[[Samples], bool], timeout_s: float = 90) -> Samples:
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape()
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(1)


def _tool_turn(api: str, llm: ScriptedOpenAIServer, session: str) -> None:
    llm.add_steps(
        {"tool_calls": [{"name": "calculator", "arguments": {"expression": "6*7"}}]},
        "It is 42.",
    )
    reply = httpx.post(
        f"{api}/v1/agents/metered/run",
        json={"query": "What is 6*7?", "session_id": session},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text


def test_turns_show_up_in_rays_prometheus_endpoint(api: str, llm: ScriptedOpenAIServer) -> None:
    _tool_turn(api, llm, "m-1")
    _tool_turn(api, llm, "m-2")
    llm.add_steps("Streaming four words.")
    with httpx.stream(
        "POST",
        f"{api}/v1/agents/metered/stream",
        json={"query": "hi", "session_id": "m-1"},
        timeout=60,
    ) as reply:
        assert reply.status_code == 200
        assert "event: run_finished" in "".join(reply.iter_text())
    failed = httpx.post(f"{api}/v1/agents/meterless/run", json={"query": "hi"}, timeout=60)
    assert failed.status_code == 502
    llm.assert_consumed()

    run_route = {"agent": "metered", "route": "/v1/agents/{name}/run"}
    stream_route = {"agent": "metered", "route": "/v1/agents/{name}/stream"}
    requests = "ray_astromesh_requests_total"

    def complete(s: Samples) -> bool:
        return (
            value(s, requests, status="200", **run_route) == 2
            and value(s, requests, status="200", **stream_route) == 1
            and value(s, "ray_astromesh_errors_total", agent="meterless") == 1
            and value(s, "ray_astromesh_tool_calls_total", agent="metered") == 2
            and value(s, "ray_astromesh_time_to_first_token_s_count", **stream_route) == 1
            # Histograms are exported apart from counters: wait for them too.
            and value(s, "ray_astromesh_request_latency_s_count", **run_route) == 2
        )

    samples = eventually(complete)
    assert value(samples, requests, status="200", **run_route) == 2
    assert value(samples, requests, status="200", **stream_route) == 1
    assert value(samples, requests, agent="meterless", status="502") == 1
    assert (
        value(samples, "ray_astromesh_errors_total", agent="meterless", code="provider_error") == 1
    )
    assert value(samples, "ray_astromesh_request_latency_s_count", **run_route) == 2
    assert value(samples, "ray_astromesh_request_latency_s_sum", **run_route) > 0
    assert value(samples, "ray_astromesh_time_to_first_token_s_count", **stream_route) == 1
    assert value(samples, "ray_astromesh_time_to_first_token_s_count", **run_route) == 0
    tool_calls = {"agent": "metered", "tool": "calculator", "outcome": "ok"}
    assert value(samples, "ray_astromesh_tool_calls_total", **tool_calls) == 2
    model = {"agent": "metered", "model": "metered-model"}
    # The scripted server counts words; every call reported both kinds of token.
    inputs = value(samples, "ray_astromesh_tokens_total", token_type="input", **model)
    outputs = value(samples, "ray_astromesh_tokens_total", token_type="output", **model)
    assert inputs > 0 and outputs > 0
    cost = value(samples, "ray_astromesh_cost_usd_total", **model)
    assert cost == pytest.approx((inputs * 1000 + outputs * 2000) / 1e6, rel=1e-3)
    # Two sessions had a run (m-1 twice); the agent that failed had none with an id.
    assert value(samples, "ray_astromesh_active_sessions", agent="metered") == 2
    assert value(samples, "ray_astromesh_active_sessions", agent="meterless") == 0
    # The metered agent's provider answered: its breaker is closed (0); the
    # unplugged one's failure was counted, its breaker still closed or open.
    breakers = {
        dict(tags)["provider"]: v
        for (name, tags), v in samples.items()
        if name == "ray_astromesh_breaker_state"
    }
    assert breakers and set(breakers.values()) <= {0.0, 1.0, 2.0}
    assert any(v == 0.0 for v in breakers.values())
