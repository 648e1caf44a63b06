"""A peer sub-run through two agent applications on real Serve: the boss agent calls
the helper agent as a tool, by handle, and the client gets one trace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ray import serve

from astromesh_ray.serve.local import deploy_apps
from astromesh_ray.spec import load_config
from astromesh_ray.testing import ScriptedOpenAIServer

AGENT = """\
apiVersion: astromesh/v1
kind: Agent
metadata:
  name: {name}
spec:
  model:
    primary: {{provider: openai_compat, model: {name}-model, endpoint: "{endpoint}"}}
  orchestration: {{max_iterations: 3, timeout_seconds: 30}}
  tools: {tools}
"""


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer() as server:
        yield server


@pytest.fixture(scope="module")
def api(
    serve_url: str, llm: ScriptedOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("peers")
    (root / "agents").mkdir()
    boss_tools = '[{name: ask_helper, type: agent, agent: helper, description: "Ask the helper."}]'
    for name, tools in (("boss", boss_tools), ("helper", "[]")):
        (root / "agents" / f"{name}.agent.yaml").write_text(
            AGENT.format(name=name, endpoint=llm.url, tools=tools)
        )
    apps = deploy_apps(load_config(root), config_dir=root)
    try:
        yield serve_url
    finally:
        for name in reversed(apps):
            serve.delete(name)


def test_a_peer_sub_run_across_two_agent_apps_is_one_trace(
    api: str, llm: ScriptedOpenAIServer
) -> None:
    llm.add_steps(
        {"tool_calls": [{"name": "ask_helper", "arguments": {"query": "what is 6*7?"}}]},
        "42",  # the helper's model
        "The helper says 42.",  # the boss's model, reading the tool result
    )
    reply = httpx.post(f"{api}/v1/agents/boss/run", json={"query": "ask"}, timeout=60)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    llm.assert_consumed()
    assert body["answer"] == "The helper says 42."
    assert [r["model"] for r in llm.requests[-3:]] == ["boss-model", "helper-model", "boss-model"]

    trace = body["trace"]
    spans = {s["span_id"]: s for s in trace}
    assert {s["trace_id"] for s in trace} == {body["trace_id"]}
    assert len(spans) == len(trace)

    def parent(span: dict[str, object]) -> dict[str, object]:
        return spans[str(span["parent_id"])]

    gateway = trace[0]
    assert gateway["name"] == "gateway" and gateway["parent_id"] is None
    runs = {s["attributes"]["agent"]: s for s in trace if s["name"] == "run"}
    assert parent(runs["boss"]) is gateway
    assert runs["boss"]["where"]["app"] == "agent-boss"
    # The helper ran in its own application, under the boss's tool-call span.
    tool = parent(runs["helper"])
    assert tool["name"] == "tool_call" and tool["attributes"]["tool"] == "ask_helper"
    assert parent(tool) is runs["boss"]
    assert runs["helper"]["where"]["app"] == "agent-helper"
    assert runs["helper"]["where"]["replica"] != runs["boss"]["where"]["replica"]
    # Its model call, and the provider span under it, in the helper's replica.
    helper_model = next(
        s
        for s in trace
        if s["name"] == "model_call" and s["parent_id"] == runs["helper"]["span_id"]
    )
    provider = next(s for s in trace if s["parent_id"] == helper_model["span_id"])
    assert provider["name"] == "provider.complete"
    assert provider["where"] == runs["helper"]["where"]
    # The sub-run is a step of the boss's run, and its model call counts in its usage.
    step = body["steps"][0]
    assert (
        step["tool"] == "ask_helper"
        and step["sub_run_id"] == runs["helper"]["attributes"]["run_id"]
    )
    assert body["usage"]["calls"] == 3
