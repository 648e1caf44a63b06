"""The gateway: the HTTP ingress at ``/``, for what spans agents, reaching agents'
applications by handle.

GET  /health                 liveness
GET  /v1/providers           the providers the agents use, their health and breakers
GET  /v1/agents              the agents the request's key covers

GET    /v1/memory/{name}/sessions                       the agent's sessions
GET    /v1/memory/{name}/sessions/{session}/history     one session's turns and summary
DELETE /v1/memory/{name}/sessions/{session}[/history]   erase it from every backend
POST   /v1/memory/{name}/sessions/{session}/fork        copy it to a new session
POST   /v1/memory/{name}/semantic/search                search the agent's semantic memory
GET    /v1/memory/{name}/episodes                       the agent's episodic log

POST   /v1/rag/{pipeline}/ingest    ingest documents into a RAG pipeline (serve/rag.py)
POST   /v1/rag/{pipeline}/search    search it

and every client protocol (``protocols/``: WebSocket, the OpenAI-compatible API, A2A,
AG-UI, channels, recent traces).  One agent's own routes, ``/v1/agents/{name}/...``
(``agent_routes.py``), are answered by that agent's application, which Serve's proxy
picks by its route prefix; the gateway declares them too, and answers them for
names it does not know (404) or an agent whose application is gone (503).

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

from fastapi import Query
from ray import serve

from astromesh_ray import __version__
from astromesh_ray.core.auth import ApiKey
from astromesh_ray.core.breaker import most_severe
from astromesh_ray.core.context import check_session_id
from astromesh_ray.core.memory.base import EPISODE_TYPES
from astromesh_ray.errors import InvalidRequest
from astromesh_ray.serve.agent_routes import AgentRoutes
from astromesh_ray.serve.app import api
from astromesh_ray.serve.gateway_core import MEMORY_PATIENCE_S, describe_endpoint
from astromesh_ray.serve.http import ForkBody, SearchBody
from astromesh_ray.serve.outcome import unwrap
from astromesh_ray.serve.protocols.a2a import A2ARoutes
from astromesh_ray.serve.protocols.agui import AGUIRoutes
from astromesh_ray.serve.protocols.channels import ChannelRoutes
from astromesh_ray.serve.protocols.openai_api import OpenAIRoutes
from astromesh_ray.serve.protocols.traces import TraceRoutes
from astromesh_ray.serve.protocols.websocket import WebSocketRoutes
from astromesh_ray.serve.rag import IngestBody, RagSearchBody
from astromesh_ray.serve.router_config import SHORT_BACKOFF

__all__ = ["Gateway", "api"]


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
# Its app (`api`) is its own: `serve.ingress` rewrites the app it is given (app.py).
@serve.deployment(
    name="gateway",
    max_ongoing_requests=200,
    ray_actor_options={"num_cpus": 0},
    request_router_config=SHORT_BACKOFF,  # the proxy retries a full replica every 25 ms
)
@serve.ingress(api)
class Gateway(
    AgentRoutes, WebSocketRoutes, OpenAIRoutes, A2ARoutes, AGUIRoutes, ChannelRoutes, TraceRoutes
):
    """The gateway's routes: its own (listings, memory, RAG), every client protocol's
    (``protocols/``) and the agent routes (``agent_routes.py``); ``GatewayCore`` has
    what they share."""

    @api.get("/health")
    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "agents": len(self._agents)}

    @api.get("/v1/providers")
    async def list_providers(self) -> dict[str, Any]:
        """Each provider the agents use: what it serves, where its client runs
        (``mode``: ``in_replica`` in each agent replica, or ``dedicated``, its own
        deployment), a live health probe, and its breakers (one per breaker policy of
        the agents using it); ``breaker`` is the most severe of them (open >
        half-open > closed)."""
        breakers = await self._breakers.snapshot()
        names = sorted(self._providers)
        healthy = await asyncio.gather(*(self._provider_healthy(name) for name in names))
        closed = {"state": "closed", "consecutive_failures": 0, "trips": 0}
        return {
            "providers": [
                {
                    "name": name,
                    **describe_endpoint(self._providers[name]),
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
        outcome = await self._link.call(name, "memory", op, args, patience_s=MEMORY_PATIENCE_S)
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
