"""YAML agent -> ReAct with a tool call -> Ray Serve over real HTTP, against a real
OpenAI-compatible server on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIWebSocketRoute
from ray import serve

from astromesh_ray.serve.local import deploy_apps
from astromesh_ray.spec import load_config
from astromesh_ray.testing import ScriptedOpenAIServer

from .conftest import free_port
from .test_docs import README, table_rows

AGENT = """\
apiVersion: astromesh/v1
kind: Agent
metadata:
  name: {name}
spec:
  identity:
    description: "Does arithmetic."
  model:
    primary:
      provider: openai_compat
      model: scripted-model
      endpoint: "{endpoint}"
      parameters:
        temperature: 0.1
  prompts:
    system: "You help {{{{ customer }}}}."
  orchestration:
    pattern: react
    max_iterations: 4
    timeout_seconds: {timeout}
  tools:
    - name: calculator
      type: builtin
    - name: slow_echo
      type: internal
      function: "tests.integration.tool_functions:slow_echo"
"""


def write_agent(root: Path, name: str, endpoint: str, timeout: float = 30) -> None:
    agents = root / "agents"
    agents.mkdir(parents=True, exist_ok=True)
    text = AGENT.format(name=name, endpoint=endpoint, timeout=timeout)
    (agents / f"{name}.agent.yaml").write_text(text)


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer() as server:
        yield server


@pytest.fixture(scope="module")
def api(
    serve_url: str, llm: ScriptedOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    root = tmp_path_factory.mktemp("config")
    write_agent(root, "calc", llm.url)
    write_agent(root, "impatient", llm.url, timeout=1)
    write_agent(root, "unplugged", f"http://127.0.0.1:{free_port()}/v1")
    apps = deploy_apps(load_config(root), config_dir=root)
    try:
        yield serve_url
    finally:
        for name in reversed(apps):
            serve.delete(name)


def test_react_turn_with_a_tool_call_over_http(api: str, llm: ScriptedOpenAIServer) -> None:
    llm.add_steps(
        *[
            {"tool_calls": [{"name": "calculator", "arguments": {"expression": "(2+3)*4"}}]},
            "(2+3)*4 is 20.",
        ]
    )
    reply = httpx.post(
        f"{api}/v1/agents/calc/run",
        json={"query": "What is (2+3)*4?", "session_id": "s-1", "context": {"customer": "Ada"}},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["answer"] == "(2+3)*4 is 20."
    assert body["session_id"] == "s-1"
    assert body["steps"][0]["tool"] == "calculator" and body["steps"][0]["result"] == "20"
    assert body["usage"]["calls"] == 2 and body["usage"]["total_tokens"] > 0

    # What went over the wire to the model: prompt, tools, then the tool result.
    first, second = llm.requests[-2:]
    assert first["messages"][0] == {"role": "system", "content": "You help Ada."}
    assert first["temperature"] == 0.1
    assert {t["function"]["name"] for t in first["tools"]} == {"calculator", "slow_echo"}
    assert second["messages"][-1]["role"] == "tool" and second["messages"][-1]["content"] == "20"

    # The trace shows the model called from the agent's own replica (a remote API: no
    # provider deployment in between), where the tool ran too.
    spans = {s["name"]: s for s in reversed(body["trace"])}  # the first of each name
    model_span, tool_span = spans["model_call"], spans["tool_call"]
    assert model_span["where"]["app"] == tool_span["where"]["app"] == "agent-calc"
    assert model_span["where"]["replica"] == tool_span["where"]["replica"]
    provider_span = spans["provider.complete"]
    assert provider_span["attributes"]["mode"] == "in_replica"
    assert provider_span["where"] == model_span["where"]
    assert provider_span["parent_id"] == model_span["span_id"]
    # One trace, parented: the edge span first, in the agent's own replica (the agent's
    # application answers its routes itself: no gateway hop), then the run.
    gateway, run = body["trace"][0], body["trace"][1]
    assert gateway["name"] == "gateway" and gateway["where"]["app"] == "agent-calc"
    assert gateway["where"]["replica"] == run["where"]["replica"]
    assert run["name"] == "run" and run["parent_id"] == gateway["span_id"]
    assert {s["trace_id"] for s in body["trace"]} == {body["trace_id"]}
    provider_span = spans["provider.complete"]
    assert provider_span["parent_id"] == model_span["span_id"]
    assert provider_span["where"]["app"] == model_span["where"]["app"]
    assert model_span["parent_id"] == run["span_id"] == tool_span["parent_id"]


def test_agent_listing_and_health(api: str) -> None:
    assert httpx.get(f"{api}/health").json()["status"] == "ok"
    listed = httpx.get(f"{api}/v1/agents").json()["agents"]
    assert [a["name"] for a in listed] == ["calc", "impatient", "unplugged"]
    calc = httpx.get(f"{api}/v1/agents/calc").json()
    assert calc["description"] == "Does arithmetic."
    assert calc["tools"] == ["calculator", "slow_echo"] and calc["pattern"] == "react"
    assert calc["source"] == "calc.agent.yaml"  # the file name, not the server's path


def test_unknown_agent_is_404(api: str) -> None:
    for reply in (
        httpx.get(f"{api}/v1/agents/nope"),
        httpx.post(f"{api}/v1/agents/nope/run", json={"query": "hi"}),
    ):
        assert reply.status_code == 404
        error = reply.json()["error"]
        assert error["code"] == "agent_not_found" and "calc" in error["hint"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "query"),
        ({"query": ""}, "query"),
        ({"query": "hi", "context": "not an object"}, "context"),
        ({"query": "hi", "session_id": "bad id with spaces"}, "session_id"),
        ({"query": "hi", "surprise": 1}, "surprise"),
    ],
)
def test_invalid_body_is_422_naming_the_field(
    api: str, body: dict[str, object], field: str
) -> None:
    reply = httpx.post(f"{api}/v1/agents/calc/run", json=body)
    assert reply.status_code == 422
    error = reply.json()["error"]
    assert error["code"] == "invalid_request"
    assert [f["field"] for f in error["fields"]] == [field]


def test_oversized_body_is_413(api: str) -> None:
    reply = httpx.post(f"{api}/v1/agents/calc/run", json={"query": "x" * (2 * 1024 * 1024)})
    assert reply.status_code == 413
    assert reply.json()["error"]["code"] == "request_too_large"


def test_oversized_chunked_body_is_413(api: str) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield b'{"query": "'
        for _ in range(40):
            yield b"x" * 64 * 1024
        yield b'"}'

    reply = httpx.post(
        f"{api}/v1/agents/calc/run",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert reply.request.headers.get("transfer-encoding") == "chunked"
    assert reply.status_code == 413, reply.text
    assert reply.json()["error"]["code"] == "request_too_large"


def test_unknown_route_and_wrong_method_use_the_error_envelope(api: str) -> None:
    reply = httpx.get(f"{api}/v1/nope")
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "not_found"
    assert reply.json()["error"]["hint"]
    reply = httpx.get(f"{api}/v1/agents/calc/run")
    assert reply.status_code == 405
    assert reply.json()["error"]["code"] == "method_not_allowed"
    assert reply.headers["allow"] == "POST"


def test_chunked_body_under_the_limit_still_reaches_the_agent(api: str) -> None:
    reply = httpx.post(
        f"{api}/v1/agents/calc/run",
        content=iter([b'{"query": ', b'"hi"}']),
        headers={"content-type": "application/json"},
    )
    # The body was read whole: the run fails only on the missing prompt variable.
    assert reply.status_code == 422
    assert "'customer' is undefined" in reply.json()["error"]["message"]


def test_missing_prompt_variable_is_422(api: str, llm: ScriptedOpenAIServer) -> None:
    reply = httpx.post(f"{api}/v1/agents/calc/run", json={"query": "hi"})
    assert reply.status_code == 422
    assert "'customer' is undefined" in reply.json()["error"]["message"]


def test_unreachable_provider_is_502_with_a_hint(api: str) -> None:
    reply = httpx.post(
        f"{api}/v1/agents/unplugged/run",
        json={"query": "hi", "context": {"customer": "x"}},
        timeout=60,
    )
    assert reply.status_code == 502
    error = reply.json()["error"]
    assert error["code"] == "provider_error"
    assert error["hint"] and "127.0.0.1" in error["hint"]


def test_timeout_is_504_with_the_partial_trace(api: str, llm: ScriptedOpenAIServer) -> None:
    llm.add_steps(
        *[{"tool_calls": [{"name": "slow_echo", "arguments": {"text": "hi", "seconds": 20}}]}]
    )
    reply = httpx.post(
        f"{api}/v1/agents/impatient/run",
        json={"query": "hi", "context": {"customer": "x"}},
        timeout=60,
    )
    assert reply.status_code == 504
    error = reply.json()["error"]
    assert error["code"] == "run_timeout" and "timeout_seconds" in error["message"]
    names = [s["name"] for s in error["trace"]]
    assert names == ["gateway", "run", "model_call", "provider.complete", "tool_call"]
    assert error["trace"][-1]["status"] == "error"


@pytest.mark.parametrize(
    ("route", "extra", "headers"),
    [
        ("stream", {}, {}),
        ("run", {"stream": True}, {}),
        ("run", {}, {"Accept": "text/event-stream"}),
    ],
    ids=["stream-route", "run-stream-true", "run-accept-header"],
)
def test_stream_sends_server_sent_events(
    api: str,
    llm: ScriptedOpenAIServer,
    route: str,
    extra: dict[str, Any],
    headers: dict[str, str],
) -> None:
    llm.add_steps(
        *[
            {"tool_calls": [{"name": "calculator", "arguments": {"expression": "6*7"}}]},
            "six times seven is 42",
        ]
    )
    events: list[tuple[str, dict[str, object]]] = []
    with httpx.stream(
        "POST",
        f"{api}/v1/agents/calc/{route}",
        json={"query": "6*7?", "context": {"customer": "x"}, **extra},
        headers=headers,
        timeout=60,
    ) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        kind = ""
        for line in reply.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind, json.loads(line.removeprefix("data: "))))
    kinds = [k for k, _ in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert all(k == d["type"] for k, d in events)
    assert "tool_result" in kinds and "step" in kinds
    assert [d["step"]["type"] for k, d in events if k == "step"] == ["tool_call", "answer"]
    tokens = [d for k, d in events if k == "token"]
    answer = "".join(str(d["text"]) for d in tokens if d["channel"] == "answer")
    assert answer == "six times seven is 42"
    # The tool call's arguments streamed too, on their own channel, as the model wrote them.
    arguments = "".join(str(d["text"]) for d in tokens if d["channel"] == "tool_args")
    assert json.loads(arguments) == {"expression": "6*7"}
    assert llm.requests[-1]["stream"] is True  # tokens really streamed from the provider

    # Streamed model calls, too, are traced where they ran: in the agent's replica.
    result: Any = events[-1][1]["result"]
    assert result["trace"][0]["name"] == "gateway"
    model_spans = [s for s in result["trace"] if s["name"] == "model_call"]
    tool_span = next(s for s in result["trace"] if s["name"] == "tool_call")
    assert len(model_spans) == 2
    for span in model_spans:
        assert span["where"] == tool_span["where"], span["where"]
    streamed = [s for s in result["trace"] if s["name"] == "provider.stream"]
    assert [s["attributes"]["mode"] for s in streamed] == ["in_replica", "in_replica"]
    model_events: list[Any] = [d for k, d in events if k == "model_call"]
    assert [d["where"]["app"] for d in model_events] == ["agent-calc", "agent-calc"]


def test_stream_errors_before_the_first_event_keep_their_status(api: str) -> None:
    reply = httpx.post(f"{api}/v1/agents/calc/stream", json={"query": "hi"})
    assert reply.status_code == 422
    assert reply.json()["error"]["code"] == "invalid_request"
    reply = httpx.post(f"{api}/v1/agents/calc/run", json={"query": "hi", "stream": True})
    assert reply.status_code == 422
    assert reply.json()["error"]["code"] == "invalid_request"


def test_json_is_the_answer_unless_a_stream_is_asked_for(
    api: str, llm: ScriptedOpenAIServer
) -> None:
    llm.add_steps("plain")
    reply = httpx.post(
        f"{api}/v1/agents/calc/run",
        json={"query": "q", "context": {"customer": "x"}},
        headers={"Accept": "application/json, text/event-stream"},
        timeout=60,
    )
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.json()["answer"] == "plain"


def test_readme_routes_are_the_served_routes(api: str) -> None:
    documented = {
        (method.strip("`"), path.strip("`"))
        for method, path, _ in table_rows(README, "| Method | Path | What |")
    }
    paths = httpx.get(f"{api}/openapi.json").json()["paths"]
    served = {(method.upper(), path) for path, ops in paths.items() for method in ops}
    # FastAPI lists no WebSocket route in openapi.json: those come from the app itself
    # (Serve nests the ingress class's routes in an included router).
    from ray.serve._private.http_util import _walk_fastapi_routes

    from astromesh_ray.serve.app import api as app

    served |= {
        ("WS", route.path)
        for route, _, _ in _walk_fastapi_routes(app)
        if isinstance(route, APIWebSocketRoute)
    }
    assert ("WS", "/v1/ws/agent/{name}") in served
    assert documented == served


def test_a_client_traceparent_is_continued(api: str, llm: ScriptedOpenAIServer) -> None:
    llm.add_steps("traced")
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    reply = httpx.post(
        f"{api}/v1/agents/calc/run",
        json={"query": "hi", "context": {"customer": "x"}},
        headers={"traceparent": f"00-{trace_id}-{parent}-01"},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["trace_id"] == trace_id
    assert body["trace"][0]["name"] == "gateway" and body["trace"][0]["parent_id"] == parent
    assert {s["trace_id"] for s in body["trace"]} == {trace_id}
    # What went to the model server carried no trace data: it is ours, not the model's.
    assert "trace_parent" not in llm.requests[-1]


def test_reserved_context_keys_are_422(api: str) -> None:
    reply = httpx.post(
        f"{api}/v1/agents/calc/run",
        json={"query": "hi", "context": {"customer": "x", "query": "shadow"}},
        timeout=60,
    )
    assert reply.status_code == 422
    error = reply.json()["error"]
    assert error["code"] == "invalid_request" and error["field"] == "context.query"
