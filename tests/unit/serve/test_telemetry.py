"""The gateway's telemetry without Ray: OpenTelemetry spans from a recorded run's
trace (GenAI conventions, ids, parents, times, status), the recent-traces ring, the
metrics of an ended run, and the ``telemetry`` block of runtime.yaml."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import ValidationError

from astromesh_ray.core.context import RunRequest
from astromesh_ray.core.messages import ToolCall
from astromesh_ray.core.trace import child_span
from astromesh_ray.errors import AgentNotFound, BudgetExceeded, ConfigError
from astromesh_ray.serve.gateway_spans import gateway_span
from astromesh_ray.serve.metrics import Point, RunMetrics, RunOutcome, run_points
from astromesh_ray.serve.outcome import ok
from astromesh_ray.serve.run_events import RunEvents
from astromesh_ray.serve.telemetry import (
    GatewayTelemetry,
    RecentTraces,
    TraceExport,
    span_exporter,
    span_tree,
)
from astromesh_ray.spec.config import RecentTracesSpec, RuntimeConfigSpec, TelemetrySpec, TracesSpec
from astromesh_ray.testing import ScriptedProvider

from ..core.engine_helpers import runtime


async def recorded_trace() -> tuple[list[dict[str, Any]], str]:
    """A tool-calling turn's spans as the gateway holds them: its own span first, the
    run's, and a provider replica's span under the first model call."""
    provider = ScriptedProvider(
        [ToolCall("c1", "calculator", {"expression": "(2+3)*4"}), "It is 20."], name="openai"
    )
    gateway = gateway_span(None, "t", {"app": "gateway", "replica": "g#1"})
    result = await runtime(provider, name="t").run(
        RunRequest(
            query="what is (2+3)*4?", session_id="s1", trace_parent=gateway.context.traceparent
        )
    )
    provider.assert_consumed()
    spans = [s.to_dict() for s in result.trace]
    first_call = next(s for s in spans if s["name"] == "model_call")
    remote = child_span(
        f"00-{first_call['trace_id']}-{first_call['span_id']}-01",
        "provider.complete",
        {"app": "provider-openai", "replica": "p#1"},
        provider="openai",
    )
    assert remote is not None
    remote.end()
    gateway.end()
    return [gateway.to_dict(), *spans, remote.to_dict()], result.trace_id


def exported(spans: Sequence[dict[str, Any]]) -> list[Any]:
    memory = InMemorySpanExporter()
    TraceExport(SimpleSpanProcessor(memory), "svc").export(spans)
    return list(memory.get_finished_spans())


async def test_a_tool_turn_becomes_one_otel_trace_with_our_ids_and_parents() -> None:
    spans, trace_id = await recorded_trace()
    out = exported(spans)
    assert len(out) == len(spans) == 6
    by_id = {f"{s.context.span_id:016x}": s for s in out}
    assert set(by_id) == {s["span_id"] for s in spans}
    assert {f"{s.context.trace_id:032x}" for s in out} == {trace_id}
    for ours in spans:
        theirs = by_id[ours["span_id"]]
        parent = f"{theirs.parent.span_id:016x}" if theirs.parent else None
        assert parent == ours["parent_id"]
        assert theirs.start_time == int(ours["start_time"] * 1e9)
        assert theirs.end_time - theirs.start_time == int(ours["duration_ms"] * 1e6)
        assert theirs.status.status_code is StatusCode.OK
        assert theirs.resource.attributes["service.name"] == "svc"
    names = [s.name for s in out]
    assert names == [
        "gateway",
        "invoke_agent t",
        "chat scripted",
        "execute_tool calculator",
        "chat scripted",
        "provider.complete",
    ]
    gateway, run, chat, tool, _, remote = out
    assert gateway.kind is SpanKind.SERVER and gateway.parent is None
    assert run.parent.span_id == gateway.context.span_id
    assert run.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert run.attributes["gen_ai.agent.name"] == "t"
    assert run.attributes["gen_ai.usage.input_tokens"] > 0
    assert chat.kind is SpanKind.CLIENT
    usage = spans[2]["attributes"]["usage"]
    assert (
        dict(chat.attributes).items()
        >= {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.system": "openai",
            "gen_ai.request.model": "scripted",
            "gen_ai.response.model": "scripted",
            "gen_ai.usage.input_tokens": usage["input_tokens"],
            "gen_ai.usage.output_tokens": usage["output_tokens"],
            "astromesh.cost_usd": usage["cost_usd"],
            "astromesh.role": "reasoner",
            "astromesh.iteration": 1,
        }.items()
    )
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "calculator"
    assert tool.attributes["gen_ai.tool.call.id"] == "c1"
    assert tool.parent.span_id == run.context.span_id
    assert remote.parent.span_id == chat.context.span_id and remote.kind is SpanKind.SERVER
    assert remote.attributes["astromesh.where.app"] == "provider-openai"
    assert gateway.attributes["astromesh.where.replica"] == "g#1"


def _span(name: str, span_id: str, parent: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "trace_id": "ab" * 16,
        "span_id": span_id,
        "parent_id": parent,
        "start_time": 1_700_000_000.0 + int(span_id, 16) / 1000,
        "duration_ms": 2.0,
        "status": "ok",
        "error": None,
        "where": {"host": "h"},
        "attributes": {},
        **extra,
    }


def test_only_scalar_attributes_leave_and_errors_keep_their_type() -> None:
    route = [
        {"candidate": "provider-a", "provider": "a", "reason": "primary", "breaker": "open",
         "outcome": "skipped: circuit open"},
        {"candidate": "provider-b", "provider": "b", "reason": "fallback", "breaker": "closed",
         "outcome": "failed: 500 from https://api.example/v1?key=sk-secret"},
        {"candidate": "provider-c", "provider": "c", "reason": "fallback", "breaker": "half_open",
         "outcome": "ok"},
    ]  # fmt: skip
    spans = [
        _span(
            "run",
            "0000000000000001",
            attributes={
                "agent": "a",
                "memory_warnings": ["redis: cannot connect to redis://:hunter2@db:6379"],
                "nested": {"password": "hunter2"},
            },
        ),
        _span(
            "model_call",
            "0000000000000002",
            "0000000000000001",
            status="error",
            error="ProviderError: upstream answered 500",
            attributes={"provider": "c", "model": "m", "route": route, "finish_reason": "stop"},
        ),
        _span(
            "guardrail",
            "0000000000000003",
            "0000000000000001",
            attributes={
                "guardrail": "pii_detection",
                "direction": "input",
                "action": "redact",
                "detail": "EMAIL_ADDRESS",
            },
        ),
        _span("tool_call", "0000000000000004", "0000000000000001", status="error", error="bad"),
        {**_span("run", "0000000000000005"), "span_id": "zz"},  # not one of ours: not sent
    ]
    run, chat, guardrail, tool = exported(spans)
    text = repr([dict(s.attributes) for s in (run, chat, guardrail, tool)])
    assert "hunter2" not in text and "sk-secret" not in text
    assert run.attributes["astromesh.memory_warnings"] == 1
    assert "astromesh.nested" not in run.attributes
    assert chat.status.status_code is StatusCode.ERROR
    assert chat.status.description == "ProviderError: upstream answered 500"
    assert chat.attributes["error.type"] == "ProviderError"
    assert chat.attributes["astromesh.route"] == "provider-c"
    assert chat.attributes["astromesh.route.reason"] == "fallback"
    assert list(chat.attributes["astromesh.route.steps"]) == [
        "provider-a:skipped:open",
        "provider-b:failed:closed",
        "provider-c:ok:half_open",
    ]
    assert list(chat.attributes["gen_ai.response.finish_reasons"]) == ["stop"]
    assert guardrail.name == "guardrail"
    assert guardrail.attributes["astromesh.guardrail.detail"] == "EMAIL_ADDRESS"
    assert guardrail.attributes["astromesh.guardrail.action"] == "redact"
    assert tool.attributes["error.type"] == "error" and tool.name == "execute_tool"


def test_recent_traces_are_bounded_expire_and_merge_a_resumed_run() -> None:
    now = [0.0]
    recent = RecentTraces(RecentTracesSpec(max_traces=2, max_age_s=60), clock=lambda: now[0])
    first = {**_span("gateway", "0000000000000001"), "trace_id": "01" * 16}
    recent.add([first])
    recent.add([{**_span("gateway", "0000000000000002"), "trace_id": "02" * 16}])
    # A resumed run of the first trace: joins it, and makes it the freshest.
    recent.add([{**_span("gateway", "0000000000000003"), "trace_id": "01" * 16}])
    recent.add([{**_span("gateway", "0000000000000004"), "trace_id": "03" * 16}])
    assert recent.get("02" * 16) is None  # evicted: the oldest of three
    assert [s["span_id"] for s in recent.get("01" * 16) or []] == [
        "0000000000000001",
        "0000000000000003",
    ]
    now[0] = 61.0
    assert recent.get("01" * 16) is None and recent.get("03" * 16) is None


def test_span_tree_nests_by_parent_in_start_order() -> None:
    spans = [
        _span("tool_call", "0000000000000003", "0000000000000002"),
        _span("run", "0000000000000002", "0000000000000001"),
        _span("gateway", "0000000000000001", "00000000000000ff"),  # the client's parent
        _span("model_call", "0000000000000004", "0000000000000002"),
    ]
    (root,) = span_tree(spans)
    assert root["name"] == "gateway"
    (run,) = root["children"]
    assert [c["name"] for c in run["children"]] == ["tool_call", "model_call"]


class Sink:
    def __init__(self) -> None:
        self.points: list[Point] = []

    def apply(self, points: Sequence[Point]) -> None:
        self.points.extend(points)

    def total(self, name: str, **tags: str) -> float:
        return sum(
            p.value
            for p in self.points
            if p.name == name and all(p.tags.get(k) == v for k, v in tags.items())
        )


def telemetry(sink: Sink) -> tuple[GatewayTelemetry, InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    return (
        GatewayTelemetry(
            TelemetrySpec(),
            ["t", "other"],
            export=TraceExport(SimpleSpanProcessor(memory)),
            metrics=RunMetrics(["t", "other"], sink=sink),
        ),
        memory,
    )


async def test_a_finished_run_is_exported_kept_and_counted() -> None:
    spans, trace_id = await recorded_trace()
    sink = Sink()
    gateway, memory = telemetry(sink)
    span = gateway_span(None, "t", {"app": "gateway"}, trace_id)
    spans[0] = {**spans[0], "span_id": span.span_id}
    spans[1] = {**spans[1], "parent_id": span.span_id}
    with gateway.run("t", span, {"session_id": "s1"}, route="/v1/agents/{name}/run") as record:
        span.end()
        record.finished({"trace": spans, "session_id": "s1"})
    assert len(memory.get_finished_spans()) == 6
    assert len(gateway.recent.get(trace_id) or []) == 6
    route = {"agent": "t", "route": "/v1/agents/{name}/run"}
    assert sink.total("astromesh_requests", status="200", **route) == 1
    model_calls = [s for s in spans if s["name"] == "model_call"]
    expected = sum(s["attributes"]["usage"]["input_tokens"] for s in model_calls)
    tokens = {"agent": "t", "provider": "openai", "model": "scripted"}
    assert sink.total("astromesh_tokens", token_type="input", **tokens) == expected
    assert sink.total("astromesh_tool_calls", agent="t", tool="calculator", outcome="ok") == 1
    assert sink.total("astromesh_active_sessions", agent="t") == 1
    assert sink.total("astromesh_active_sessions", agent="other") == 0
    assert sink.total("astromesh_errors") == 0


def test_failures_count_their_status_and_code_and_unknown_agents_nothing() -> None:
    sink = Sink()
    gateway, memory = telemetry(sink)
    span = gateway_span(None, "t", {"app": "gateway"})
    with pytest.raises(BudgetExceeded), gateway.run("t", span, {}, route="r"):
        raise BudgetExceeded("over the cap", cap="session", trace=[])
    assert sink.total("astromesh_requests", agent="t", status="429") == 1
    assert sink.total("astromesh_errors", agent="t", code="budget_exceeded") == 1
    # The gateway span alone, ended with the error: exported and kept.
    (only,) = memory.get_finished_spans()
    assert only.status.status_code is StatusCode.ERROR
    assert gateway.recent.get(span.trace_id) is not None
    before = len(sink.points)
    with pytest.raises(AgentNotFound), gateway.run("nope", gateway_span(None, "nope", {}), {}):
        raise AgentNotFound("no agent named 'nope'")
    assert len(sink.points) == before
    record = gateway.run("t", gateway_span(None, "t", {}), {}, route="r")
    record.cancelled()
    record.finished({"trace": []})  # only the first end counts
    assert sink.total("astromesh_requests", agent="t", status="499") == 1
    assert sink.total("astromesh_requests", agent="t", status="200") == 0


def test_model_calls_count_for_the_agent_of_their_run_and_breaker_states() -> None:
    spans = [
        _span("run", "0000000000000001", attributes={"agent": "boss"}),
        _span("run", "0000000000000002", "0000000000000009", attributes={"agent": "peer"}),
        _span("tool_call", "0000000000000009", "0000000000000001", attributes={"tool": "ask"}),
        _span(
            "model_call",
            "0000000000000003",
            "0000000000000002",
            attributes={
                "provider": "p",
                "model": "m",
                "usage": {"input_tokens": 7, "output_tokens": 3, "cost_usd": 0.5},
                "route": [{"candidate": "provider-p", "breaker": "half_open", "outcome": "ok"}],
            },
        ),
    ]
    points = run_points(RunOutcome("boss", "r", 200, 0.1, spans))
    tokens = [p for p in points if p.name == "astromesh_tokens"]
    assert {(p.tags["agent"], p.tags["token_type"], p.value) for p in tokens} == {
        ("peer", "input", 7),
        ("peer", "output", 3),
    }
    (cost,) = [p for p in points if p.name == "astromesh_cost_usd"]
    assert cost.value == 0.5 and cost.tags["agent"] == "peer"
    (tool,) = [p for p in points if p.name == "astromesh_tool_calls"]
    assert tool.tags == {"agent": "boss", "tool": "ask", "outcome": "ok"}
    (breaker,) = [p for p in points if p.name == "astromesh_breaker_state"]
    assert breaker.tags == {"provider": "provider-p"} and breaker.value == 1


def test_sessions_leave_the_window() -> None:
    now = [0.0]
    sink = Sink()
    metrics = RunMetrics(["t"], session_window_s=10, sink=sink, clock=lambda: now[0])
    for session in ("a", "b", "a"):
        metrics.record(RunOutcome("t", "r", 200, 0.1, session_id=session))
    assert sink.points[-1] == Point("astromesh_active_sessions", 2, {"agent": "t"})
    now[0] = 11.0
    metrics.record(RunOutcome("t", "r", 200, 0.1, session_id="c"))
    assert sink.points[-1] == Point("astromesh_active_sessions", 1, {"agent": "t"})


class Observer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def first_token(self) -> None:
        self.calls.append("first_token")

    def finished(self, result: dict[str, Any]) -> None:
        self.calls.append("finished")

    def failed(self, error: BaseException) -> None:
        self.calls.append("failed")

    def cancelled(self) -> None:
        self.calls.append("cancelled")


async def test_run_events_tell_the_observer_of_the_first_token_and_the_end() -> None:
    async def outcomes() -> AsyncIterator[Any]:
        for event in (
            {"type": "token", "text": "a"},
            {"type": "token", "text": "b"},
            {"type": "run_finished", "result": {"trace": []}},
        ):
            await asyncio.sleep(0)
            yield ok(event)

    observer = Observer()
    span = gateway_span(None, "t", {})
    async with RunEvents({"type": "run_started"}, outcomes(), span, observer) as events:
        kinds = [event["type"] async for event in events]
    assert kinds == ["run_started", "token", "token", "run_finished"]
    # RunRecord counts the first of each; the observer hears every token and the end.
    assert observer.calls == ["first_token", "first_token", "finished", "cancelled"]
    assert events.result is not None and events.result["trace"][0]["span_id"] == span.span_id


def test_the_telemetry_block_of_runtime_yaml() -> None:
    spec = RuntimeConfigSpec.model_validate(
        {
            "spec": {
                "telemetry": {
                    "service_name": "mesh",
                    "traces": {"exporter": "otlp", "endpoint": "http://c:4318/v1/traces"},
                    "recent": {"max_traces": 10, "max_age_s": 60},
                    "metrics": {"session_window_s": 120},
                }
            }
        }
    )
    telemetry = spec.spec.telemetry
    assert telemetry.traces.endpoint == "http://c:4318/v1/traces"
    assert telemetry.recent.max_traces == 10 and telemetry.metrics.session_window_s == 120
    assert RuntimeConfigSpec().spec.telemetry.traces.exporter == "none"
    with pytest.raises(ValidationError, match="extra"):
        TelemetrySpec.model_validate({"traces": {"exporter": "otlp", "sampler": "always"}})
    with pytest.raises(ValidationError, match="only used by exporter: otlp"):
        TracesSpec(exporter="console", endpoint="http://c:4318")
    with pytest.raises(ValidationError):
        TracesSpec.model_validate({"exporter": "jaeger"})


def test_otlp_headers_come_from_the_named_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = TracesSpec(exporter="otlp", endpoint="http://127.0.0.1:1/v1/traces", headers_env="H")
    monkeypatch.delenv("H", raising=False)
    with pytest.raises(ConfigError, match=r"\$H is not set"):
        span_exporter(spec)
    monkeypatch.setenv("H", "x-api-key=k1,tenant=t")
    exporter = span_exporter(spec)  # the headers sent: tests/integration/test_telemetry.py
    assert exporter is not None
    exporter.shutdown()
    assert span_exporter(TracesSpec()) is None


def test_the_console_exporter_prints_each_span_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    export = TraceExport.from_spec(TelemetrySpec(traces=TracesSpec(exporter="console")))
    assert export is not None
    export.export([_span("tool_call", "0000000000000007", attributes={"tool": "calculator"})])
    export.close()  # flushes the batch
    printed = capsys.readouterr().out
    assert '"name": "execute_tool calculator"' in printed
    assert '"span_id": "0x0000000000000007"' in printed
    assert TraceExport.from_spec(TelemetrySpec()) is None
