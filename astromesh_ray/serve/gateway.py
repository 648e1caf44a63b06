"""The gateway: the one HTTP ingress, routing to agent applications by handle.

POST /v1/agents/{name}/run   {query, session_id, context} -> {answer, steps, usage, trace}
                             (with "stream": true or Accept: text/event-stream: as SSE)
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

from fastapi import Header, Query
from fastapi.responses import StreamingResponse
from ray import serve

from astromesh_ray import __version__
from astromesh_ray.core.auth import ApiKey
from astromesh_ray.core.breaker import most_severe
from astromesh_ray.core.context import check_session_id
from astromesh_ray.core.memory.base import EPISODE_TYPES
from astromesh_ray.errors import InvalidRequest
from astromesh_ray.serve.app import api
from astromesh_ray.serve.gateway_core import (
    CALL_FAILURES,
    MEMORY_PATIENCE_S,
    probe,
)
from astromesh_ray.serve.gateway_spans import check_run_id, decision_of, results_of
from astromesh_ray.serve.http import DecisionBody, ForkBody, RunBody, SearchBody, ToolResultsBody
from astromesh_ray.serve.outcome import unwrap
from astromesh_ray.serve.protocols.a2a import A2ARoutes
from astromesh_ray.serve.protocols.agui import AGUIRoutes
from astromesh_ray.serve.protocols.channels import ChannelRoutes
from astromesh_ray.serve.protocols.openai_api import OpenAIRoutes
from astromesh_ray.serve.protocols.traces import TraceRoutes
from astromesh_ray.serve.protocols.websocket import WebSocketRoutes
from astromesh_ray.serve.rag import IngestBody, RagSearchBody
from astromesh_ray.serve.run_events import sse_events

__all__ = ["Gateway", "api"]


def wants_sse(accept: str | None) -> bool:
    """An ``Accept`` header that asks for an event stream (and not JSON first)."""
    if not accept:
        return False
    kinds = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return "text/event-stream" in kinds and kinds[0] != "application/json"


def shown_sessions(key: ApiKey, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with session ids as ``key`` knows them (without its stored prefix)."""
    for field in ("session_id", "new_session_id"):
        if field in body:
            body[field] = key.shown_session(body[field])
    for listed in ("sessions", "episodes"):
        for item in body.get(listed) or ():
            if isinstance(item, dict) and "session_id" in item:
                item["session_id"] = key.shown_session(item["session_id"])
    return body


# The gateway holds only pending handle calls to agents, and open streams (SSE,
# WebSocket, AG-UI) for a whole run each: 200 at once per replica, twice an agent
# replica's 100, so one gateway replica can feed two agent replicas at their limit.
@serve.deployment(name="gateway", max_ongoing_requests=200, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Gateway(WebSocketRoutes, OpenAIRoutes, A2ARoutes, AGUIRoutes, ChannelRoutes, TraceRoutes):
    """The gateway's routes: its own (REST, SSE, paused runs, memory, RAG) and every
    client protocol's (``protocols/``); ``GatewayCore`` has what they share."""

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
        healthy = await asyncio.gather(*(probe(self._provider_apps[name]) for name in names))
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
        """The agents the request's key covers."""
        return {"agents": [self._agents[n] for n in self._visible_agents()]}

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
        except CALL_FAILURES as exc:
            raise self._failed(name, exc, MEMORY_PATIENCE_S) from None
        return {"agent": name, **health}

    @api.post("/v1/agents/{name}/run")
    async def run(
        self,
        name: str,
        body: RunBody,
        traceparent: str | None = Header(default=None),
        accept: str | None = Header(default=None),
    ) -> Any:
        if body.stream or wants_sse(accept):
            return await self._stream(name, "stream", body.request(), traceparent)
        return await self.call(name, body.request(), traceparent)

    @api.post("/v1/agents/{name}/stream")
    async def stream(
        self, name: str, body: RunBody, traceparent: str | None = Header(default=None)
    ) -> StreamingResponse:
        return await self._stream(name, "stream", body.request(), traceparent)

    async def _stream(
        self,
        name: str,
        method: str,
        body: dict[str, Any],
        traceparent: str | None,
        trace_id: str | None = None,
    ) -> StreamingResponse:
        """The events ``method`` of agent ``name``'s application streams, as SSE."""
        events = await self.open_run(name, body, traceparent, method=method, trace_id=trace_id)
        return StreamingResponse(sse_events(events), media_type="text/event-stream")

    # -- paused runs: client tools and approvals ---------------------------------------

    @api.get("/v1/agents/{name}/runs/{run_id}")
    async def paused_run(self, name: str, run_id: str) -> dict[str, Any]:
        check_run_id(run_id)
        caller = self._key_for(name).caller.to_dict()  # another key's run is not found
        handle = await self._handle(name)
        try:
            outcome = await asyncio.wait_for(
                handle.paused.remote(run_id, caller), MEMORY_PATIENCE_S
            )
        except CALL_FAILURES as exc:
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
        return await self.call(name, body, traceparent, method="resume", trace_id=trace_id)

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
        """Memory operation ``op`` in agent ``name``'s application, on the sessions of
        the request's key only (``core/auth.py``): the ids it sends are its own, and
        listings hold its sessions alone."""
        key = self._key_for(name, "erase_memory" if op == "erase" else "read_memory")
        args = dict(args)
        for field in ("session_id", "new_session_id"):
            if args.get(field):
                args[field] = key.own_session(str(args[field]))
        if op in ("sessions", "episodes") and key.session_owner and not args.get("session_id"):
            args["session_prefix"] = key.session_owner
        handle = await self._handle(name)
        try:
            outcome = await asyncio.wait_for(handle.memory.remote(op, args), MEMORY_PATIENCE_S)
        except CALL_FAILURES as exc:
            raise self._failed(name, exc, MEMORY_PATIENCE_S) from None
        result: dict[str, Any] = unwrap(outcome)
        return shown_sessions(key, result)

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
        check_session_id(session_id, client=True)
        return await self._memory(name, "history", {"session_id": session_id})

    @api.delete("/v1/memory/{name}/sessions/{session_id}")
    async def memory_erase(self, name: str, session_id: str) -> dict[str, Any]:
        check_session_id(session_id, client=True)
        return await self._memory(name, "erase", {"session_id": session_id})

    @api.delete("/v1/memory/{name}/sessions/{session_id}/history")
    async def memory_erase_history(self, name: str, session_id: str) -> dict[str, Any]:
        return await self.memory_erase(name, session_id)

    @api.post("/v1/memory/{name}/sessions/{session_id}/fork")
    async def memory_fork(
        self, name: str, session_id: str, body: ForkBody | None = None
    ) -> dict[str, Any]:
        check_session_id(session_id, client=True)
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
            check_session_id(session_id, client=True)
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
