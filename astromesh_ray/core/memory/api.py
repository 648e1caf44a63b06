"""The memory API's operations on one agent's memory, as JSON in and out.

The gateway's ``/v1/memory/...`` routes (``serve/gateway.py``) validate the request
and call ``memory_op`` where the agent's memory lives (its Serve replica, through
``AgentDeployment.memory``; in one process for ``astromesh run`` and the tests): one
table of operations, so every path answers the same bodies.

    sessions   {limit, offset, session_prefix}      -> {sessions: [...]}
    history    {session_id}                         -> {session_id, summary, turns: [...]}
    erase      {session_id}                         -> {session_id, removed: {backend: n}}
    fork       {session_id, new_session_id}         -> {session_id, new_session_id, turns}
    search     {query, k, threshold, session_id}    -> {hits: [...]}
    episodes   {session_id, session_prefix, run_id, types, since, until, limit, offset}
                                                    -> {episodes: [...]}

``session_prefix`` (optional, on ``sessions`` and ``episodes``) keeps only the
sessions whose id starts with it, a literal prefix (1 to 64 characters of a session
id, e.g. ``<key_id>@``; ``InvalidRequest`` naming the field otherwise); ``limit`` and
``offset`` then page through what matches.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from astromesh_ray.core.memory.agent import AgentMemory
from astromesh_ray.errors import InvalidRequest, MemoryNotFound

Op = Callable[[AgentMemory, Mapping[str, Any]], Awaitable[dict[str, Any]]]


async def _sessions(memory: AgentMemory, args: Mapping[str, Any]) -> dict[str, Any]:
    found = await memory.sessions(
        limit=int(args.get("limit", 100)),
        offset=int(args.get("offset", 0)),
        prefix=args.get("session_prefix"),
    )
    return {"agent": memory.agent, "sessions": [s.to_dict() for s in found]}


async def _history(memory: AgentMemory, args: Mapping[str, Any]) -> dict[str, Any]:
    session = str(args["session_id"])
    history = await memory.history(session)
    return {
        "agent": memory.agent,
        "session_id": session,
        "summary": history.summary.to_dict() if history.summary else None,
        "turns": [t.to_dict() for t in history.turns],
    }


async def _erase(memory: AgentMemory, args: Mapping[str, Any]) -> dict[str, Any]:
    session = str(args["session_id"])
    removed = await memory.erase(session)
    return {"agent": memory.agent, "session_id": session, "removed": removed}


async def _fork(memory: AgentMemory, args: Mapping[str, Any]) -> dict[str, Any]:
    session, new = str(args["session_id"]), str(args["new_session_id"])
    turns = await memory.fork(session, new)
    return {"agent": memory.agent, "session_id": session, "new_session_id": new, "turns": turns}


async def _search(memory: AgentMemory, args: Mapping[str, Any]) -> dict[str, Any]:
    session = args.get("session_id")
    hits = await memory.search_as(
        str(session) if session is not None else None,
        str(args["query"]),
        k=args.get("k"),
        threshold=args.get("threshold"),
    )
    return {"agent": memory.agent, "hits": [h.to_dict() for h in hits]}


async def _episodes(memory: AgentMemory, args: Mapping[str, Any]) -> dict[str, Any]:
    found = await memory.episodes(
        session=args.get("session_id"),
        session_prefix=args.get("session_prefix"),
        run_id=args.get("run_id"),
        types=tuple(args.get("types") or ()),
        since=args.get("since"),
        until=args.get("until"),
        limit=int(args.get("limit", 100)),
        offset=int(args.get("offset", 0)),
    )
    return {"agent": memory.agent, "episodes": [e.to_dict() for e in found]}


MEMORY_OPS: dict[str, Op] = {
    "sessions": _sessions,
    "history": _history,
    "erase": _erase,
    "fork": _fork,
    "search": _search,
    "episodes": _episodes,
}


async def memory_op(
    memory: AgentMemory | None, agent: str, op: str, args: Mapping[str, Any]
) -> dict[str, Any]:
    """Run memory operation ``op`` of agent ``agent`` (404 when it has no memory)."""
    if memory is None:
        raise MemoryNotFound(
            f"agent {agent!r} has no memory", hint="declare spec.memory in its YAML"
        )
    try:
        run = MEMORY_OPS[op]
    except KeyError:
        raise InvalidRequest(
            f"unknown memory operation {op!r}", hint="operations: " + ", ".join(MEMORY_OPS)
        ) from None
    return await run(memory, args)
