"""The gateway: the one HTTP ingress, routing to agent applications by handle.

POST /v1/agents/{name}/run   {query, session_id, context} -> {answer, steps, usage, trace}
POST /v1/agents/{name}/stream  same body -> Server-Sent Events, one per run event
GET  /v1/agents              the loaded agents
GET  /v1/agents/{name}       one agent
GET  /v1/agents/{name}/health  its tool servers (MCP) up or down
GET  /health                 liveness

GET  /v1/agents/{name}/runs/{run_id}                a paused run: the calls it waits on
POST /v1/agents/{name}/runs/{run_id}/tool_results   client tool results -> the run goes on
POST /v1/agents/{name}/runs/{run_id}/approve        approve pending calls -> the run goes on
POST /v1/agents/{name}/runs/{run_id}/reject         reject them (the model reads why)
POST /v1/agents/{name}/runs/{run_id}/retry          go on with a resumed run that failed

GET    /v1/memory/{name}/sessions                       the agent's sessions
GET    /v1/memory/{name}/sessions/{session}/history     one session's turns and summary
DELETE /v1/memory/{name}/sessions/{session}[/history]   erase it from every backend
POST   /v1/memory/{name}/sessions/{session}/fork        copy it to a new session
POST   /v1/memory/{name}/semantic/search                search the agent's semantic memory
GET    /v1/memory/{name}/episodes                       the agent's episodic log

POST   /v1/rag/{pipeline}/ingest    ingest documents into a RAG pipeline (serve/rag.py)
POST   /v1/rag/{pipeline}/search    search it

Memory calls go to the agent's own application (its replicas hold the backends),
so one agent's memory is never reachable through another agent's routes.

Each request is one trace: a W3C ``traceparent`` header from the client is
continued, else a new trace starts; the gateway's own span is the parent of the
agent's run, and the first span of the returned ``trace``.
"""

# No `from __future__ import annotations` here: FastAPI must see real annotation
# objects on the ingress methods (Serve re-wraps them, losing the module globals
# that string annotations would be resolved against).
import asyncio
import uuid
from typing import Annotated, Any

from fastapi import FastAPI, Header, Query
from fastapi.responses import StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ApplicationStatus

from astromesh_ray import __version__
from astromesh_ray.core.breaker import most_severe
from astromesh_ray.core.context import check_session_id
from astromesh_ray.core.memory.base import EPISODE_TYPES
from astromesh_ray.core.streams import closing_stream
from astromesh_ray.errors import AgentNotFound, AgentUnavailable, AstromeshError, InvalidRequest
from astromesh_ray.serve.breaker import ActorBreakerStore
from astromesh_ray.serve.gateway_spans import (
    check_run_id,
    decision_of,
    gateway_span,
    prepend,
    results_of,
    sse_events,
)
from astromesh_ray.serve.handles import (
    RAY_FAILURES,
    AppHandle,
    describe,
    failure,
    stream_outcomes,
)
from astromesh_ray.serve.http import (
    BodySizeLimit,
    DecisionBody,
    ForkBody,
    RunBody,
    SearchBody,
    ToolResultsBody,
    install_error_handlers,
)
from astromesh_ray.serve.location import replica_location
from astromesh_ray.serve.outcome import unwrap
from astromesh_ray.serve.rag import GatewayRag, IngestBody, RagSearchBody

api = FastAPI(
    title="astromesh-ray",
    version=__version__,
    description="YAML-declared AI agents served on Ray.",
)
api.add_middleware(BodySizeLimit)
install_error_handlers(api)


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
_CALL_FAILURES: tuple[type[BaseException], ...] = (*RAY_FAILURES, TimeoutError)
# How long past the agent's own timeout_seconds the gateway waits for an answer
# before calling the agent unavailable (a request queued for a replica that
# never comes up, e.g. after the application failed).
GRACE_S = 30.0
# How long the gateway waits for a memory API call (the agent bounds each backend
# call by its own timeout; this covers a replica that never answers).
MEMORY_PATIENCE_S = 60.0


async def _probe(app: AppHandle) -> bool:
    try:
        healthy = await asyncio.wait_for((await app.get()).health.remote(), 5)
    except _CALL_FAILURES:  # a probe: unreachable, missing or slow mean "not healthy"
        app.forget()
        return False
    return bool(healthy)


@serve.deployment(name="gateway", max_ongoing_requests=200, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Gateway:
    """Knows each agent's description and the Serve application that runs it."""

    def __init__(
        self,
        agents: dict[str, dict[str, Any]],
        apps: dict[str, str],
        providers: dict[str, dict[str, Any]],
        rag: dict[str, Any] | None = None,
        memory: Any = None,
    ) -> None:
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

    async def __del__(self) -> None:
        # Serve calls this on shutdown: the RAG pipelines' pools and embedders.
        rag = getattr(self, "_rag", None)
        if rag is not None:
            await rag.aclose()

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

    def _patience_s(self, name: str) -> float:
        return float(self._agents[name].get("timeout_seconds") or 0) + GRACE_S

    @api.get("/health")
    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "agents": len(self._agents)}

    @api.get("/v1/providers")
    async def list_providers(self) -> dict[str, Any]:
        """Each provider deployment: what it serves, a live health probe, and its
        breakers (one per breaker policy of the agents using it); ``breaker`` is the
        most severe of them (open > half-open > closed)."""
        breakers = await self._breakers.snapshot()
        names = sorted(self._providers)
        healthy = await asyncio.gather(*(_probe(self._provider_apps[name]) for name in names))
        closed = {"state": "closed", "consecutive_failures": 0, "trips": 0}
        return {
            "providers": [
                {
                    "name": name,
                    **self._providers[name],
                    "healthy": ok,
                    "breaker": most_severe(breakers.get(name, [])) or closed,
                    "breakers": breakers.get(name, []),
                }
                for name, ok in zip(names, healthy, strict=True)
            ]
        }

    @api.get("/v1/agents")
    async def list_agents(self) -> dict[str, Any]:
        return {"agents": [self._agents[n] for n in sorted(self._agents)]}

    @api.get("/v1/agents/{name}")
    async def get_agent(self, name: str) -> dict[str, Any]:
        self._app(name)  # 404 for unknown names
        return self._agents[name]

    @api.get("/v1/agents/{name}/health")
    async def agent_health(self, name: str) -> dict[str, Any]:
        """One replica's view of the agent's tool servers: ``status`` ``ok``, or
        ``degraded`` with the toolsets that are down (an MCP server that did not
        answer at start is retried when the tools are listed again)."""
        handle = await self._handle(name)
        try:
            health: dict[str, Any] = await asyncio.wait_for(
                handle.health.remote(), MEMORY_PATIENCE_S
            )
        except _CALL_FAILURES as exc:
            raise self._failed(name, exc, MEMORY_PATIENCE_S) from None
        return {"agent": name, **health}

    @api.post("/v1/agents/{name}/run")
    async def run(
        self, name: str, body: RunBody, traceparent: str | None = Header(default=None)
    ) -> dict[str, Any]:
        return await self._call(name, "run", body.model_dump(), traceparent)

    @api.post("/v1/agents/{name}/stream")
    async def stream(
        self, name: str, body: RunBody, traceparent: str | None = Header(default=None)
    ) -> StreamingResponse:
        return await self._stream(name, "stream", body.model_dump(), traceparent)

    async def _call(
        self,
        name: str,
        method: str,
        body: dict[str, Any],
        traceparent: str | None,
        trace_id: str | None = None,
    ) -> dict[str, Any]:
        """``method`` of agent ``name``'s application with ``body`` (plus the trace
        parent), in the gateway's span."""
        handle = await self._handle(name)
        patience_s = self._patience_s(name)
        span = gateway_span(traceparent, name, self._where, trace_id)
        request = {**body, "trace_parent": span.context.traceparent}
        try:
            outcome = await asyncio.wait_for(getattr(handle, method).remote(request), patience_s)
        except _CALL_FAILURES as exc:
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

    async def _stream(
        self,
        name: str,
        method: str,
        body: dict[str, Any],
        traceparent: str | None,
        trace_id: str | None = None,
    ) -> StreamingResponse:
        """The events ``method`` of agent ``name``'s application streams, as SSE."""
        handle = await self._handle(name)
        patience_s = self._patience_s(name)
        span = gateway_span(traceparent, name, self._where, trace_id)
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
        return StreamingResponse(sse_events(first, outcomes, span), media_type="text/event-stream")

    # -- paused runs: client tools and approvals ---------------------------------------

    @api.get("/v1/agents/{name}/runs/{run_id}")
    async def paused_run(self, name: str, run_id: str) -> dict[str, Any]:
        check_run_id(run_id)
        handle = await self._handle(name)
        try:
            outcome = await asyncio.wait_for(handle.paused.remote(run_id, None), MEMORY_PATIENCE_S)
        except _CALL_FAILURES as exc:
            raise self._failed(name, exc, MEMORY_PATIENCE_S) from None
        result: dict[str, Any] = unwrap(outcome)
        return result

    async def _answer(
        self,
        name: str,
        run_id: str,
        answer: dict[str, Any],
        stream: bool,
        traceparent: str | None,
    ) -> Any:
        # The paused run first: an unknown one is a 404 before anything runs, and the
        # resumed run's spans join its trace (unless the client sends a traceparent).
        paused = await self.paused_run(name, run_id)
        body = {**answer, "run_id": run_id}
        trace_id = str(paused.get("trace_id") or "") or None
        if stream:
            return await self._stream(name, "resume_stream", body, traceparent, trace_id)
        return await self._call(name, "resume", body, traceparent, trace_id)

    @api.post("/v1/agents/{name}/runs/{run_id}/tool_results")
    async def toolresults_of(
        self,
        name: str,
        run_id: str,
        body: ToolResultsBody,
        stream: bool = Query(default=False),
        traceparent: str | None = Header(default=None),
    ) -> Any:
        answer = {"action": "result", "results": results_of(body.tool_results)}
        return await self._answer(name, run_id, answer, stream, traceparent)

    @api.post("/v1/agents/{name}/runs/{run_id}/approve")
    async def approve(
        self,
        name: str,
        run_id: str,
        body: DecisionBody | None = None,
        stream: bool = Query(default=False),
        traceparent: str | None = Header(default=None),
    ) -> Any:
        return await self._answer(name, run_id, decision_of("approve", body), stream, traceparent)

    @api.post("/v1/agents/{name}/runs/{run_id}/retry")
    async def retry(
        self,
        name: str,
        run_id: str,
        stream: bool = Query(default=False),
        traceparent: str | None = Header(default=None),
    ) -> Any:
        return await self._answer(name, run_id, {"action": "retry"}, stream, traceparent)

    @api.post("/v1/agents/{name}/runs/{run_id}/reject")
    async def reject(
        self,
        name: str,
        run_id: str,
        body: DecisionBody | None = None,
        stream: bool = Query(default=False),
        traceparent: str | None = Header(default=None),
    ) -> Any:
        return await self._answer(name, run_id, decision_of("reject", body), stream, traceparent)

    # -- memory ------------------------------------------------------------------------

    async def _memory(self, name: str, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Memory operation ``op`` in agent ``name``'s application."""
        handle = await self._handle(name)
        try:
            outcome = await asyncio.wait_for(handle.memory.remote(op, args), MEMORY_PATIENCE_S)
        except _CALL_FAILURES as exc:
            raise self._failed(name, exc, MEMORY_PATIENCE_S) from None
        result: dict[str, Any] = unwrap(outcome)
        return result

    @api.get("/v1/memory/{name}/sessions")
    async def memory_sessions(
        self,
        name: str,
        limit: int = Query(default=100, ge=1, le=1000),
        offset: int = Query(default=0, ge=0),
    ) -> dict[str, Any]:
        return await self._memory(name, "sessions", {"limit": limit, "offset": offset})

    @api.get("/v1/memory/{name}/sessions/{session_id}/history")
    async def memory_history(self, name: str, session_id: str) -> dict[str, Any]:
        check_session_id(session_id)
        return await self._memory(name, "history", {"session_id": session_id})

    @api.delete("/v1/memory/{name}/sessions/{session_id}")
    async def memory_erase(self, name: str, session_id: str) -> dict[str, Any]:
        check_session_id(session_id)
        return await self._memory(name, "erase", {"session_id": session_id})

    @api.delete("/v1/memory/{name}/sessions/{session_id}/history")
    async def memory_erase_history(self, name: str, session_id: str) -> dict[str, Any]:
        return await self.memory_erase(name, session_id)

    @api.post("/v1/memory/{name}/sessions/{session_id}/fork")
    async def memory_fork(
        self, name: str, session_id: str, body: ForkBody | None = None
    ) -> dict[str, Any]:
        check_session_id(session_id)
        new = (body.new_session_id if body else None) or uuid.uuid4().hex
        return await self._memory(name, "fork", {"session_id": session_id, "new_session_id": new})

    @api.post("/v1/memory/{name}/semantic/search")
    async def memory_search(self, name: str, body: SearchBody) -> dict[str, Any]:
        return await self._memory(name, "search", body.model_dump())

    @api.get("/v1/memory/{name}/episodes")
    async def memory_episodes(
        self,
        name: str,
        session_id: str | None = None,
        run_id: str | None = Query(default=None, max_length=64),
        type: Annotated[list[str] | None, Query()] = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = Query(default=100, ge=1, le=1000),
        offset: int = Query(default=0, ge=0),
    ) -> dict[str, Any]:
        if session_id is not None:
            check_session_id(session_id)
        unknown = sorted(set(type or ()) - set(EPISODE_TYPES))
        if unknown:
            raise InvalidRequest(
                "unknown episode type(s) " + ", ".join(map(repr, unknown)),
                hint="types: " + ", ".join(EPISODE_TYPES),
                field="type",
            )
        args = {
            "session_id": session_id,
            "run_id": run_id,
            "types": list(type or ()),
            "since": since,
            "until": until,
            "limit": limit,
            "offset": offset,
        }
        return await self._memory(name, "episodes", args)

    # -- RAG pipelines -----------------------------------------------------------------

    @api.post("/v1/rag/{pipeline}/ingest")
    async def rag_ingest(self, pipeline: str, body: IngestBody) -> dict[str, Any]:
        return await self._rag.ingest(pipeline, body)

    @api.post("/v1/rag/{pipeline}/search")
    async def rag_search(self, pipeline: str, body: RagSearchBody) -> dict[str, Any]:
        return await self._rag.search(pipeline, body)
