"""The gateway's OpenAPI document, completed for client generators and fuzzers.

FastAPI documents each route's 200 and its own 422 (``HTTPValidationError``, a
shape the gateway never sends).  ``install_openapi`` post-processes the generated
document so that it says what the gateway really answers:

- ``components.schemas.Error``: the one error envelope (``http.py``), and
  ``OpenAIError``, the same envelope with OpenAI's ``type`` and ``param``, for the
  OpenAI-compatible routes (``protocols/openai_chat.py``; ``openapi_schemas.py``);
- on every operation each error status it can return, each referencing that
  schema, with the error codes behind it.  The statuses come from the error
  classes (``http_status``, and ``openai_error`` for the OpenAI routes), the codes
  from their ``code``: ``ROUTES`` only names which classes each route raises;
- the gate's (``auth.py``, by its ``RULES``): a ``bearerAuth`` security scheme and
  401 (with ``WWW-Authenticate``), 403 and 429 (with ``Retry-After``) on every
  keyed route; ``/health`` is public, and channel webhooks are authenticated by
  their platform's signature (their 401 and 403 are the channel's own);
- 400 for a body that is not UTF-8 JSON and 413 for a body over the size limit,
  where a route takes a body;
- the patterns of run, session and trace ids, which the routes check themselves;
- the event-stream media type of streaming answers, and the bodies of the routes
  that read theirs themselves (chat completions, A2A's JSON-RPC, channel webhooks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI

from astromesh_ray.core.context import STORED_SESSION_ID
from astromesh_ray.core.memory.base import EPISODE_TYPES
from astromesh_ray.errors import (
    AgentNotFound,
    AgentUnavailable,
    AstromeshError,
    BudgetExceeded,
    ChannelNotFound,
    ChannelUnauthorized,
    ChannelUnavailable,
    ChannelVerificationFailed,
    ConfigError,
    Forbidden,
    GuardrailUnavailable,
    GuardrailViolation,
    InvalidRequest,
    MemoryConflict,
    MemoryNotFound,
    MemoryUnavailable,
    PipelineNotFound,
    ProviderError,
    RateLimited,
    RateLimiterUnavailable,
    RunError,
    RunLimitExceeded,
    RunNotFound,
    RunTimeout,
    ToolError,
    TraceNotFound,
    Unauthenticated,
)
from astromesh_ray.serve.auth import ADMIN, RULES
from astromesh_ray.serve.http import HTTP_ERROR_CODES, MAX_BODY_BYTES, RUN_ID
from astromesh_ray.serve.openapi_schemas import (
    BEARER,
    ERROR,
    HEADERS,
    OPENAI_ERROR,
    SHOULD_RETRY,
    SSE_EVENT,
    bearer_scheme,
    delivery_body,
    error_schema,
    json_rpc_body,
    openai_error_schema,
    ref,
    sse_event_schema,
)
from astromesh_ray.serve.protocols.openai_chat import ChatRequest, openai_error

ErrorClass = type[AstromeshError]
Streams = Literal["json", "sse", "both"]

# -- which errors each route raises ----------------------------------------------------

_SERVER: tuple[ErrorClass, ...] = (AstromeshError, ConfigError)  # 500, on every route
_AGENT: tuple[ErrorClass, ...] = (AgentNotFound,)
# A call to the agent's application: missing, failed or too slow.
_CALL: tuple[ErrorClass, ...] = (AgentNotFound, AgentUnavailable)
# A run, before its answer (or its stream's first event).
_RUN: tuple[ErrorClass, ...] = (
    *_CALL,
    InvalidRequest,  # the prompt's context, the session id
    GuardrailViolation,
    BudgetExceeded,
    ProviderError,
    ToolError,
    RunTimeout,
    RunLimitExceeded,
    GuardrailUnavailable,
    MemoryUnavailable,
    RunError,
)
_PAUSED: tuple[ErrorClass, ...] = (*_RUN, RunNotFound)  # a paused run, by id
_MEMORY: tuple[ErrorClass, ...] = (*_CALL, InvalidRequest, MemoryNotFound, MemoryUnavailable)
_RAG: tuple[ErrorClass, ...] = (PipelineNotFound, InvalidRequest, MemoryUnavailable, ProviderError)
_CHANNEL: tuple[ErrorClass, ...] = (ChannelNotFound, ChannelUnavailable)
# The gate's, on every keyed route (a key scoped to actions or agents: also 403).
_KEYED: tuple[ErrorClass, ...] = (Unauthenticated, RateLimited, RateLimiterUnavailable)


@dataclass(frozen=True, slots=True)
class RouteDoc:
    """What one route answers beyond its 200."""

    errors: tuple[ErrorClass, ...] = ()
    streams: Streams = "json"  # its 200: JSON, an event stream, or either
    raw_body: bool = False  # reads its body itself: no 400 from FastAPI's JSON parsing
    openai: bool = False  # errors in OpenAI's shape and statuses (``openai_error``)


ROUTES: dict[tuple[str, str], RouteDoc] = {
    ("GET", "/health"): RouteDoc(),
    ("GET", "/v1/providers"): RouteDoc(),
    ("GET", "/v1/agents"): RouteDoc(),
    ("GET", "/v1/agents/{name}"): RouteDoc(_AGENT),
    ("GET", "/v1/agents/{name}/health"): RouteDoc(_CALL),
    ("POST", "/v1/agents/{name}/run"): RouteDoc(_RUN, "both"),
    ("POST", "/v1/agents/{name}/stream"): RouteDoc(_RUN, "sse"),
    ("GET", "/v1/agents/{name}/runs/{run_id}"): RouteDoc((*_CALL, InvalidRequest, RunNotFound)),
    ("POST", "/v1/agents/{name}/runs/{run_id}/tool_results"): RouteDoc(_PAUSED, "both"),
    ("POST", "/v1/agents/{name}/runs/{run_id}/approve"): RouteDoc(_PAUSED, "both"),
    ("POST", "/v1/agents/{name}/runs/{run_id}/reject"): RouteDoc(_PAUSED, "both"),
    ("POST", "/v1/agents/{name}/runs/{run_id}/retry"): RouteDoc(_PAUSED, "both"),
    ("GET", "/v1/memory/{name}/sessions"): RouteDoc(_MEMORY),
    ("GET", "/v1/memory/{name}/sessions/{session_id}/history"): RouteDoc(_MEMORY),
    ("DELETE", "/v1/memory/{name}/sessions/{session_id}"): RouteDoc(_MEMORY),
    ("DELETE", "/v1/memory/{name}/sessions/{session_id}/history"): RouteDoc(_MEMORY),
    ("POST", "/v1/memory/{name}/sessions/{session_id}/fork"): RouteDoc((*_MEMORY, MemoryConflict)),
    ("POST", "/v1/memory/{name}/semantic/search"): RouteDoc(_MEMORY),
    ("GET", "/v1/memory/{name}/episodes"): RouteDoc(_MEMORY),
    ("POST", "/v1/rag/{pipeline}/ingest"): RouteDoc(_RAG),
    ("POST", "/v1/rag/{pipeline}/search"): RouteDoc(_RAG),
    ("GET", "/v1/traces/{trace_id}"): RouteDoc((InvalidRequest, TraceNotFound)),
    ("GET", "/.well-known/agent-card.json"): RouteDoc(_AGENT),
    ("GET", "/a2a/{name}/.well-known/agent-card.json"): RouteDoc(_AGENT),
    # JSON-RPC: every error after the agent is found is a JSON-RPC error, in a 200.
    ("POST", "/a2a/{name}"): RouteDoc(_AGENT, "both", raw_body=True),
    ("POST", "/v1/agui/{name}"): RouteDoc(_PAUSED, "sse", raw_body=True),
    ("GET", "/v1/channels/{channel}/webhook"): RouteDoc((*_CHANNEL, ChannelVerificationFailed)),
    ("POST", "/v1/channels/{channel}/webhook"): RouteDoc(
        (*_CHANNEL, ChannelUnauthorized, InvalidRequest), raw_body=True
    ),
    ("GET", "/v1/models"): RouteDoc(openai=True),
    ("GET", "/v1/models/{model}"): RouteDoc(_AGENT, openai=True),
    ("POST", "/v1/chat/completions"): RouteDoc(_RUN, "both", raw_body=True, openai=True),
}
"""Every route of the gateway's app: the errors it raises itself (the app's handlers,
the body size limit and the gate add theirs).  A route missing here is documented
with those alone; a unit test keeps this table complete."""

# Identifiers the routes check themselves (``check_run_id``, ``check_session_id``,
# ``get_trace``), by where and name: documented so that clients and fuzzers send
# well-formed ones.  (The episodes' ``run_id`` filter is not checked: any string.)
PARAMETER_PATTERNS: dict[tuple[str, str], str] = {
    ("path", "run_id"): RUN_ID,
    ("path", "session_id"): STORED_SESSION_ID.pattern,
    ("query", "session_id"): STORED_SESSION_ID.pattern,
    ("path", "trace_id"): r"^[0-9a-fA-F]{32}$",  # get_trace lower-cases it first
}
# Values a route checks itself, by path and parameter.
PARAMETER_ENUMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("/v1/memory/{name}/episodes", "type"): EPISODE_TYPES,
}

# -- statuses ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorDoc:
    """One error an operation can answer: its status, code and what it means."""

    status: int
    code: str
    summary: str


def _summary(cls: ErrorClass) -> str:
    return (cls.__doc__ or cls.code).strip().split("\n\n")[0].replace("\n", " ")


def _of(cls: ErrorClass, openai: bool) -> ErrorDoc:
    status = openai_error(cls(""))[0] if openai else cls.http_status
    return ErrorDoc(status, cls.code, _summary(cls))


_HTTP_SUMMARIES = {
    400: "The body is not UTF-8 JSON.",
    413: f"The body is larger than {MAX_BODY_BYTES} bytes.",
}


def _http(status: int) -> ErrorDoc:
    return ErrorDoc(status, HTTP_ERROR_CODES[status], _HTTP_SUMMARIES[status])


def operation_errors(
    method: str, path: str, *, has_body: bool, validated: bool
) -> tuple[list[ErrorDoc], bool]:
    """The errors operation ``method path`` can answer, and whether it needs a key.

    ``has_body``: it takes a request body; ``validated``: FastAPI validates some of
    its parameters or its body (a failure is our 422)."""
    doc = ROUTES.get((method, path), RouteDoc())
    classes: list[ErrorClass] = [*_SERVER, *doc.errors]
    if validated:
        classes.append(InvalidRequest)
    rule = RULES.get((method, path), ADMIN)
    keyed = not (rule.public or rule.channel)
    if keyed:
        classes += _KEYED
        if rule.action is not None or rule.agent is not None:
            classes.append(Forbidden)
    errors = list({(e.status, e.code): e for e in (_of(c, doc.openai) for c in classes)}.values())
    if has_body:
        errors.append(_http(413))
        if not doc.raw_body:
            errors.append(_http(400))
    return errors, keyed


# -- the document ------------------------------------------------------------------------


def _response(status: int, errors: list[ErrorDoc], doc: RouteDoc, keyed: bool) -> dict[str, Any]:
    codes = "; ".join(f"`{e.code}`: {e.summary}" for e in sorted(errors, key=lambda e: e.code))
    schema = OPENAI_ERROR if doc.openai else ERROR
    response: dict[str, Any] = {
        "description": codes,
        "content": {"application/json": {"schema": ref(schema)}},
    }
    headers = dict(HEADERS.get(status, {}))
    if status == 401:
        if keyed:  # the gate's 401 always challenges
            headers["WWW-Authenticate"] = {**headers["WWW-Authenticate"], "required": True}
        else:  # a channel's signature: no bearer challenge
            headers.pop("WWW-Authenticate", None)
    if doc.openai:
        headers.update(SHOULD_RETRY)
    if headers:
        response["headers"] = headers
    return response


_NO_CONSTRAINT = {"type", "title", "description", "default"}


def _trivial(schema: dict[str, Any]) -> bool:
    """A parameter no value fails (a header, path or query string): a string or null,
    with no constraint."""
    return all(
        kind.get("type") in ("string", "null") and set(kind) <= _NO_CONSTRAINT
        for kind in schema.get("anyOf", [schema])
    )


def _streams(operation: dict[str, Any], streams: Streams) -> None:
    """The 200's media types: an event stream in place of FastAPI's JSON, or beside it."""
    if streams == "json":
        return
    ok = operation.setdefault("responses", {}).setdefault("200", {"description": "OK"})
    content = ok.setdefault("content", {})
    if streams == "sse":
        content.pop("application/json", None)
    content["text/event-stream"] = {"schema": ref(SSE_EVENT)}


def _bodies(paths: dict[str, Any], schemas: dict[str, Any]) -> None:
    """The bodies of the routes that read their body themselves."""
    chat = ChatRequest.model_json_schema(ref_template=ref("{model}")["$ref"])
    for name, definition in chat.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    schemas.setdefault("ChatRequest", chat)
    bodies = {
        ("post", "/v1/chat/completions"): ref("ChatRequest"),
        ("post", "/a2a/{name}"): json_rpc_body(),
        ("post", "/v1/channels/{channel}/webhook"): delivery_body(),
    }
    for (method, path), schema in bodies.items():
        operation = paths.get(path, {}).get(method)
        if operation is not None and "requestBody" not in operation:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schema}},
            }


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` (FastAPI's, of the gateway's app) completed in place; returned."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)  # FastAPI's 422 body: never sent
    schemas.pop("ValidationError", None)
    schemas[ERROR] = error_schema()
    schemas[OPENAI_ERROR] = openai_error_schema()
    schemas[SSE_EVENT] = sse_event_schema()
    components.setdefault("securitySchemes", {})[BEARER] = bearer_scheme()
    paths: dict[str, Any] = document.get("paths", {})
    _bodies(paths, schemas)
    for path, item in paths.items():
        for method, operation in item.items():
            _complete_operation(method.upper(), path, operation)
    return document


def _constrain(path: str, parameter: dict[str, Any]) -> None:
    """The pattern or values the route checks, on the parameter's string schemas."""
    name = parameter["name"]
    pattern = PARAMETER_PATTERNS.get((parameter["in"], name))
    values = PARAMETER_ENUMS.get((path, name))
    schema = parameter.get("schema", {})
    for kind in schema.get("anyOf", [schema]):
        strings = kind.get("items", {}) if kind.get("type") == "array" else kind
        if strings.get("type") != "string":
            continue
        if pattern is not None:
            strings["pattern"] = pattern
        if values is not None:
            strings["enum"] = list(values)


def _complete_operation(method: str, path: str, operation: dict[str, Any]) -> None:
    parameters = operation.get("parameters", [])
    for parameter in parameters:
        _constrain(path, parameter)
    doc = ROUTES.get((method, path), RouteDoc())
    has_body = method in ("POST", "PUT", "PATCH")
    fastapi_body = "requestBody" in operation and not doc.raw_body
    validated = fastapi_body or not all(_trivial(p.get("schema", {})) for p in parameters)
    errors, keyed = operation_errors(method, path, has_body=has_body, validated=validated)
    responses: dict[str, Any] = operation.setdefault("responses", {})
    responses.pop("422", None)  # FastAPI's HTTPValidationError
    by_status: dict[int, list[ErrorDoc]] = {}
    for error in errors:
        by_status.setdefault(error.status, []).append(error)
    for status in sorted(by_status):
        responses[str(status)] = _response(status, by_status[status], doc, keyed)
    _streams(operation, doc.streams)
    if keyed:
        operation["security"] = [{BEARER: []}]
    else:
        operation.pop("security", None)


def install_openapi(app: FastAPI) -> None:
    """Serve ``complete``'s document as ``app``'s ``/openapi.json``."""
    generate: Callable[[], dict[str, Any]] = app.openapi
    done: list[dict[str, Any]] = []  # the last document completed (FastAPI caches it)

    def openapi() -> dict[str, Any]:
        document = generate()
        if not done or done[0] is not document:
            done[:] = [complete(document)]
        return document

    app.openapi = openapi  # type: ignore[method-assign]
