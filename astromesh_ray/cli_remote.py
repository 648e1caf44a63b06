"""The ``astromesh`` command as a client of a running server (``--url``).

- ``stream_run``: ``POST {url}/v1/agents/{name}/stream``, the run's events over SSE
  (the same event dicts the in-process runtime yields, so one printer shows both);
- ``stream_chat``: ``POST {url}/v1/chat/completions`` with ``stream: true``, the
  whole conversation as ``messages`` and the session as ``user``.  That route is the
  one that takes earlier messages: the server uses them as the run's history, or,
  for an agent with conversational memory, replays the session's stored history
  instead (so nothing is counted twice).  Its chunks are turned back into event
  dicts here;
- ``list_agents``: ``GET {url}/v1/agents`` and each agent's ``/health``.

An error the server answers (its ``{"error": {code, message, hint}}`` envelope) is
raised as the ``AstromeshError`` it names; a server that cannot be reached is
``ServerUnreachable``.  The API key, when the server needs one, is read from
``$ASTROMESH_API_KEY`` (never from the command line, where ``ps`` would show it).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx

from astromesh_ray.errors import AstromeshError

__all__ = ["ServerUnreachable", "list_agents", "stream_chat", "stream_run"]

CONNECT_TIMEOUT_S = 10.0
API_KEY_ENV = "ASTROMESH_API_KEY"


def auth_headers() -> dict[str, str]:
    """``Authorization: Bearer $ASTROMESH_API_KEY`` when it is set."""
    key = os.environ.get(API_KEY_ENV, "").strip()
    return {"Authorization": f"Bearer {key}"} if key else {}


class ServerUnreachable(AstromeshError):
    """``--url`` names a server that does not answer (nothing listens, a wrong host)."""

    code = "server_unreachable"
    http_status = 503


def _unreachable(url: str, exc: httpx.TransportError) -> ServerUnreachable:
    return ServerUnreachable(
        f"cannot reach the server at {url}: {exc or type(exc).__name__}",
        hint="start one with `astromesh serve`, or check --url (e.g. http://127.0.0.1:8000)",
    )


def _server_error(status: int, body: bytes) -> AstromeshError:
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return AstromeshError.from_dict(error)
    text = body.decode(errors="replace").strip()[:200]
    return AstromeshError(f"the server answered HTTP {status}" + (f": {text}" if text else ""))


def base_url(url: str) -> str:
    return url.rstrip("/")


def list_agents(url: str) -> list[dict[str, Any]]:
    """Each agent the server at ``url`` serves (``GET /v1/agents``), with ``health``:
    its ``/health`` answer, or ``{"status": "unavailable", "error": ...}`` when that
    call fails (an application still starting, a replica down)."""
    root = base_url(url)
    try:
        with httpx.Client(
            timeout=httpx.Timeout(30.0, connect=CONNECT_TIMEOUT_S), headers=auth_headers()
        ) as client:
            reply = client.get(f"{root}/v1/agents")
            if reply.status_code != 200:
                raise _server_error(reply.status_code, reply.content)
            agents: list[dict[str, Any]] = list(reply.json().get("agents") or [])
            for agent in agents:
                health = client.get(f"{root}/v1/agents/{agent['name']}/health")
                if health.status_code == 200:
                    agent["health"] = health.json()
                else:
                    error = _server_error(health.status_code, health.content)
                    agent["health"] = {"status": "unavailable", "error": error.message}
    except httpx.TransportError as exc:
        raise _unreachable(root, exc) from None
    return agents


async def _sse(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """``(event, data)`` of each Server-Sent Event (``event`` is ``message`` when
    the event names no type, as in the OpenAI stream)."""
    kind = "message"
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield kind, "\n".join(data)
            kind, data = "message", []
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield kind, "\n".join(data)


async def stream_run(url: str, agent: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """The events of one run of ``agent`` on the server at ``url``; an ``error``
    event is raised as its ``AstromeshError``."""
    root = base_url(url)
    timeout = httpx.Timeout(None, connect=CONNECT_TIMEOUT_S)  # a run may be silent long
    try:
        async with (
            httpx.AsyncClient(timeout=timeout, headers=auth_headers()) as client,
            client.stream("POST", f"{root}/v1/agents/{agent}/stream", json=body) as response,
        ):
            if response.status_code != 200:
                raise _server_error(response.status_code, await response.aread())
            async for _, data in _sse(response):
                event: dict[str, Any] = json.loads(data)
                if event.get("type") == "error":
                    raise AstromeshError.from_dict(dict(event.get("error") or {}))
                yield event
    except httpx.TransportError as exc:
        raise _unreachable(root, exc) from None


async def stream_chat(
    url: str,
    agent: str,
    messages: list[dict[str, Any]],
    session_id: str,
    context: dict[str, Any],
) -> AsyncIterator[dict[str, Any]]:
    """One turn of a conversation over the OpenAI-compatible route, as event dicts:
    ``token`` for each content delta, the tool activity the route carries in its
    ``astromesh`` field, then ``run_finished`` with the answer, ids and status."""
    root = base_url(url)
    body = {
        "model": agent,
        "messages": messages,
        "stream": True,
        "user": session_id,
        "context": context,
    }
    timeout = httpx.Timeout(None, connect=CONNECT_TIMEOUT_S)
    answer: list[str] = []
    try:
        async with (
            httpx.AsyncClient(timeout=timeout, headers=auth_headers()) as client,
            client.stream("POST", f"{root}/v1/chat/completions", json=body) as response,
        ):
            if response.status_code != 200:
                raise _server_error(response.status_code, await response.aread())
            async for _, data in _sse(response):
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise AstromeshError.from_dict(dict(chunk["error"]))
                for event in _chunk_events(chunk, answer):
                    yield event
    except httpx.TransportError as exc:
        raise _unreachable(root, exc) from None


def _chunk_events(chunk: dict[str, Any], answer: list[str]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for choice in chunk.get("choices") or []:
        text = (choice.get("delta") or {}).get("content")
        if text:
            answer.append(text)
            events.append(
                {"type": "token", "channel": "answer", "text": text, "iteration": 0, "role": ""}
            )
    extra = chunk.get("astromesh")
    if isinstance(extra, dict):
        if extra.get("type") == "run_finished":
            result = {k: v for k, v in extra.items() if k != "type"}
            events.append({"type": "run_finished", "result": {**result, "answer": "".join(answer)}})
        else:
            events.append(dict(extra))
    return events
