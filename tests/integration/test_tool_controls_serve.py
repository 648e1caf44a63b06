"""Tool controls under Serve, over HTTP: a rate limit counted across replicas by the
one tool-state actor, a Python tool with resources running as a Ray task outside the
agent's replica, and a tool the YAML does not grant refused whatever the model asks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from astromesh_ray.testing import ScriptedOpenAIServer

from .conftest import deployed

AGENT = """\
apiVersion: astromesh/v1
kind: Agent
metadata:
  name: limited
spec:
  model:
    primary:
      provider: openai_compat
      model: scripted-model
      endpoint: "{endpoint}"
  orchestration:
    max_iterations: 3
    timeout_seconds: 60
  tools:
    - name: where
      function: "tests.integration.tool_functions:where_am_i"
      rate_limit: {{max_calls: 2, window_seconds: 3600}}
    - name: placed
      function: "tests.integration.tool_functions:where_am_i"
      resources: {{num_cpus: 1}}
    - name: calculator
      type: builtin
  permissions:
    allowed_actions: [where, placed]
  deployment:
    num_replicas: 2
"""


@pytest.fixture(scope="module")
def api(
    serve_url: str, llm: ScriptedOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("limits")
    (root / "agents").mkdir()
    (root / "agents" / "limited.agent.yaml").write_text(AGENT.format(endpoint=llm.url))
    with deployed(root):
        yield serve_url


def _turn(api: str, llm: ScriptedOpenAIServer, tool: str) -> dict[str, Any]:
    llm.add_steps({"tool_calls": [{"name": tool, "arguments": {}}]}, "done")
    reply = httpx.post(f"{api}/v1/agents/limited/run", json={"query": "go"}, timeout=60)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def _tool_step(body: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in body["steps"] if s["type"] == "tool_call")


def test_a_rate_limit_holds_across_the_agents_replicas(api: str, llm: ScriptedOpenAIServer) -> None:
    results = [_tool_step(_turn(api, llm, "where")) for _ in range(4)]
    assert [r["is_error"] for r in results] == [False, False, True, True]
    assert "rate limited: at most 2 call(s) per 3600 s for agent 'limited'" in results[2]["result"]


def test_a_tool_with_resources_runs_as_a_ray_task(api: str, llm: ScriptedOpenAIServer) -> None:
    body = _turn(api, llm, "placed")
    step = _tool_step(body)
    assert not step["is_error"], step
    replica_pid = next(s for s in body["trace"] if s["name"] == "run")["where"]["pid"]
    ran = dict(part.split("=", 1) for part in step["result"].split())
    assert ran["pid"] != replica_pid
    assert ran["task"] != "-"  # inside a Ray task, not an actor method


def test_a_tool_not_granted_is_refused(api: str, llm: ScriptedOpenAIServer) -> None:
    step = _tool_step(_turn(api, llm, "calculator"))
    assert step["is_error"]
    assert "not permitted for this agent (spec.permissions.allowed_actions)" in step["result"]
    offered = {t["function"]["name"] for t in llm.requests[-2]["tools"]}
    assert offered == {"where", "placed"}
