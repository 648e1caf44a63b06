"""OpenTelemetry export and ``GET /v1/traces/{id}`` on real Serve over HTTP.

The replica that answers a run (here the agent's own application, which serves
``/v1/agents/{name}/...``) sends its spans, as OTLP/HTTP protobuf, to a loopback
receiver written here (decoded with opentelemetry-proto's
``ExportTraceServiceRequest``).  A tool-calling turn's tree arrives whole (edge span
-> run -> model call -> the provider's span; the tool call), parents kept, under the
reply's ``trace_id``;
neither the provider's API key nor an email the PII guardrail redacted is in what
was sent.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from astromesh_ray.testing import ScriptedOpenAIServer

from .conftest import deployed

pytestmark = pytest.mark.integration

# In the environment before the session's Ray starts (at collection), so its
# workers, the agent's and the gateway's replicas, have them.
API_KEY = "sk-telemetry-3c1f9a7e5d"
os.environ["ASTRO_TELEMETRY_KEY"] = API_KEY
os.environ["ASTRO_OTLP_HEADERS"] = "x-collector-key=ck-42"
EMAIL = "jane.doe@example.com"


class OTLPReceiver:
    """A loopback OTLP/HTTP traces endpoint: keeps each request's body and headers."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.spans: list[tuple[dict[str, Any], Any]] = []  # (resource attributes, span)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                request = ExportTraceServiceRequest.FromString(body)
                with lock:
                    receiver.bodies.append(body)
                    receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                    for resource_spans in request.resource_spans:
                        resource = {
                            a.key: a.value.string_value for a in resource_spans.resource.attributes
                        }
                        for scope_spans in resource_spans.scope_spans:
                            receiver.spans.extend((resource, s) for s in scope_spans.spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def trace(self, trace_id: str, names: set[str], timeout_s: float = 60) -> list[Any]:
        """The spans of ``trace_id`` once every name in ``names`` has arrived (the
        gateway exports in batches, a few seconds apart)."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = [s for _, s in self.spans if s.trace_id.hex() == trace_id]
            if names <= {s.name for s in spans} or time.monotonic() > deadline:
                return spans
            time.sleep(0.25)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


RUNTIME = """\
apiVersion: astromesh/v1
kind: RuntimeConfig
metadata: {{name: traced}}
spec:
  telemetry:
    service_name: astromesh-test
    traces: {{exporter: otlp, endpoint: "{endpoint}", headers_env: ASTRO_OTLP_HEADERS}}
    recent: {{max_traces: 50, max_age_s: 600}}
"""
AGENT = """\
apiVersion: astromesh/v1
kind: Agent
metadata: {{name: traced}}
spec:
  model:
    primary:
      provider: openai_compat
      model: scripted-model
      endpoint: "{endpoint}"
      api_key_env: ASTRO_TELEMETRY_KEY
  prompts: {{system: "You do arithmetic."}}
  orchestration: {{pattern: react, max_iterations: 4}}
  tools:
    - {{name: calculator, type: builtin}}
  guardrails:
    input:
      - {{type: pii_detection, action: redact}}
"""


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    server = OTLPReceiver()
    yield server
    server.close()


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(require_api_key=API_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def api(
    serve_url: str,
    llm: ScriptedOpenAIServer,
    receiver: OTLPReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("telemetry")
    (root / "runtime.yaml").write_text(RUNTIME.format(endpoint=receiver.url))
    (root / "agents").mkdir()
    (root / "agents" / "traced.agent.yaml").write_text(AGENT.format(endpoint=llm.url))
    with deployed(root):
        yield serve_url


def _tool_turn(api: str, llm: ScriptedOpenAIServer) -> dict[str, Any]:
    llm.add_steps(
        {"tool_calls": [{"name": "calculator", "arguments": {"expression": "6*7"}}]},
        "It is 42.",
    )
    reply = httpx.post(
        f"{api}/v1/agents/traced/run",
        json={"query": f"I am {EMAIL}. What is 6*7?", "session_id": "s-otel"},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    assert body["answer"] == "It is 42."
    llm.assert_consumed()
    return body


def test_a_tool_turn_is_exported_as_one_tree_across_the_ray_hops(
    api: str, llm: ScriptedOpenAIServer, receiver: OTLPReceiver
) -> None:
    body = _tool_turn(api, llm)
    trace_id = body["trace_id"]
    names = {
        "gateway",
        "invoke_agent traced",
        "chat scripted-model",
        "execute_tool calculator",
        "provider.complete",
        "guardrail",
    }
    spans = receiver.trace(trace_id, names)
    assert names <= {s.name for s in spans}
    # The same spans as the reply's trace: our ids, one trace id, parents kept.
    ours = {s["span_id"]: s for s in body["trace"]}
    assert {s.span_id.hex() for s in spans} == set(ours)
    for span in spans:
        assert (span.parent_span_id.hex() or None) == ours[span.span_id.hex()]["parent_id"]
        assert span.end_time_unix_nano >= span.start_time_unix_nano > 0

    def one(name: str) -> Any:
        (found,) = [s for s in spans if s.name == name] or [None]
        return found

    def attrs(span: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for a in span.attributes:
            value = a.value
            out[a.key] = getattr(value, value.WhichOneof("value"))
        return out

    gateway, run, tool = one("gateway"), one("invoke_agent traced"), one("execute_tool calculator")
    chats = [s for s in spans if s.name == "chat scripted-model"]
    providers = [s for s in spans if s.name == "provider.complete"]
    assert len(chats) == len(providers) == 2
    assert run.parent_span_id == gateway.span_id and not gateway.parent_span_id
    assert {c.parent_span_id for c in chats} == {run.span_id} == {tool.parent_span_id}
    # Each model call's provider-replica span is its child.
    assert sorted(p.parent_span_id for p in providers) == sorted(c.span_id for c in chats)
    provider = providers[0]
    # Where each ran: all in the agent's replica, which answered its own route (the
    # edge span) and called the API itself; that replica exported them.
    assert attrs(gateway)["astromesh.where.app"] == "agent-traced"
    assert attrs(run)["astromesh.where.app"] == "agent-traced"
    assert attrs(provider)["astromesh.where.app"] == "agent-traced"
    assert attrs(provider)["astromesh.mode"] == "in_replica"
    chat = attrs(chats[0])
    assert chat["gen_ai.operation.name"] == "chat"
    assert chat["gen_ai.request.model"] == "scripted-model"
    assert chat["gen_ai.usage.input_tokens"] > 0 and chat["gen_ai.usage.output_tokens"] > 0
    assert chat["astromesh.route"].startswith("provider-")
    assert attrs(tool)["gen_ai.tool.name"] == "calculator"
    assert attrs(tool)["gen_ai.tool.call.id"] == body["steps"][0]["id"]
    assert attrs(run)["gen_ai.agent.name"] == "traced"
    assert attrs(one("guardrail"))["astromesh.guardrail.action"] == "redact"
    # The resource and the collector's header from headers_env.
    assert {r["service.name"] for r, _ in receiver.spans} == {"astromesh-test"}
    assert all(h.get("x-collector-key") == "ck-42" for h in receiver.headers)
    assert all(h.get("content-type") == "application/x-protobuf" for h in receiver.headers)
    # Neither the provider's API key (it reached the model server) nor the redacted
    # email is in anything sent to the collector.
    assert llm.request_headers[-1]["authorization"] == f"Bearer {API_KEY}"
    sent = b"".join(receiver.bodies)
    assert API_KEY.encode() not in sent and EMAIL.encode() not in sent
    assert b"sk-telemetry" not in sent and b"jane.doe" not in sent


def test_recent_traces_route_returns_the_tree(api: str, llm: ScriptedOpenAIServer) -> None:
    body = _tool_turn(api, llm)
    reply = httpx.get(f"{api}/v1/traces/{body['trace_id']}", timeout=30)
    assert reply.status_code == 200, reply.text
    tree = reply.json()
    assert tree["trace_id"] == body["trace_id"] and tree["span_count"] == len(body["trace"])
    (root,) = tree["spans"]
    assert root["name"] == "gateway" and root["span_id"] == body["trace"][0]["span_id"]
    (run,) = root["children"]
    assert run["name"] == "run"
    kinds = [c["name"] for c in run["children"]]
    assert kinds.count("model_call") == 2 and "tool_call" in kinds
    model_call = next(c for c in run["children"] if c["name"] == "model_call")
    assert [c["name"] for c in model_call["children"]] == ["provider.complete"]

    unknown = httpx.get(f"{api}/v1/traces/{'0' * 31}1", timeout=30)
    assert unknown.status_code == 404
    error = unknown.json()["error"]
    assert error["code"] == "trace_not_found" and "another replica" in error["hint"]
    bad = httpx.get(f"{api}/v1/traces/not-a-trace", timeout=30)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"


def test_a_streamed_run_is_exported_too(
    api: str, llm: ScriptedOpenAIServer, receiver: OTLPReceiver
) -> None:
    llm.add_steps("Streamed answer here.")
    with httpx.stream(
        "POST", f"{api}/v1/agents/traced/stream", json={"query": "hello"}, timeout=60
    ) as reply:
        assert reply.status_code == 200
        text = "".join(reply.iter_text())
    assert "event: run_finished" in text
    marker = '"trace_id": "'
    trace_id = text[text.rindex(marker) + len(marker) :][:32]
    spans = receiver.trace(trace_id, {"gateway", "invoke_agent traced", "provider.stream"})
    assert {"gateway", "invoke_agent traced", "provider.stream"} <= {s.name for s in spans}
