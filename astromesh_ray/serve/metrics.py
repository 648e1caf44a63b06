"""The HTTP apps' Prometheus metrics, through Ray's metrics endpoint (``ray.util.metrics``).

Recorded in one place, when a run ends in the replica that answered it (the gateway,
or the agent's own application for ``/v1/agents/{name}/...``; ``serve/telemetry.py``),
from what the run returned: its HTTP status or error code, the edge span's duration,
and the spans of every hop (model calls, tool calls, peer sub-runs), so each protocol
(REST, SSE, WebSocket, OpenAI, A2A, AG-UI, channels) is covered without code of its
own.  Ray prefixes each name with ``ray_`` and adds ``_total`` to counters; ``route``
is the route template that served the request (``/v1/agents/{name}/run``,
``/v1/chat/completions``, ...), the same whichever application answered.

=================================== ========= ==========================================
``astromesh_requests``              counter   agent, route, status (HTTP status code; a
                                              stream that failed after it started counts
                                              the error's status, one whose client left
                                              499)
``astromesh_request_latency_s``     histogram agent, route: the edge span, in seconds
``astromesh_time_to_first_token_s`` histogram agent, route: streams, the first token event
``astromesh_tokens``                counter   agent, provider, model, token_type
                                              (input | output), from model_call spans
``astromesh_cost_usd``              counter   agent, provider, model
``astromesh_errors``                counter   agent, route, code (``AstromeshError.code``)
``astromesh_tool_calls``            counter   agent, tool, outcome (ok | error)
``astromesh_breaker_state``         gauge     provider: 0 closed, 1 half-open, 2 open, as
                                              the last model call routed through this
                                              replica saw it (the breaker actor,
                                              ``GET /v1/providers``, has the live state)
``astromesh_active_sessions``       gauge     agent: distinct session ids with a run in the
                                              last ``telemetry.metrics.session_window_s``
                                              seconds, in this replica (updated
                                              when a run ends)
=================================== ========= ==========================================

A model or tool call belongs to the agent of the nearest ``run`` span above it, so a
peer's sub-run counts for the peer.  Agents are labels only once known (an unknown
agent's 404 is not counted: its name is client input).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from astromesh_ray.core.breaker import SEVERITY

Kind = Literal["counter", "histogram", "gauge"]
_LATENCY_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_FIRST_TOKEN_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Session ids remembered at most (across agents): past it the oldest are dropped.
MAX_SESSIONS = 100_000


@dataclass(frozen=True)
class MetricDef:
    kind: Kind
    description: str
    tags: tuple[str, ...]
    boundaries: tuple[float, ...] = ()


METRICS: dict[str, MetricDef] = {
    "astromesh_requests": MetricDef(
        "counter", "Runs served by the gateway.", ("agent", "route", "status")
    ),
    "astromesh_request_latency_s": MetricDef(
        "histogram", "Gateway time of a run, seconds.", ("agent", "route"), _LATENCY_S
    ),
    "astromesh_time_to_first_token_s": MetricDef(
        "histogram",
        "Streams: time to the first token, seconds.",
        ("agent", "route"),
        _FIRST_TOKEN_S,
    ),
    "astromesh_tokens": MetricDef(
        "counter", "Model tokens.", ("agent", "provider", "model", "token_type")
    ),
    "astromesh_cost_usd": MetricDef("counter", "Model cost, USD.", ("agent", "provider", "model")),
    "astromesh_errors": MetricDef("counter", "Failed runs.", ("agent", "route", "code")),
    "astromesh_tool_calls": MetricDef("counter", "Tool calls.", ("agent", "tool", "outcome")),
    "astromesh_breaker_state": MetricDef(
        "gauge", "Circuit breaker: 0 closed, 1 half-open, 2 open.", ("provider",)
    ),
    "astromesh_active_sessions": MetricDef(
        "gauge", "Distinct sessions with a run in the window.", ("agent",)
    ),
}


@dataclass(frozen=True)
class Point:
    """One observation: ``value`` for metric ``name`` with ``tags``."""

    name: str
    value: float
    tags: Mapping[str, str]


@dataclass
class RunOutcome:
    """What the metrics read from one run that ended in the gateway."""

    agent: str
    route: str
    status: int
    latency_s: float
    spans: Sequence[Mapping[str, Any]] = ()
    code: str | None = None  # the error's code when the run failed
    first_token_s: float | None = None
    session_id: str | None = None


class MetricSink(Protocol):
    def apply(self, points: Sequence[Point]) -> None: ...


def _owners(spans: Sequence[Mapping[str, Any]], default: str) -> Callable[[str | None], str]:
    """The agent of the nearest ``run`` span above a span (by parent id)."""
    by_id = {str(s.get("span_id")): s for s in spans}

    def owner(parent: str | None) -> str:
        seen = 0
        while parent is not None and parent in by_id and seen < len(by_id):
            span = by_id[parent]
            agent = (span.get("attributes") or {}).get("agent")
            if span.get("name") == "run" and isinstance(agent, str):
                return agent
            parent, seen = span.get("parent_id"), seen + 1
        return default

    return owner


def _text(value: Any) -> str:
    return str(value) if value is not None else "unknown"


def run_points(run: RunOutcome) -> list[Point]:
    """The observations of one run (``active_sessions`` aside: see ``RunMetrics``)."""
    route = {"agent": run.agent, "route": run.route}
    points = [
        Point("astromesh_requests", 1, {**route, "status": str(run.status)}),
        Point("astromesh_request_latency_s", run.latency_s, route),
    ]
    if run.first_token_s is not None:
        points.append(Point("astromesh_time_to_first_token_s", run.first_token_s, route))
    if run.code is not None:
        points.append(Point("astromesh_errors", 1, {**route, "code": run.code}))
    owner = _owners(run.spans, run.agent)
    for span in run.spans:
        attributes = span.get("attributes") or {}
        if span.get("name") == "model_call" and "usage" in attributes:
            usage = attributes["usage"] or {}
            model = {
                "agent": owner(span.get("parent_id")),
                "provider": _text(attributes.get("provider")),
                "model": _text(attributes.get("model")),
            }
            for token_type in ("input", "output"):
                count = usage.get(f"{token_type}_tokens") or 0
                if count > 0:
                    points.append(
                        Point("astromesh_tokens", count, {**model, "token_type": token_type})
                    )
            if (usage.get("cost_usd") or 0) > 0:
                points.append(Point("astromesh_cost_usd", float(usage["cost_usd"]), model))
            for step in attributes.get("route") or ():
                state = step.get("breaker") if isinstance(step, Mapping) else None
                if state in SEVERITY:
                    provider = str(step.get("candidate"))
                    points.append(
                        Point("astromesh_breaker_state", SEVERITY[state], {"provider": provider})
                    )
        elif span.get("name") == "tool_call":
            outcome = "error" if span.get("status") == "error" else "ok"
            tags = {
                "agent": owner(span.get("parent_id")),
                "tool": _text(attributes.get("tool")),
                "outcome": outcome,
            }
            points.append(Point("astromesh_tool_calls", 1, tags))
    return points


@dataclass
class SessionWindow:
    """Distinct session ids per agent with a run in the last ``window_s`` seconds."""

    window_s: float
    clock: Callable[[], float] = time.monotonic
    _seen: OrderedDict[tuple[str, str], float] = field(default_factory=OrderedDict)

    def seen(self, agent: str, session_id: str) -> None:
        key = (agent, session_id)
        self._seen[key] = self.clock()
        self._seen.move_to_end(key)
        while len(self._seen) > MAX_SESSIONS:
            self._seen.popitem(last=False)

    def counts(self, agents: Sequence[str]) -> dict[str, int]:
        """The number of active sessions of each of ``agents`` (0 included)."""
        horizon = self.clock() - self.window_s
        while self._seen and next(iter(self._seen.values())) < horizon:
            self._seen.popitem(last=False)  # oldest first: stop at the first fresh one
        counts = dict.fromkeys(agents, 0)
        for agent, _ in self._seen:
            counts[agent] = counts.get(agent, 0) + 1
        return counts


class RayMetrics:
    """``ray.util.metrics`` objects, made on first use in this process."""

    def __init__(self) -> None:
        self._metrics: dict[str, Any] = {}

    def _metric(self, name: str) -> Any:
        metric = self._metrics.get(name)
        if metric is None:
            from ray.util import metrics

            spec = METRICS[name]
            if spec.kind == "counter":
                metric = metrics.Counter(name, spec.description, spec.tags)
            elif spec.kind == "histogram":
                metric = metrics.Histogram(name, spec.description, list(spec.boundaries), spec.tags)
            else:
                metric = metrics.Gauge(name, spec.description, spec.tags)
            self._metrics[name] = metric
        return metric

    def apply(self, points: Sequence[Point]) -> None:
        for point in points:
            metric = self._metric(point.name)
            kind = METRICS[point.name].kind
            if kind == "counter":
                metric.inc(point.value, dict(point.tags))
            elif kind == "histogram":
                metric.observe(point.value, dict(point.tags))
            else:
                metric.set(point.value, dict(point.tags))


class RunMetrics:
    """Records each ended run's observations in ``sink`` (Ray's metrics by default)."""

    def __init__(
        self,
        agents: Sequence[str],
        session_window_s: float = 300.0,
        sink: MetricSink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._agents = list(agents)
        self._sessions = SessionWindow(session_window_s, clock)
        self._sink = sink if sink is not None else RayMetrics()

    def record(self, run: RunOutcome) -> list[Point]:
        points = run_points(run)
        if run.session_id:
            self._sessions.seen(run.agent, run.session_id)
        for agent, count in self._sessions.counts(self._agents).items():
            points.append(Point("astromesh_active_sessions", count, {"agent": agent}))
        self._sink.apply(points)
        return points
