"""The HTTP contract of the gateway: request bodies and the one error mapping.

Every ``AstromeshError`` becomes ``{"error": {code, message, hint, ...}}`` with the
status its class declares (``AgentNotFound`` 404, ``InvalidRequest`` 422,
``ProviderError`` 502, ``RunTimeout`` 504, ...).  Invalid bodies, oversized
requests, unknown routes and wrong methods get the same envelope.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from astromesh_ray.core.context import SESSION_ID
from astromesh_ray.errors import AstromeshError

MAX_BODY_BYTES = 1024 * 1024
MAX_QUERY_CHARS = 100_000

# Codes for the errors Starlette raises itself (no route, wrong method, ...).
HTTP_ERROR_CODES: dict[int, str] = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
}
_HTTP_ERROR_HINTS: dict[int, str] = {
    404: "GET /openapi.json lists the routes",
    405: "the Allow header lists the methods this path accepts",
}


BODY_CONFIG = ConfigDict(extra="forbid", strict=True)
"""The request bodies' model config: unknown fields are refused, and so are values of
another JSON type than the field's (``"k": true`` or ``"k": "5"`` for an integer, ``1``
for a boolean), which pydantic's lax mode would convert: what the OpenAPI schema
says is invalid is refused."""


def whole_number(value: Any) -> Any:
    """``value``, or the integer of a float with no fraction (``98.0``): JSON Schema
    counts it as an integer, which strict mode alone would refuse (a ``mode="before"``
    validator of the body's integer fields)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class RunBody(BaseModel):
    """``POST /v1/agents/{name}/run``."""

    model_config = BODY_CONFIG

    query: str = Field(
        min_length=1, max_length=MAX_QUERY_CHARS, description="The user's message to the agent."
    )
    session_id: str | None = Field(
        default=None,
        pattern=SESSION_ID.pattern,
        description="Conversation id; turns with the same id belong to one conversation "
        "(1-128 letters, digits and . _ : @ -, starting with a letter or digit).",
    )
    context: dict[str, Any] = Field(
        default_factory=dict, description="Variables for the agent's Jinja2 prompts."
    )
    stream: bool = Field(
        default=False,
        description="Stream the run's events as Server-Sent Events (as does an "
        "`Accept: text/event-stream` header) instead of answering once with the result.",
    )

    def request(self) -> dict[str, Any]:
        """The ``RunRequest`` fields of this body."""
        return self.model_dump(exclude={"stream"})


class ForkBody(BaseModel):
    """``POST /v1/memory/{agent}/sessions/{session}/fork``."""

    model_config = BODY_CONFIG

    new_session_id: str | None = Field(
        default=None,
        pattern=SESSION_ID.pattern,
        description="Id of the new session (default: a new random one).",
    )


class SearchBody(BaseModel):
    """``POST /v1/memory/{agent}/semantic/search``."""

    model_config = BODY_CONFIG

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, description="Text to search for.")
    k: int | None = Field(default=None, ge=1, le=1000, description="Results at most.")
    threshold: float | None = Field(
        default=None, ge=0, le=1, description="Minimum similarity (default: the agent's)."
    )
    session_id: str | None = Field(
        default=None, pattern=SESSION_ID.pattern, description="Search this session's items."
    )

    _whole_k = field_validator("k", mode="before")(whole_number)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """The methods some route of the app serves at the request's path (Starlette's
    405 names only those of the first route it tried: one route per method here)."""
    routes = request.app.router.routes
    scope = dict(request.scope)
    return [
        method
        for method in _METHODS
        if any(route.matches({**scope, "method": method})[0] is Match.FULL for route in routes)
    ]


def error_body(code: str, message: str, hint: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "hint": hint, **extra}}


def install_error_handlers(app: FastAPI) -> None:
    """Map errors to statuses in one place."""

    @app.exception_handler(AstromeshError)
    async def _astromesh(_: Request, exc: AstromeshError) -> JSONResponse:
        headers = None
        retry_after = exc.details.get("retry_after_s")
        if isinstance(retry_after, int | float) and retry_after > 0:  # a budget's window
            headers = {"Retry-After": str(int(retry_after))}
        return JSONResponse({"error": exc.to_dict()}, status_code=exc.http_status, headers=headers)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        # Unknown routes and wrong methods: same status, our envelope, not {"detail"}.
        headers = exc.headers
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return JSONResponse(
            error_body(
                HTTP_ERROR_CODES.get(exc.status_code, "http_error"),
                str(exc.detail),
                _HTTP_ERROR_HINTS.get(exc.status_code),
            ),
            status_code=exc.status_code,
            headers=headers,
        )

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
    """Refuse bodies over ``limit`` bytes with 413, reading at most ``limit`` bytes.

    The body is read (up to the limit) before the app runs: a chunked body, which
    declares no Content-Length, is only known to be too large while it is read, and
    an error raised inside the app's body parsing would reach the client as a 400.
    """

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
        chunks: list[bytes] = []
        size = 0
        ended: Message | None = None  # a disconnect while reading: the app sees it
        while True:
            message = await receive()
            if message["type"] != "http.request":
                ended = message
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._reject(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        pending: list[Message] = [{"type": "http.request", "body": b"".join(chunks)}]
        if ended is not None:
            pending.append(ended)

        async def replay() -> Message:
            return pending.pop(0) if pending else await receive()

        await self.app(scope, replay, send)

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


async def _no_receive() -> Any:
    return {"type": "http.disconnect"}


RUN_ID = r"^[0-9a-f]{32}$"
"""What a run id is (``new_run_id``): 32 lowercase hex digits."""

MAX_TOOL_RESULT_CHARS = 1_000_000
"""The longest client tool result the API accepts (the agent's tool then cuts it to
its ``max_result_chars``)."""


class ToolResultBody(BaseModel):
    """One client tool's result."""

    model_config = BODY_CONFIG

    tool_call_id: str = Field(min_length=1, max_length=200, description="The pending call.")
    content: str | dict[str, Any] | list[Any] = Field(
        description="What the tool returned (text, or JSON, which the model reads as text)."
    )
    is_error: bool = Field(default=False, description="The tool failed; content says why.")

    @field_validator("content")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        size = len(value) if isinstance(value, str) else len(json.dumps(value))
        if size > MAX_TOOL_RESULT_CHARS:
            raise ValueError(f"at most {MAX_TOOL_RESULT_CHARS} characters (got {size})")
        return value

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return json.dumps(self.content, separators=(",", ":"), ensure_ascii=False)


class ToolResultsBody(BaseModel):
    """``POST /v1/agents/{name}/runs/{run_id}/tool_results``."""

    model_config = BODY_CONFIG

    tool_results: list[ToolResultBody] = Field(
        min_length=1, max_length=128, description="A result for each pending client call."
    )


class DecisionItem(BaseModel):
    """One approval call's own decision."""

    model_config = BODY_CONFIG

    tool_call_id: str = Field(min_length=1, max_length=200, description="The pending call.")
    action: Literal["approve", "reject"] = Field(description="What is decided for it.")
    reason: str | None = Field(default=None, max_length=2000, description="Why.")


class DecisionBody(BaseModel):
    """``POST /v1/agents/{name}/runs/{run_id}/approve`` (or ``/reject``)."""

    model_config = BODY_CONFIG

    tool_call_ids: list[str] | None = Field(
        default=None,
        max_length=128,
        description="The pending approval calls this endpoint decides (default: all those "
        "`decisions` does not name).",
    )
    decisions: list[DecisionItem] = Field(
        default_factory=list,
        max_length=128,
        description="Per-call decisions, to approve some calls and reject others at once.",
    )
    reason: str | None = Field(
        default=None, max_length=2000, description="Why (a rejection's reason reaches the model)."
    )
    tool_results: list[ToolResultBody] = Field(
        default_factory=list,
        max_length=128,
        description="Results of pending client calls, answered in the same request.",
    )
