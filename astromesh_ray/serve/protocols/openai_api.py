"""The OpenAI-compatible API of the gateway: every agent is a "model".

POST /v1/chat/completions   {model: <agent>, messages, stream?, ...} -> chat.completion,
                            or (stream: true) chat.completion.chunk objects over SSE
GET  /v1/models             the agents, as OpenAI models (id: the agent's name)
GET  /v1/models/{model}     one of them

The last message (the user's) is the run's query; the session is the
``X-Session-Id`` header or the ``user`` field.  The earlier messages are the run's
history, unless the agent keeps conversational memory and a session is given:
then the session's stored history is replayed instead (a client that resends the
whole conversation each turn would otherwise send it twice).  What the body may
hold, how tool activity is shown and how errors look: ``openai_chat.py``.

Errors on these routes are OpenAI-shaped (``{"error": {message, type, param,
code}}``) with the status the official client maps to its exception classes; an
error after a stream started is one ``data: {"error": ...}`` line, then the stream
closes (no ``[DONE]``).
"""

# No `from __future__ import annotations`: FastAPI must see real annotation objects.
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import Header, Request
from fastapi.responses import JSONResponse, StreamingResponse

from astromesh_ray.errors import AstromeshError, InvalidRequest, RunError
from astromesh_ray.serve.app import api
from astromesh_ray.serve.gateway_core import GatewayCore
from astromesh_ray.serve.protocols.openai_chat import (
    ChunkWriter,
    completion,
    openai_error,
    parse_chat_request,
    stream_error,
)
from astromesh_ray.serve.run_events import RunEvents

OWNER = "astromesh"


def error_response(exc: AstromeshError) -> JSONResponse:
    status, body, headers = openai_error(exc)
    return JSONResponse(body, status_code=status, headers=headers)


def _data(payload: Any) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def _chunks(
    events: RunEvents, writer: ChunkWriter
) -> AsyncGenerator[str | AstromeshError, None]:
    """SSE data lines of the run's chunks, then ``[DONE]``; a failure is yielded as
    the error itself (the route answers it with its status if nothing was sent)."""
    async with events:  # leaving early (a client gone) cancels the run
        try:
            async for event in events:
                for chunk in writer.event(event):
                    yield _data(chunk)
        except AstromeshError as exc:
            yield exc
            return
        if not writer.finished:
            yield RunError("the run's stream ended without a result", run_id=events.run_id)
            return
        yield "data: [DONE]\n\n"


async def _sse(first: str, rest: AsyncGenerator[str | AstromeshError, None]) -> AsyncIterator[str]:
    try:
        yield first
        async for item in rest:
            if isinstance(item, AstromeshError):
                yield _data(stream_error(item))
                return
            yield item
    finally:
        await rest.aclose()


class OpenAIRoutes(GatewayCore):
    """Chat completions and models over the gateway's agents."""

    def _model(self, name: str) -> dict[str, Any]:
        self._app(name)  # AgentNotFound (404) for unknown names
        # An agent has no creation time: `created` 0 says so (the field is required).
        return {"id": name, "object": "model", "created": 0, "owned_by": OWNER}

    @api.get("/v1/models")
    async def openai_models(self) -> dict[str, Any]:
        # The agents the request's key covers.
        return {"object": "list", "data": [self._model(n) for n in self._visible_agents()]}

    @api.get("/v1/models/{model}")
    async def openai_model(self, model: str) -> Any:
        try:
            return self._model(model)
        except AstromeshError as exc:
            return error_response(exc)

    @api.post("/v1/chat/completions")
    async def openai_chat_completions(
        self,
        request: Request,
        traceparent: str | None = Header(default=None),
        x_session_id: str | None = Header(default=None),
    ) -> Any:
        """An OpenAI chat completion from a run of the agent named by ``model``."""
        try:
            return await self._openai_chat(await request.body(), traceparent, x_session_id)
        except AstromeshError as exc:
            return error_response(exc)

    async def _openai_chat(
        self, raw: bytes, traceparent: str | None, session_header: str | None
    ) -> Any:
        try:
            parsed = json.loads(raw)
        except ValueError as exc:
            raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
        chat = parse_chat_request(parsed)
        name = chat.model
        self._model(name)
        session = chat.session(session_header)
        remembers = "conversational" in (self._agents[name].get("memory") or {})
        body = chat.run_body(session, with_history=not (remembers and session is not None))
        created = int(time.time())
        if not chat.stream:
            return completion(await self.call(name, body, traceparent), name, created)
        include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
        writer = ChunkWriter(name, created, include_usage)
        events = await self.open_run(name, body, traceparent)
        chunks = _chunks(events, writer)
        try:
            # Wait for the run's first output: a failure before it still gets its
            # HTTP status (a guardrail's 400, a budget's 429, a provider's 502).
            first = await anext(chunks)
        except BaseException:
            await chunks.aclose()
            raise
        if isinstance(first, AstromeshError):
            await chunks.aclose()
            raise first
        return StreamingResponse(
            _sse(first, chunks),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
