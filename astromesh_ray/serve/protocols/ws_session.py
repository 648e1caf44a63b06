"""The WebSocket protocol of ``WS /v1/ws/agent/{name}``: what a client sends and
what the server answers (the turns of one connection: ``ws_connection.py``).

Client to server, JSON text frames:

- ``{"query", "session_id"?, "context"?}`` (``"type": "run"`` may be said): start a
  turn, validated as ``POST /v1/agents/{name}/run`` validates its body (same limits,
  unknown fields refused; ``stream`` is not a field: every turn streams);
- ``{"type": "cancel"}``: stop the running turn.

Server to client, JSON text frames: each event of the turn as ``event_to_dict``
makes it (``run_started``, ``token``, ``tool_call``, ...), except ``run_finished``,
which becomes the turn's ``done`` frame; a turn ends with exactly one of ``done``,
``error`` (``scope: "turn"``) or ``cancelled``.  A refused message gets an ``error``
frame with ``scope: "message"`` and changes nothing else (a running turn goes on);
``scope: "connection"`` errors are followed by the close, with code 4000 + the
error's HTTP status.  ``{"type": "heartbeat"}`` comes every ``heartbeat_s``.

Pure: no Ray, no Starlette, unit tested without sockets.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from astromesh_ray.errors import InvalidRequest
from astromesh_ray.serve.http import MAX_BODY_BYTES, RunBody, error_body

HEARTBEAT_S = 15.0
"""Seconds between two heartbeat frames (a connection's ``?heartbeat_s=`` may set
1-300): what keeps idle-timeout proxies from closing a connection whose turn waits
on a slow tool, and tells the client the server is alive."""
MIN_HEARTBEAT_S, MAX_HEARTBEAT_S = 1.0, 300.0
MAX_MESSAGE_BYTES = MAX_BODY_BYTES
"""The largest client message, in UTF-8 bytes: the HTTP API's body limit (1 MiB)."""
CLOSE_CODE_BASE = 4000
"""A connection closed for an error closes with 4000 + its HTTP status (4404 for an
unknown agent): the private-use range of RFC 6455 section 7.4.2."""

MESSAGE_TYPES = ("run", "cancel")
HEARTBEAT_FRAME: dict[str, Any] = {"type": "heartbeat"}
ErrorScope = Literal["turn", "message", "connection"]

# The run message's fields are RunBody's own (limits, pattern, descriptions): one
# definition for both APIs.
_RUN = RunBody.model_fields


class RunMessage(BaseModel):
    """Start a turn: ``POST /v1/agents/{name}/run``'s body, without ``stream``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["run"] = "run"
    query: Annotated[str, _RUN["query"]]
    session_id: Annotated[str | None, _RUN["session_id"]]
    context: Annotated[dict[str, Any], _RUN["context"]]

    def request(self) -> dict[str, Any]:
        """The ``RunRequest`` fields of this message."""
        return self.model_dump(exclude={"type"})


class CancelMessage(BaseModel):
    """Stop the running turn (its run and the model calls it streams)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["cancel"]


@dataclass(frozen=True)
class Refused:
    """A client message the server does not act on; ``error`` is the API's error body."""

    error: dict[str, Any]


Message = RunMessage | CancelMessage


def _invalid(message: str, hint: str, reason: str, **details: Any) -> Refused:
    return Refused(InvalidRequest(message, hint=hint, reason=reason, **details).to_dict())


_SEND_JSON = 'send a JSON object like {"query": "...", "session_id": null, "context": {}}'


def parse_message(data: str | bytes) -> Message | Refused:
    """What a client frame asks for, or why it is refused: a binary frame, a text
    over ``MAX_MESSAGE_BYTES``, text that is not a JSON object, an unknown ``type``,
    or fields that do not validate (``fields`` names each, as the HTTP API does)."""
    if isinstance(data, bytes):
        return _invalid(
            f"binary frames are not accepted (got {len(data)} bytes)",
            "send each message as a JSON text frame",
            "binary_frame",
        )
    size = len(data.encode("utf-8", "surrogatepass"))
    if size > MAX_MESSAGE_BYTES:
        return Refused(
            error_body(
                "request_too_large",
                f"message is larger than {MAX_MESSAGE_BYTES} bytes ({size} bytes)",
                "send a shorter query or context",
            )["error"]
        )
    try:
        payload = json.loads(data)
    except ValueError as exc:
        return _invalid(f"message is not JSON: {exc}", _SEND_JSON, "not_json")
    if not isinstance(payload, dict):
        return _invalid(
            f"a message is a JSON object, not {type(payload).__name__}", _SEND_JSON, "not_object"
        )
    kind = payload.get("type", "run")
    if kind not in MESSAGE_TYPES:
        return _invalid(
            f"unknown message type {kind!r}",
            "types: " + ", ".join(MESSAGE_TYPES) + ' (a message without "type" is a run)',
            "unknown_type",
        )
    model: type[Message] = RunMessage if kind == "run" else CancelMessage
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = [
            {"field": ".".join(str(p) for p in err["loc"]) or "(message)", "message": err["msg"]}
            for err in exc.errors()
        ]
        text = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        hint = _SEND_JSON if kind == "run" else 'send exactly {"type": "cancel"}'
        return _invalid(f"invalid {kind} message: {text}", hint, "invalid_fields", fields=problems)


QUERY_PARAMETERS = ("heartbeat_s",)


def heartbeat_interval(query: Mapping[str, str]) -> float:
    """The heartbeat interval a connection's query string asks for (``heartbeat_s``,
    default ``HEARTBEAT_S``); any other parameter is refused."""
    unknown = sorted(set(query) - set(QUERY_PARAMETERS))
    if unknown:
        raise InvalidRequest(
            "unknown query parameter(s) " + ", ".join(map(repr, unknown)),
            hint="parameters: " + ", ".join(QUERY_PARAMETERS),
            field=unknown[0],
        )
    raw = query.get("heartbeat_s")
    if raw is None:
        return HEARTBEAT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not MIN_HEARTBEAT_S <= value <= MAX_HEARTBEAT_S:  # NaN fails too
        raise InvalidRequest(
            f"heartbeat_s must be a number of seconds from {MIN_HEARTBEAT_S:g} to "
            f"{MAX_HEARTBEAT_S:g}, not {raw!r}",
            hint=f"leave it out for the default, {HEARTBEAT_S:g} s",
            field="heartbeat_s",
        )
    return value


# -- frames ---------------------------------------------------------------------------


def done_frame(result: dict[str, Any]) -> dict[str, Any]:
    """A finished turn: what a client of a turn needs from its ``RunResult``
    (``POST .../run`` answers the whole of it; its steps were streamed)."""
    return {
        "type": "done",
        "run_id": result.get("run_id"),
        "session_id": result.get("session_id"),
        "trace_id": result.get("trace_id"),
        "answer": result.get("answer", ""),
        "usage": result.get("usage"),
        "status": result.get("status", "completed"),
        "pending": result.get("pending") or [],
        "data": result.get("data"),
    }


def event_frame(event: dict[str, Any]) -> dict[str, Any]:
    """The frame of one run event: the event itself; ``run_finished`` is ``done``."""
    if event.get("type") == "run_finished":
        return done_frame(event["result"])
    return event


def error_frame(
    error: dict[str, Any],
    scope: ErrorScope,
    *,
    run_id: str | None = None,
    session_id: str | None = None,
) -> dict[str, Any]:
    """An error: a turn's end (with its run and session), a refused message, or the
    reason the connection closes next."""
    frame: dict[str, Any] = {"type": "error", "scope": scope, "error": error}
    if scope == "turn":
        frame |= {"run_id": run_id, "session_id": session_id}
    return frame


def cancelled_frame(run_id: str | None, session_id: str | None) -> dict[str, Any]:
    """A turn the client cancelled (``run_id`` null: cancelled before it started)."""
    return {"type": "cancelled", "run_id": run_id, "session_id": session_id}


def encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def close_code(http_status: int) -> int:
    """The close code of a connection closed for an error of ``http_status``."""
    return CLOSE_CODE_BASE + http_status


MAX_CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes


def close_reason(message: str) -> str:
    """``message`` cut to what a close frame carries (the error frame before it has
    all of it), on a character boundary."""
    return message.encode()[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore")
