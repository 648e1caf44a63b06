"""What the gateway does with each run when it ends: export its span tree as
OpenTelemetry spans, keep it for ``GET /v1/traces/{id}``, and record its metrics.

The gateway is where the whole tree is known: the agent's spans, and those of the
other Ray hops (model calls in provider replicas, peer sub-runs, tasks), come back
merged in the run's ``trace``, under the gateway's own span.  So one place, at the
end of ``GatewayCore.call`` and of ``RunEvents``, covers every protocol.

Export (``spec.telemetry.traces`` of runtime.yaml): each span keeps its ids (the
trace id is the reply's ``trace_id``), its parent, start and end times and status;
its attributes are mapped to the OpenTelemetry GenAI semantic conventions where
they apply (``chat {model}``, ``execute_tool {tool}``, ``invoke_agent {agent}``
spans) and to ``astromesh.*`` otherwise.  Only scalar (or lists of scalar)
attributes go out, texts capped; never message contents, tool arguments or results
(spans do not hold them), nor the ``details`` of errors: a failed span carries its
error text (already what the client is told) and ``error.type``.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.re import parse_env_headers
from opentelemetry.util.types import AttributeValue
from ray.serve.context import _get_serve_request_context

from astromesh_ray import __version__
from astromesh_ray.core.trace import Span
from astromesh_ray.errors import AgentNotFound, AstromeshError, ConfigError
from astromesh_ray.serve.metrics import RunMetrics, RunOutcome
from astromesh_ray.spec.config import RecentTracesSpec, TelemetrySpec, TracesSpec

MAX_TEXT = 256  # characters of one exported string attribute (or status text)
MAX_SPANS = 5000  # spans kept per trace in the recent-traces ring
_HEX = re.compile(r"^[0-9a-f]+$")
_ERROR_TYPE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*): ")
_KINDS = {
    "gateway": SpanKind.SERVER,
    "model_call": SpanKind.CLIENT,
    "provider.complete": SpanKind.SERVER,
    "provider.stream": SpanKind.SERVER,
}
# Attributes whose values may hold exception texts (a backend's URL, say): counted.
_COUNTED = frozenset({"memory_warnings"})


def _scalar(value: Any) -> AttributeValue | None:
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value[:MAX_TEXT]
    if isinstance(value, list | tuple) and all(isinstance(v, str | int | float) for v in value):
        return [str(v)[:MAX_TEXT] for v in value][:64]
    return None


def _usage(out: dict[str, AttributeValue], usage: Any) -> None:
    if not isinstance(usage, Mapping):
        return
    for ours, theirs in (
        ("input_tokens", "gen_ai.usage.input_tokens"),
        ("output_tokens", "gen_ai.usage.output_tokens"),
        ("calls", "astromesh.usage.calls"),
    ):
        if isinstance(usage.get(ours), int):
            out[theirs] = usage[ours]
    if isinstance(usage.get("cost_usd"), int | float):
        out["astromesh.cost_usd"] = float(usage["cost_usd"])


def _route(out: dict[str, AttributeValue], route: Any) -> None:
    """The routing decision: the candidate that answered, and each step tried (its
    outcome's kind only: a failure's text is the provider's)."""
    steps = [s for s in route or () if isinstance(s, Mapping)]
    chosen = [s for s in steps if s.get("outcome") == "ok"]
    if chosen:
        out["astromesh.route"] = str(chosen[-1].get("candidate"))[:MAX_TEXT]
        if isinstance(chosen[-1].get("reason"), str):
            out["astromesh.route.reason"] = chosen[-1]["reason"][:MAX_TEXT]
    out["astromesh.route.steps"] = [
        f"{s.get('candidate')}:{str(s.get('outcome') or '').split(':')[0]}"
        f":{s.get('breaker') or ''}"[:MAX_TEXT]
        for s in steps
    ][:64]


def otel_name(span: Mapping[str, Any]) -> str:
    """The span's OpenTelemetry name (GenAI conventions for runs, model and tool calls)."""
    name, attributes = str(span.get("name")), span.get("attributes") or {}
    if name == "run":
        return f"invoke_agent {attributes.get('agent', '')}".strip()
    if name == "model_call" and attributes.get("model"):
        return f"chat {attributes['model']}"
    if name == "tool_call":
        return f"execute_tool {attributes.get('tool', '')}".strip()
    return name


def otel_attributes(span: Mapping[str, Any]) -> dict[str, AttributeValue]:
    """The span's attributes as OpenTelemetry attributes: scalar and safe only."""
    name = str(span.get("name"))
    attributes = dict(span.get("attributes") or {})
    out: dict[str, AttributeValue] = {"astromesh.span.name": name}
    if name == "run":
        out["gen_ai.operation.name"] = "invoke_agent"
        if isinstance(attributes.get("agent"), str):
            out["gen_ai.agent.name"] = attributes["agent"][:MAX_TEXT]
    elif name == "model_call":
        out["gen_ai.operation.name"] = "chat"
        provider, model = attributes.pop("provider", None), attributes.pop("model", None)
        if isinstance(provider, str):
            out["gen_ai.provider.name"] = out["gen_ai.system"] = provider[:MAX_TEXT]
        if isinstance(model, str):
            out["gen_ai.request.model"] = out["gen_ai.response.model"] = model[:MAX_TEXT]
        finish = attributes.pop("finish_reason", None)
        if isinstance(finish, str):
            out["gen_ai.response.finish_reasons"] = [finish[:MAX_TEXT]]
        _route(out, attributes.pop("route", None))
    elif name == "tool_call":
        out["gen_ai.operation.name"] = "execute_tool"
        tool, call_id = attributes.pop("tool", None), attributes.pop("call_id", None)
        if isinstance(tool, str):
            out["gen_ai.tool.name"] = tool[:MAX_TEXT]
        if isinstance(call_id, str):
            out["gen_ai.tool.call.id"] = call_id[:MAX_TEXT]
    elif name.startswith("provider.") and isinstance(attributes.get("provider"), str):
        out["gen_ai.provider.name"] = attributes["provider"][:MAX_TEXT]
    _usage(out, attributes.pop("usage", None))
    prefix = "astromesh.guardrail." if name == "guardrail" else "astromesh."
    for key, value in attributes.items():
        if key in _COUNTED:
            out[f"astromesh.{key}"] = len(value) if isinstance(value, list) else 1
        elif (mapped := _scalar(value)) is not None:
            out[prefix + key] = mapped
    for key, value in (span.get("where") or {}).items():
        if isinstance(value, str):
            out[f"astromesh.where.{key}"] = value[:MAX_TEXT]
    if span.get("status") == "error":
        match = _ERROR_TYPE.match(str(span.get("error") or ""))
        out["error.type"] = match.group(1) if match else "error"
    return out


def _ids_valid(span: Mapping[str, Any]) -> bool:
    trace_id, span_id = str(span.get("trace_id")), str(span.get("span_id"))
    parent = span.get("parent_id")
    return (
        len(trace_id) == 32
        and len(span_id) == 16
        and bool(_HEX.match(trace_id + span_id))
        and (parent is None or (len(str(parent)) == 16 and bool(_HEX.match(str(parent)))))
    )


def to_otel(
    span: Mapping[str, Any], resource: Resource, scope: InstrumentationScope
) -> ReadableSpan:
    """One of our spans (``Span.to_dict``) as a finished OpenTelemetry span."""
    trace_id = int(span["trace_id"], 16)
    context = SpanContext(trace_id, int(span["span_id"], 16), False, TraceFlags(TraceFlags.SAMPLED))
    parent = span.get("parent_id")
    start_ns = int(float(span["start_time"]) * 1e9)
    duration_ms = span.get("duration_ms")
    end_ns = start_ns + int(float(duration_ms or 0) * 1e6)
    status = Status(StatusCode.OK)
    if span.get("status") == "error":
        status = Status(StatusCode.ERROR, str(span.get("error") or "")[:MAX_TEXT])
    return ReadableSpan(
        name=otel_name(span),
        context=context,
        parent=SpanContext(trace_id, int(parent, 16), True, context.trace_flags)
        if parent
        else None,
        resource=resource,
        attributes=otel_attributes(span),
        kind=_KINDS.get(str(span.get("name")), SpanKind.INTERNAL),
        status=status,
        start_time=start_ns,
        end_time=end_ns,
        instrumentation_scope=scope,
    )


def span_exporter(spec: TracesSpec) -> SpanExporter | None:
    """The exporter ``spec`` names (``None`` for ``none``)."""
    if spec.exporter == "none":
        return None
    if spec.exporter == "console":
        return ConsoleSpanExporter(out=sys.stdout)  # the stdout of now, not of import time
    headers = None
    if spec.headers_env:
        raw = os.environ.get(spec.headers_env)
        if raw is None:
            raise ConfigError(
                f"spec.telemetry.traces.headers_env: ${spec.headers_env} is not set in this "
                "replica (the gateway's or an agent's: both export spans)",
                hint="set it where the gateway and the agents run (e.g. runtime_env env_vars), as "
                "'key=value,key2=value2'",
            )
        headers = dict(parse_env_headers(raw, liberal=True))
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=spec.endpoint, headers=headers, timeout=spec.timeout_s)


class TraceExport:
    """Our spans to an OpenTelemetry ``SpanProcessor`` (batched, off the request path)."""

    def __init__(self, processor: SpanProcessor, service_name: str = "astromesh") -> None:
        self._processor = processor
        self._resource = Resource.create(
            {"service.name": service_name, "service.version": __version__}
        )
        self._scope = InstrumentationScope("astromesh_ray", __version__)

    @staticmethod
    def from_spec(spec: TelemetrySpec) -> TraceExport | None:
        exporter = span_exporter(spec.traces)
        if exporter is None:
            return None
        return TraceExport(BatchSpanProcessor(exporter), spec.service_name)

    def export(self, spans: Sequence[Mapping[str, Any]]) -> None:
        for span in spans:
            if _ids_valid(span):  # spans are ours; a malformed one is not sent
                self._processor.on_end(to_otel(span, self._resource, self._scope))

    def close(self) -> None:
        self._processor.shutdown()  # flushes what is queued


def span_tree(spans: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Spans nested by parent (``children``, in start order); a span whose parent is
    not among them (the client's, or none) is a root."""
    nodes = {str(s["span_id"]): {**s, "children": []} for s in spans}
    roots: list[dict[str, Any]] = []
    for node in sorted(nodes.values(), key=lambda n: float(n.get("start_time") or 0)):
        parent = nodes.get(str(node.get("parent_id")))
        (parent["children"] if parent is not None and parent is not node else roots).append(node)
    return roots


class RecentTraces:
    """The spans of the last ``max_traces`` traces, each kept ``max_age_s`` after its
    last run (a resumed run joins its trace), in this replica's memory; each trace
    is its first run's caller's (an API key's id) and only it reads it back."""

    def __init__(self, spec: RecentTracesSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self._max, self._age_s, self._clock = spec.max_traces, spec.max_age_s, clock
        self._traces: OrderedDict[str, tuple[float, str, dict[str, Mapping[str, Any]]]] = (
            OrderedDict()
        )

    def add(self, spans: Sequence[Mapping[str, Any]], owner: str = "anonymous") -> None:
        if self._max == 0:
            return
        now = self._clock()
        for span in spans:
            trace_id = str(span.get("trace_id"))
            _, first_owner, kept = self._traces.pop(trace_id, (now, owner, {}))
            if len(kept) < MAX_SPANS:
                kept[str(span.get("span_id"))] = span
            self._traces[trace_id] = (now, first_owner, kept)
        while len(self._traces) > self._max:
            self._traces.popitem(last=False)

    def get(self, trace_id: str, owner: str | None = None) -> list[Mapping[str, Any]] | None:
        """The trace's spans, if it is ``owner``'s (None: anyone's, for admins)."""
        horizon = self._clock() - self._age_s
        while self._traces and next(iter(self._traces.values()))[0] < horizon:
            self._traces.popitem(last=False)
        found = self._traces.get(trace_id)
        if found is None or (owner is not None and found[1] != owner):
            return None
        return list(found[2].values())


def current_route() -> str:
    """The gateway route template serving this request (Serve's request context)."""
    context = _get_serve_request_context()
    return (context.route if context is not None else "") or "unknown"


class GatewayTelemetry:
    """One gateway replica's telemetry: export, recent traces and metrics."""

    def __init__(
        self,
        spec: TelemetrySpec | None,
        agents: Sequence[str],
        *,
        export: TraceExport | None = None,
        metrics: RunMetrics | None = None,
    ) -> None:
        spec = spec or TelemetrySpec()
        self.export = export if export is not None else TraceExport.from_spec(spec)
        self.recent = RecentTraces(spec.recent)
        self.metrics = metrics or RunMetrics(agents, spec.metrics.session_window_s)

    def run(
        self, agent: str, span: Span, body: Mapping[str, Any], route: str | None = None
    ) -> RunRecord:
        """The record of one run starting now, under the gateway's ``span``."""
        session = body.get("session_id")
        owner = str((body.get("caller") or {}).get("id") or "anonymous")
        return RunRecord(self, agent, span, route or current_route(), session, owner)

    def close(self) -> None:
        if self.export is not None:
            self.export.close()


class RunRecord:
    """One run's end, recorded once: ``finished``, ``failed`` or ``cancelled``; as a
    context manager, an exception leaving the block is ``failed`` (and re-raised)."""

    def __init__(
        self,
        telemetry: GatewayTelemetry,
        agent: str,
        span: Span,
        route: str,
        session: Any,
        owner: str = "anonymous",
    ) -> None:
        self._telemetry, self.agent, self.span, self.route = telemetry, agent, span, route
        self.owner = owner
        self._session = session if isinstance(session, str) else None
        self._started = time.perf_counter()
        self._first_token_s: float | None = None
        self.ended = False

    def first_token(self) -> None:
        if self._first_token_s is None:
            self._first_token_s = time.perf_counter() - self._started

    def finished(self, result: Mapping[str, Any]) -> None:
        session = result.get("session_id")
        if isinstance(session, str):
            self._session = session
        self._end(result.get("trace"), 200, None)

    def failed(self, error: BaseException) -> None:
        if isinstance(error, AgentNotFound):  # its name is client input: no label
            self.ended = True
            return
        if isinstance(error, AstromeshError):
            self._end(error.details.get("trace"), error.http_status, error.code)
        else:  # a client that went away (CancelledError), or a bug
            cancelled = isinstance(error, asyncio.CancelledError)
            self._end(None, 499 if cancelled else 500, "cancelled" if cancelled else "internal")

    def cancelled(self) -> None:
        """The client left a stream before its end."""
        self._end(None, 499, "cancelled")

    def _end(self, trace: Any, status: int, code: str | None) -> None:
        if self.ended:
            return
        self.ended = True
        if self.span.duration_ms is None:
            self.span.end(code or None)
        spans = [s for s in trace if isinstance(s, Mapping)] if isinstance(trace, list) else []
        if not any(s.get("span_id") == self.span.span_id for s in spans):
            spans.insert(0, self.span.to_dict())
        telemetry = self._telemetry
        telemetry.recent.add(spans, self.owner)
        if telemetry.export is not None and self.span.sampled:
            telemetry.export.export(spans)
        outcome = RunOutcome(
            agent=self.agent,
            route=self.route,
            status=status,
            latency_s=(self.span.duration_ms or 0.0) / 1000,
            spans=spans,
            code=code,
            first_token_s=self._first_token_s,
            session_id=self._session,
        )
        telemetry.metrics.record(outcome)

    def __enter__(self) -> RunRecord:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.failed(exc)
