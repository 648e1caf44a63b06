"""``RouteCore``: what the routes of both HTTP apps build on, the gateway's
(``GatewayCore``) and each agent application's (``AgentDeployment``).

- which agents there are (``agents``: their descriptions, ``describe_agent``), the
  Serve application of each (``apps``), and how their methods are called (``link``,
  ``agent_link.py``: by handle from the gateway, in process in the agent's own
  application);
- the request's key, checked against the agent (``_key_for``), and the run and
  session it owns (``_owned``);
- ``call``: one run to its result; ``open_run``: one run as a stream of events
  (``RunEvents``), which REST/SSE, WebSocket, the OpenAI-compatible API, A2A, AG-UI
  and the channels translate;
- each request is one trace: a W3C ``traceparent`` from the client is continued,
  else a new trace starts; the edge span (named ``gateway``, whichever app answers:
  its ``where`` says which) is the parent of the agent's run, and the first span of
  the returned ``trace``;
- how long a handle call waits: the agent's own ``timeout_seconds`` plus a grace;
- when a run ends (``call``'s result or error, ``RunEvents``' end), its span tree is
  exported, kept for ``GET /v1/traces/{id}`` and its metrics recorded
  (``serve/telemetry.py``), in the replica that answered, for every protocol at once.
"""

# No `from __future__ import annotations` here: the route classes that inherit this
# one declare FastAPI routes, which must see real annotation objects.
import asyncio
from collections.abc import AsyncIterator
from typing import Any

from astromesh_ray.core.auth import ApiKey, KeyRing
from astromesh_ray.core.streams import closing_stream
from astromesh_ray.core.trace import Span
from astromesh_ray.errors import AgentNotFound, AstromeshError
from astromesh_ray.serve.agent_link import AgentLink
from astromesh_ray.serve.app import served_route
from astromesh_ray.serve.auth import configure, current_key
from astromesh_ray.serve.gateway_spans import gateway_span
from astromesh_ray.serve.location import replica_location
from astromesh_ray.serve.outcome import unwrap
from astromesh_ray.serve.run_events import RunEvents, prepend
from astromesh_ray.serve.telemetry import GatewayTelemetry
from astromesh_ray.spec.auth import AuthSpec
from astromesh_ray.spec.config import TelemetrySpec

# How long past the agent's own timeout_seconds a handle call waits for an answer
# before calling the agent unavailable (a request queued for a replica that never
# comes up, e.g. after the application failed).
GRACE_S = 30.0
# How long a handle call for a memory API operation or a paused run waits (the agent
# bounds each backend call by its own timeout; this covers a replica that never
# answers).
MEMORY_PATIENCE_S = 60.0


class RouteCore:
    """Knows the agents these routes serve, and how to reach them."""

    def __init__(
        self,
        agents: dict[str, dict[str, Any]],
        apps: dict[str, str],
        link: AgentLink,
        *,
        telemetry: TelemetrySpec | None = None,
        auth: AuthSpec | None = None,
    ) -> None:
        # API keys, scopes, rate limits and CORS of every route (serve/auth.py), set
        # up for this process's gate.
        self._keys: KeyRing = configure(
            auth or AuthSpec(), {n: a.get("namespace") for n, a in agents.items()}
        )
        self._agents = agents
        self._apps = apps
        self._link = link
        self._where = replica_location()
        # Span export, recent traces and metrics (runtime.yaml's spec.telemetry).
        self._telemetry = GatewayTelemetry(telemetry, list(agents))

    def _app(self, name: str) -> str:
        """The application of agent ``name``; 404 for unknown names."""
        if name not in self._apps:
            known = ", ".join(sorted(self._apps)) or "(none)"
            raise AgentNotFound(f"no agent named {name!r}", hint=f"loaded agents: {known}")
        return self._apps[name]

    def _key_for(self, name: str, action: str | None = "run") -> ApiKey:
        """The request's key, once it is known to cover ``action`` on agent ``name``
        (404 for unknown agents to keys that see every agent, else 403)."""
        key = current_key()
        namespace = self._agents.get(name, {}).get("namespace")
        if name in self._apps or key.admin or "*" in key.agents:
            self._app(name)
        key.require(action, name, namespace)
        return key

    def _owned(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` as the request's key may send it to agent ``name``: the run is the
        key's (``caller``: only it may resume it) and so is the session (stored
        under the key's own prefix, ``core/auth.py``)."""
        key = self._key_for(name)
        owned = {**body, "caller": key.caller.to_dict()}
        if body.get("session_id"):
            owned["session_id"] = key.own_session(str(body["session_id"]))
        return owned

    def _patience_s(self, name: str) -> float:
        return float(self._agents[name].get("timeout_seconds") or 0) + GRACE_S

    async def call(
        self,
        name: str,
        body: dict[str, Any],
        traceparent: str | None,
        *,
        method: str = "run",
        trace_id: str | None = None,
    ) -> dict[str, Any]:
        """``method`` of agent ``name`` with ``body`` (plus the trace parent), in the
        edge span: a run's result (``RunResult.to_dict``)."""
        body = self._owned(name, body)
        span = gateway_span(traceparent, name, self._where, trace_id)
        with self._telemetry.run(name, span, body, served_route()) as record:
            result = await self._call(name, body, span, method)
            record.finished(result)
        result["session_id"] = current_key().shown_session(result.get("session_id"))
        return result

    async def _call(
        self, name: str, body: dict[str, Any], span: Span, method: str
    ) -> dict[str, Any]:
        request = {**body, "trace_parent": span.context.traceparent}
        try:
            outcome = await self._link.call(
                name, method, request, patience_s=self._patience_s(name)
            )
        except AstromeshError as exc:  # not delivered: AgentUnavailable, or our bug
            span.end(exc)
            raise
        try:
            result: dict[str, Any] = unwrap(outcome)
        except AstromeshError as exc:
            span.end(exc.message)
            prepend(exc.details, span)
            raise
        span.end()
        prepend(result, span)
        return result

    async def open_run(
        self,
        name: str,
        body: dict[str, Any],
        traceparent: str | None,
        *,
        method: str = "stream",
        trace_id: str | None = None,
    ) -> RunEvents:
        """Start streaming a run of agent ``name`` (``body``: ``RunRequest`` fields;
        ``method``: ``stream`` or ``resume_stream``).  An error before the first
        event (an unknown agent, a bad prompt context) is raised here, so a protocol
        can still answer it with its HTTP status; later ones end the iteration."""
        body = self._owned(name, body)
        span = gateway_span(traceparent, name, self._where, trace_id)
        with self._telemetry.run(name, span, body, served_route()) as record:
            first, outcomes = await self._open(name, body, span, method)
        return RunEvents(first, outcomes, span, record)

    async def _open(
        self, name: str, body: dict[str, Any], span: Span, method: str
    ) -> tuple[dict[str, Any], AsyncIterator[Any]]:
        request = {**body, "trace_parent": span.context.traceparent}
        try:
            # Errors before the first event (bad prompt context, ...) still get their
            # HTTP status; later ones arrive as an `error` event.
            outcome, outcomes = await self._link.open(name, method, request, self._patience_s(name))
        except AstromeshError as exc:  # not delivered: AgentUnavailable, or our bug
            span.end(exc.message)
            prepend(exc.details, span)
            raise
        try:
            first = unwrap(outcome)
        except AstromeshError as exc:
            async with closing_stream(outcomes):  # the run already ended: release it
                pass
            span.end(exc.message)
            prepend(exc.details, span)
            raise
        return first, outcomes

    async def _close_telemetry(self) -> None:
        """Flush the spans still queued (on shutdown; blocking, so in a thread)."""
        telemetry = getattr(self, "_telemetry", None)
        if telemetry is not None:
            await asyncio.to_thread(telemetry.close)
