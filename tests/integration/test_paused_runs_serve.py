"""Client tools and approvals through Serve over HTTP: a run paused on replica A is
resumed after A is killed and restarted, on the replica that replaced it (B), from
the paused state in the data directory's SQLite file."""

from __future__ import annotations

import os
import signal
import time
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
  name: parts
spec:
  model:
    primary:
      provider: openai_compat
      model: scripted-model
      endpoint: "{endpoint}"
  orchestration:
    max_iterations: 4
    timeout_seconds: 30
  tools:
    - name: search_parts
      type: client
      description: Search parts inventory by vehicle and part type
      parameters:
        vehicle_make:
          type: string
        part_type:
          type: string
          description: Type of part (brake pads, oil filter, etc.)
    - name: quote
      type: internal
      function: "tests.integration.tool_functions:quote"
      requires_approval: true
  deployment:
    num_replicas: 1
"""


@pytest.fixture(scope="module")
def api(
    serve_url: str, llm: ScriptedOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("paused")
    (root / "agents").mkdir()
    (root / "agents" / "parts.agent.yaml").write_text(AGENT.format(endpoint=llm.url))
    with deployed(root):
        yield serve_url


def _run_span(body: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in body["trace"] if s["name"] == "run")


def _wait_until_served(api: str, run_id: str) -> httpx.Response:
    """The agent answers again (its replica was replaced)."""
    deadline = time.monotonic() + 120
    while True:
        reply = httpx.get(f"{api}/v1/agents/parts/runs/{run_id}", timeout=30)
        if reply.status_code != 503 or time.monotonic() > deadline:
            return reply
        time.sleep(0.5)


def test_a_client_tool_run_resumes_on_the_replica_that_replaced_its_own(
    api: str, llm: ScriptedOpenAIServer
) -> None:
    llm.add_steps(
        {
            "tool_calls": [
                {
                    "name": "search_parts",
                    "arguments": {"vehicle_make": "Fiat", "part_type": "brake pads"},
                }
            ]
        },
        "Brake pads for your Fiat are in stock: 2 options.",
    )
    reply = httpx.post(f"{api}/v1/agents/parts/run", json={"query": "brake pads, Fiat"}, timeout=60)
    assert reply.status_code == 200, reply.text
    paused = reply.json()
    assert paused["status"] == "requires_action" and paused["answer"] == ""
    [pending] = paused["pending"]
    assert (pending["name"], pending["kind"]) == ("search_parts", "client")
    assert pending["arguments"] == {"vehicle_make": "Fiat", "part_type": "brake pads"}
    run_id = paused["run_id"]
    replica_a = _run_span(paused)["where"]

    # Replica A dies; Serve starts another in its place.
    os.kill(int(replica_a["pid"]), signal.SIGKILL)
    waiting = _wait_until_served(api, run_id)
    assert waiting.status_code == 200, waiting.text
    assert [p["id"] for p in waiting.json()["pending"]] == [pending["id"]]

    result = {"tool_call_id": pending["id"], "content": {"parts": ["P1", "P2"]}}
    reply = httpx.post(
        f"{api}/v1/agents/parts/runs/{run_id}/tool_results",
        json={"tool_results": [result]},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    done = reply.json()
    assert done["status"] == "completed" and done["run_id"] == run_id
    assert done["answer"] == "Brake pads for your Fiat are in stock: 2 options."
    replica_b = _run_span(done)["where"]
    assert replica_b["pid"] != replica_a["pid"]
    assert replica_b["replica"] != replica_a["replica"]
    # What the model read: the client's result, as the tool message.
    assert llm.requests[-1]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": pending["id"],
        "content": '{"parts":["P1","P2"]}',
    }
    assert [s["tool"] for s in done["steps"] if s["type"] == "tool_call"] == ["search_parts"]

    # An answer is single-use.
    again = httpx.post(
        f"{api}/v1/agents/parts/runs/{run_id}/tool_results",
        json={"tool_results": [result]},
        timeout=60,
    )
    assert again.status_code == 404
    assert again.json()["error"]["code"] == "run_not_found"


def test_an_approval_over_http(api: str, llm: ScriptedOpenAIServer) -> None:
    llm.add_steps(
        {"tool_calls": [{"name": "quote", "arguments": {"part": "P1", "quantity": 2}}]},
        "Your quote is ready.",
    )
    paused = httpx.post(f"{api}/v1/agents/parts/run", json={"query": "quote P1"}, timeout=60)
    body = paused.json()
    assert body["status"] == "requires_action", body
    [pending] = body["pending"]
    assert pending["kind"] == "approval"
    run_id = body["run_id"]

    # Answers that do not fit are refused, and change nothing.
    wrong = httpx.post(
        f"{api}/v1/agents/parts/runs/{run_id}/tool_results",
        json={"tool_results": [{"tool_call_id": pending["id"], "content": "x"}]},
        timeout=60,
    )
    assert wrong.status_code == 422
    assert "is an approval call" in wrong.json()["error"]["message"]
    unknown = httpx.post(
        f"{api}/v1/agents/parts/runs/{run_id}/approve",
        json={"tool_call_ids": ["nope"]},
        timeout=60,
    )
    assert unknown.status_code == 422 and "not waiting on tool call 'nope'" in unknown.text

    retry = httpx.post(f"{api}/v1/agents/parts/runs/{run_id}/retry", timeout=60)
    assert retry.status_code == 422 and "answer those instead" in retry.text

    reply = httpx.post(f"{api}/v1/agents/parts/runs/{run_id}/approve", timeout=60)
    assert reply.status_code == 200, reply.text
    done = reply.json()
    assert done["answer"] == "Your quote is ready."
    [step] = [s for s in done["steps"] if s["type"] == "tool_call"]
    assert (step["tool"], step["result"], step["is_error"]) == ("quote", "P1 x2: 84.00", False)
    tool_span = next(s for s in done["trace"] if s["name"] == "tool_call")
    assert tool_span["attributes"]["approved"] is True
    # One trace across both requests: the resume joined the paused run's.
    assert {s["trace_id"] for s in done["trace"]} == {body["trace_id"]}
    assert [s["name"] for s in done["trace"]].count("model_call") == 2


def test_bad_run_ids_and_bodies(api: str) -> None:
    bad = httpx.post(f"{api}/v1/agents/parts/runs/not-a-run/approve", timeout=30)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "run_id"
    missing = httpx.post(f"{api}/v1/agents/parts/runs/{'a' * 32}/approve", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "run_not_found"
    empty = httpx.post(
        f"{api}/v1/agents/parts/runs/{'a' * 32}/tool_results",
        json={"tool_results": []},
        timeout=30,
    )
    assert empty.status_code == 422
    extra = httpx.post(
        f"{api}/v1/agents/parts/runs/{'a' * 32}/tool_results",
        json={"tool_results": [{"tool_call_id": "c", "content": "x", "secret": 1}]},
        timeout=30,
    )
    assert extra.status_code == 422
