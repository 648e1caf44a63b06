"""``GatewayCore``: what every protocol of the gateway builds on.

- which agents there are (``agents``: their descriptions, ``describe_agent``) and
  the Serve application of each (``apps``), looked up by handle once;
- ``call``: one run to its result; ``open_run``: one run as a stream of events
  (``RunEvents``), which REST/SSE, WebSocket, the OpenAI-compatible API, A2A, AG-UI
  and the channels translate, each in its own module (``gateway.py``,
  ``protocols/``);
- each request is one trace: a W3C ``traceparent`` from the client is continued,
  else a new trace starts; the gateway's span is the parent of the agent's run,
  and the first span of the returned ``trace``;
- how long the gateway waits: the agent's own ``timeout_seconds`` plus a grace;
- when a run ends (``call``'s result or error, ``RunEvents``' end), its span tree is
  exported, kept for ``GET /v1/traces/{id}`` and its metrics recorded
  (``serve/telemetry.py``), for every protocol at once.
"""

# No `from __future__ import annotations` here: the route classes that inherit this
# one declare FastAPI routes, which must see real annotation objects.
import asyncio
from collections.abc import AsyncIterator
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ApplicationStatus

from astromesh_ray.core.auth import ApiKey
from astromesh_ray.core.streams import closing_stream
from astromesh_ray.core.trace import Span
from astromesh_ray.errors import AgentNotFound, AgentUnavailable, AstromeshError
from astromesh_ray.serve.auth import configure, current_key
from astromesh_ray.serve.breaker import ActorBreakerStore
from astromesh_ray.serve.gateway_spans import gateway_span
from astromesh_ray.serve.handles import (
    RAY_FAILURES,
    AppHandle,
    describe,
    failure,
    stream_outcomes,
)
from astromesh_ray.serve.location import replica_location
from astromesh_ray.serve.outcome import unwrap
from astromesh_ray.serve.rag import GatewayRag
from astromesh_ray.serve.run_events import RunEvents, prepend
from astromesh_ray.serve.telemetry import GatewayTelemetry
from astromesh_ray.spec.auth import AuthSpec
from astromesh_ray.spec.config import TelemetrySpec


def _unavailable(name: str, app: str, reason: str) -> AgentUnavailable:
    return AgentUnavailable(
        f"agent {name!r} is unavailable: its application {app!r} {reason}",
        hint="check `serve status`; redeploy the agent's application",
        agent=name,
        app=app,
    )


# An application in these states has no replica to answer: a call would queue
# until the client gives up.  (UNHEALTHY may still have serving replicas; if it
# has none, the call runs into the patience deadline below.)
_DOWN = frozenset({ApplicationStatus.DEPLOY_FAILED, ApplicationStatus.DELETING})
# A call to an agent's application that failed to deliver, or took too long.
CALL_FAILURES: tuple[type[BaseException], ...] = (*RAY_FAILURES, TimeoutError)
# How long past the agent's own timeout_seconds the gateway waits for an answer
# before calling the agent unavailable (a request queued for a replica that
# never comes up, e.g. after the application failed).
GRACE_S = 30.0
# How long the gateway waits for a memory API call (the agent bounds each backend
# call by its own timeout; this covers a replica that never answers).
MEMORY_PATIENCE_S = 60.0


async def probe(app: AppHandle) -> bool:
    try:
        healthy = await asyncio.wait_for((await app.get()).health.remote(), 5)
    except CALL_FAILURES:  # a probe: unreachable, missing or slow mean "not healthy"
        app.forget()
        return False
    return bool(healthy)


class GatewayCore:
    """Knows each agent's description and the Serve application that runs it."""

    def __init__(
        self,
        agents: dict[str, dict[str, Any]],
        apps: dict[str, str],
        providers: dict[str, dict[str, Any]],
        rag: dict[str, Any] | None = None,
        memory: Any = None,
        channels: dict[str, Any] | None = None,
        telemetry: TelemetrySpec | None = None,
        auth: AuthSpec | None = None,
    ) -> None:
        # API keys, scopes, rate limits and CORS of every route (serve/auth.py).
        self._keys = configure(
            auth or AuthSpec(), {n: a.get("namespace") for n, a in agents.items()}
        )
        # RAG pipelines (RAGPipelineSpec by name) with the memory defaults their
        # stores use: ingested and searched in this replica (serve/rag.py).
        self._rag = GatewayRag(rag or {}, memory)
        self._agents = agents
        self._apps = apps
        self._providers = providers
        self._handles: dict[str, DeploymentHandle[Any]] = {}
        self._where = replica_location()
        self._provider_apps = {name: AppHandle(name) for name in providers}
        # Snapshots only: read straight from the breaker actor (no cached copy).
        self._breakers = ActorBreakerStore()
        # Channel adapters' settings (protocols/channels): by channel name.
        self._channels = dict(channels or {})
        # Span export, recent traces and metrics (runtime.yaml's spec.telemetry).
        self._telemetry = GatewayTelemetry(telemetry, list(agents))

    async def __del__(self) -> None:
        # Serve calls this on shutdown: the RAG pipelines' pools and embedders.
        rag = getattr(self, "_rag", None)
        if rag is not None:
            await rag.aclose()
        telemetry = getattr(self, "_telemetry", None)
        if telemetry is not None:  # flushes the spans still queued (blocking)
            await asyncio.to_thread(telemetry.close)

    def _app(self, name: str) -> str:
        """The application of agent ``name``; 404 for unknown names."""
        if name not in self._apps:
            known = ", ".join(sorted(self._apps)) or "(none)"
            raise AgentNotFound(f"no agent named {name!r}", hint=f"loaded agents: {known}")
        return self._apps[name]

    async def _handle(self, name: str) -> DeploymentHandle[Any]:
        app = self._app(name)
        handle = self._handles.get(name)
        if handle is None:
            try:
                # serve.status() blocks on the controller: not on the event loop.
                status = (await asyncio.to_thread(serve.status)).applications.get(app)
                handle = await AppHandle(app).get()  # raises when the app does not exist
            except RAY_FAILURES as exc:
                raise failure(
                    exc, lambda e: _unavailable(name, app, f"cannot be reached: {describe(e)}")
                ) from None
            if status is not None and status.status in _DOWN:
                raise _unavailable(name, app, f"is {status.status.value}")
            self._handles[name] = handle
        return handle

    def _failed(self, name: str, exc: BaseException, patience_s: float) -> Exception:
        self._handles.pop(name, None)  # look the application up again next time
        if isinstance(exc, TimeoutError):
            return _unavailable(name, self._apps[name], f"did not answer within {patience_s:g} s")
        return failure(
            exc, lambda e: _unavailable(name, self._apps[name], f"failed: {describe(e)}")
        )

    def _key_for(self, name: str, action: str | None = "run") -> ApiKey:
        """The request's key, once it is known to cover ``action`` on agent ``name``
        (404 for unknown agents to keys that see every agent, else 403)."""
        key = current_key()
        namespace = self._agents.get(name, {}).get("namespace")
        if name in self._apps or key.admin or "*" in key.agents:
            self._app(name)
        key.require(action, name, namespace)
        return key

    def _visible_agents(self) -> list[str]:
        """The names of the agents the request's key covers, sorted."""
        key = current_key()
        return [n for n in sorted(self._agents) if key.sees(n, self._agents[n].get("namespace"))]

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
        """``method`` of agent ``name``'s application with ``body`` (plus the trace
        parent), in the gateway's span: a run's result (``RunResult.to_dict``)."""
        body = self._owned(name, body)
        span = gateway_span(traceparent, name, self._where, trace_id)
        with self._telemetry.run(name, span, body) as record:
            result = await self._call(name, body, span, method)
            record.finished(result)
        result["session_id"] = current_key().shown_session(result.get("session_id"))
        return result

    async def _call(
        self, name: str, body: dict[str, Any], span: Span, method: str
    ) -> dict[str, Any]:
        handle = await self._handle(name)
        patience_s = self._patience_s(name)
        request = {**body, "trace_parent": span.context.traceparent}
        try:
            outcome = await asyncio.wait_for(getattr(handle, method).remote(request), patience_s)
        except CALL_FAILURES as exc:
            span.end(exc)
            raise self._failed(name, exc, patience_s) from None
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
        with self._telemetry.run(name, span, body) as record:
            first, outcomes = await self._open(name, body, span, method)
        return RunEvents(first, outcomes, span, record)

    async def _open(
        self, name: str, body: dict[str, Any], span: Span, method: str
    ) -> tuple[dict[str, Any], AsyncIterator[Any]]:
        handle = await self._handle(name)
        patience_s = self._patience_s(name)
        request = {**body, "trace_parent": span.context.traceparent}
        app = self._apps[name]

        def failed(exc: BaseException) -> AgentUnavailable:
            return _unavailable(name, app, f"failed: {describe(exc)}")

        outcomes = stream_outcomes(handle, method, request, failed)
        try:
            # Errors before the first event (bad prompt context, ...) still get their
            # HTTP status; later ones arrive as an `error` event.
            outcome = await asyncio.wait_for(anext(outcomes), patience_s)
        except TimeoutError as exc:
            span.end(exc)
            raise self._failed(name, exc, patience_s) from None
        except AstromeshError as exc:
            span.end(exc.message)
            if isinstance(exc, AgentUnavailable):
                self._handles.pop(name, None)  # look the application up again next time
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
