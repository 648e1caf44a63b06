"""``WS /v1/ws/agent/{name}``: an agent's turns over one WebSocket.

The protocol is ``ws_session.py`` (messages, frames) and ``ws_connection.py`` (one
turn at a time, cancel, heartbeats); this module accepts the connection, refuses it for an unknown
agent or a bad query string (an ``error`` frame, then close code 4000 + the HTTP
status: 4404, 4422), and runs each turn through ``GatewayCore.open_run``, as SSE
does, so a turn's events are the SSE stream's.

A W3C ``traceparent`` header on the handshake is the parent of every turn of the
connection (each turn is its own run, under that trace); without one each turn
starts a new trace.

An open connection holds one of the gateway replica's ongoing requests
(``max_ongoing_requests``) for as long as it stays open.

Back-pressure: a turn takes its next event from the run only once the previous
frame was sent, and keeps no queue of its own.  Under Ray Serve that does not reach
the model: a replica's ASGI ``send`` returns once the message is queued for the
proxy (Serve's ``MessageQueue``, unbounded), and Serve's streaming handles (agent to
gateway, provider to agent) do not wait for their consumer either, so a client that
reads nothing lets the turn run to its end, its frames held by Serve (measured: a
50,000-word answer finished in 0.5 s while the client read nothing; reading its
frames then took 61 s).  What bounds that memory is the turn: one at a time per
connection, each bounded by the agent's ``max_iterations`` and its models'
``max_tokens``.  The proxy's own uvicorn sends WebSocket pings (every 20 s; no pong
in 20 s closes the connection) and closes frames over 16 MiB with 1009; ASGI gives
an application no pings of its own, hence the JSON ``heartbeat`` frame.
"""

# No `from __future__ import annotations`: FastAPI must see real annotation objects.
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect

from astromesh_ray.errors import AstromeshError
from astromesh_ray.serve.app import api
from astromesh_ray.serve.gateway_core import GatewayCore
from astromesh_ray.serve.protocols.ws_connection import ClientGone, EventStream, WsConnection
from astromesh_ray.serve.protocols.ws_session import (
    close_code,
    close_reason,
    encode,
    error_frame,
    heartbeat_interval,
)


class _Socket:
    """A Starlette ``WebSocket`` as the session's ``Transport``."""

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket

    async def receive(self) -> str | bytes | None:
        message = await self._websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        if text is not None:
            return str(text)
        return bytes(message.get("bytes") or b"")

    async def send(self, text: str) -> None:
        try:
            await self._websocket.send_text(text)
        except WebSocketDisconnect:
            raise ClientGone from None


class WebSocketRoutes(GatewayCore):
    """The gateway's WebSocket route."""

    @api.websocket("/v1/ws/agent/{name}")
    async def ws_agent(self, websocket: WebSocket, name: str) -> None:
        """Turns of agent ``name``: send ``{"query", "session_id"?, "context"?}``,
        receive the turn's events, then ``done``; ``{"type": "cancel"}`` stops it."""
        await websocket.accept()
        try:
            self._app(name)  # AgentNotFound for unknown names
            heartbeat_s = heartbeat_interval(websocket.query_params)
        except AstromeshError as exc:
            await websocket.send_text(encode(error_frame(exc.to_dict(), "connection")))
            await websocket.close(close_code(exc.http_status), close_reason(exc.message))
            return
        traceparent = websocket.headers.get("traceparent")

        async def open_run(body: dict[str, Any]) -> EventStream:
            return await self.open_run(name, body, traceparent)

        await WsConnection(_Socket(websocket), open_run, heartbeat_s).serve()
