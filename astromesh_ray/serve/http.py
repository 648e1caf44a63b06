"""The HTTP contract of the gateway: request bodies and the one error mapping.

Every ``AstromeshError`` becomes ``{"error": {code, message, hint, ...}}`` with the
status its class declares (``AgentNotFound`` 404, ``InvalidRequest`` 422,
``ProviderError`` 502, ``RunTimeout`` 504, ...).  Invalid bodies and oversized
requests get the same envelope.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from astromesh_ray.errors import AstromeshError

MAX_BODY_BYTES = 1024 * 1024
MAX_QUERY_CHARS = 100_000


class RunBody(BaseModel):
    """``POST /v1/agents/{name}/run``."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(
        min_length=1, max_length=MAX_QUERY_CHARS, description="The user's message to the agent."
    )
    session_id: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="Conversation id; turns with the same id belong to one conversation.",
    )
    context: dict[str, Any] = Field(
        default_factory=dict, description="Variables for the agent's Jinja2 prompts."
    )


def error_body(code: str, message: str, hint: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "hint": hint, **extra}}


def install_error_handlers(app: FastAPI) -> None:
    """Map errors to statuses in one place."""

    @app.exception_handler(AstromeshError)
    async def _astromesh(_: Request, exc: AstromeshError) -> JSONResponse:
        return JSONResponse({"error": exc.to_dict()}, status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ())]
            if loc[:1] == ["body"]:
                loc = loc[1:]
            problems.append({"field": ".".join(loc) or "(body)", "message": err.get("msg", "")})
        message = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        return JSONResponse(
            error_body(
                "invalid_request",
                f"invalid request body: {message}",
                'send JSON like {"query": "...", "session_id": null, "context": {}}',
                fields=problems,
            ),
            status_code=422,
        )


class BodySizeLimit:
    """Refuse bodies over ``limit`` bytes with 413 before reading them whole."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._reject(send)
            return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        response = JSONResponse(
            error_body(
                "request_too_large",
                f"request body is larger than {self.limit} bytes",
                "send a shorter query or context",
            ),
            status_code=413,
        )
        await response({"type": "http"}, _no_receive, send)


class _TooLarge(Exception):
    pass


async def _no_receive() -> Any:
    return {"type": "http.disconnect"}
