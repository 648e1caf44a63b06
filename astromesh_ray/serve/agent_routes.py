"""One agent's own routes, ``/v1/agents/{name}/...``: served by the agent's
application, in process, and by the gateway for names it does not know (404) or an
agent whose application is gone (503).

GET  /v1/agents/{name}         the agent's description
GET  /v1/agents/{name}/health  its tool servers (MCP) up or down
POST /v1/agents/{name}/run     {query, session_id, context} -> {answer, steps, usage, trace}
                               (with "stream": true or Accept: text/event-stream: as SSE)
POST /v1/agents/{name}/stream  same body -> Server-Sent Events, one per run event

GET  /v1/agents/{name}/runs/{run_id}                a paused run: the calls it waits on
POST /v1/agents/{name}/runs/{run_id}/tool_results   client tool results -> the run goes on
POST /v1/agents/{name}/runs/{run_id}/approve        approve pending calls -> the run goes on
POST /v1/agents/{name}/runs/{run_id}/reject         reject them (the model reads why)
POST /v1/agents/{name}/runs/{run_id}/retry          go on with a resumed run that failed

``AgentRoutes`` is inherited by both ``Gateway`` and ``AgentDeployment``; each route is
declared on both apps (``app.agent_route``) and reaches the agent through
``RouteCore``'s link: by handle from the gateway, the replica's own methods in the
agent's application.  So auth, ownership, spans, telemetry and error shapes are the
same code whichever app answers.  The route methods' names are their own
(``run_agent``, ``stream_agent``, ``agent_health``, ``paused_run``): Serve's ingress
binds routes through the class's MRO, and ``AgentDeployment``'s handle methods
(``run``, ``stream``, ``health``, ``paused``) must stay what handles call.  FastAPI's
operation ids come from these names (``run_agent_v1_agents__name__run_post``).
"""

# No `from __future__ import annotations`: FastAPI must see real annotation objects
# (Serve re-wraps the methods, losing the module globals string annotations need).
from typing import Any

from fastapi import Header, Query
from fastapi.responses import StreamingResponse

from astromesh_ray.serve.app import agent_route
from astromesh_ray.serve.gateway_spans import check_run_id, decision_of, results_of
from astromesh_ray.serve.http import DecisionBody, RunBody, ToolResultsBody
from astromesh_ray.serve.outcome import unwrap
from astromesh_ray.serve.route_core import MEMORY_PATIENCE_S, RouteCore
from astromesh_ray.serve.run_events import sse_events

__all__ = ["AgentRoutes", "wants_sse"]


def wants_sse(accept: str | None) -> bool:
    """An ``Accept`` header that asks for an event stream (and not JSON first)."""
    if not accept:
        return False
    kinds = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return "text/event-stream" in kinds and kinds[0] != "application/json"


class AgentRoutes(RouteCore):
    """The routes of one agent (see the module docstring)."""

    @agent_route("GET", "/v1/agents/{name}")
    async def get_agent(self, name: str) -> dict[str, Any]:
        self._app(name)  # 404 for unknown names
        return self._agents[name]

    @agent_route("GET", "/v1/agents/{name}/health")
    async def agent_health(self, name: str) -> dict[str, Any]:
        """One replica's view of the agent's tool servers: ``status`` ``ok``, or
        ``degraded`` with the toolsets that are down (an MCP server that did not
        answer at start is retried when the tools are listed again)."""
        self._app(name)
        health: dict[str, Any] = await self._link.call(name, "health", patience_s=MEMORY_PATIENCE_S)
        return {"agent": name, **health}

    @agent_route("POST", "/v1/agents/{name}/run")
    async def run_agent(
        self,
        name: str,
        body: RunBody,
        traceparent: str | None = Header(default=None),
        accept: str | None = Header(default=None),
    ) -> Any:
        if body.stream or wants_sse(accept):
            return await self._stream(name, "stream", body.request(), traceparent)
        return await self.call(name, body.request(), traceparent)

    @agent_route("POST", "/v1/agents/{name}/stream")
    async def stream_agent(
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
        """The events agent ``name``'s ``method`` streams, as SSE."""
        events = await self.open_run(name, body, traceparent, method=method, trace_id=trace_id)
        return StreamingResponse(sse_events(events), media_type="text/event-stream")

    # -- paused runs: client tools and approvals ---------------------------------------

    @agent_route("GET", "/v1/agents/{name}/runs/{run_id}")
    async def paused_run(self, name: str, run_id: str) -> dict[str, Any]:
        check_run_id(run_id)
        caller = self._key_for(name).caller.to_dict()  # another key's run is not found
        outcome = await self._link.call(
            name, "paused", run_id, caller, patience_s=MEMORY_PATIENCE_S
        )
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

    @agent_route("POST", "/v1/agents/{name}/runs/{run_id}/tool_results")
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

    @agent_route("POST", "/v1/agents/{name}/runs/{run_id}/approve")
    async def approve(
        self,
        name: str,
        run_id: str,
        body: DecisionBody | None = None,
        stream: bool = Query(default=False),
        traceparent: str | None = Header(default=None),
    ) -> Any:
        return await self._answer(name, run_id, decision_of("approve", body), stream, traceparent)

    @agent_route("POST", "/v1/agents/{name}/runs/{run_id}/retry")
    async def retry(
        self,
        name: str,
        run_id: str,
        stream: bool = Query(default=False),
        traceparent: str | None = Header(default=None),
    ) -> Any:
        return await self._answer(name, run_id, {"action": "retry"}, stream, traceparent)

    @agent_route("POST", "/v1/agents/{name}/runs/{run_id}/reject")
    async def reject(
        self,
        name: str,
        run_id: str,
        body: DecisionBody | None = None,
        stream: bool = Query(default=False),
        traceparent: str | None = Header(default=None),
    ) -> Any:
        return await self._answer(name, run_id, decision_of("reject", body), stream, traceparent)
