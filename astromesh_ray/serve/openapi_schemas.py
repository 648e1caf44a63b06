"""The schemas ``openapi.py`` adds to the gateway's OpenAPI document: the error
envelope (``http.py``), its OpenAI-shaped variant, a Server-Sent Event, the bearer
scheme, and the bodies of the routes that read their body themselves."""

from __future__ import annotations

from typing import Any

ERROR = "Error"
OPENAI_ERROR = "OpenAIError"
SSE_EVENT = "ServerSentEvent"
BEARER = "bearerAuth"
REF = "#/components/schemas/"


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def error_schema() -> dict[str, Any]:
    """``{"error": {code, message, hint, ...}}``: every error body of the API."""
    return {
        "type": "object",
        "title": ERROR,
        "description": "Every error the API answers: a stable `code`, a human `message`, "
        "a `hint` saying what to do (or null), and details that depend on the code.",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "hint"],
                "additionalProperties": True,
                "properties": {
                    "code": {"type": "string", "description": "Stable, machine-readable."},
                    "message": {"type": "string"},
                    "hint": {"type": ["string", "null"], "description": "What to do about it."},
                    "fields": {
                        "type": "array",
                        "description": "Each invalid field of the request (422).",
                        "items": {
                            "type": "object",
                            "required": ["field", "message"],
                            "properties": {
                                "field": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        },
                    },
                    "retry_after_s": {
                        "type": ["number", "null"],
                        "description": "Seconds until trying again can succeed (429).",
                    },
                },
            }
        },
    }


def openai_error_schema() -> dict[str, Any]:
    """``Error`` as the OpenAI-compatible routes send it, with OpenAI's ``type`` and
    ``param`` (the gate's and the size limit's errors have neither)."""
    return {
        "title": OPENAI_ERROR,
        "description": "An error of the OpenAI-compatible API: `Error` with OpenAI's "
        "`type` and `param` (what the official client reads).",
        "allOf": [
            ref(ERROR),
            {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {
                            "type": {"type": "string"},
                            "param": {"type": ["string", "null"]},
                        },
                    }
                },
            },
        ],
    }


def sse_event_schema() -> dict[str, Any]:
    """One event of a ``text/event-stream`` answer (OpenAPI 3.1 has the media type's
    ``schema`` describe each event)."""
    return {
        "type": "object",
        "title": SSE_EVENT,
        "description": "One Server-Sent Event: its `event` name (the run event's type; "
        "none on the OpenAI and A2A streams) and its `data`, a JSON object (the OpenAI "
        "stream ends with `[DONE]`).",
        "required": ["data"],
        "properties": {
            "event": {"type": "string"},
            "data": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer"},
        },
    }


def bearer_scheme() -> dict[str, Any]:
    return {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (`astromesh keys create` prints one) as "
        "`Authorization: Bearer <key>`. With no keys configured the server is open, to "
        "loopback clients only.",
    }


def json_rpc_body() -> dict[str, Any]:
    """``POST /a2a/{name}``: a JSON-RPC request (the A2A SDK's dispatcher reads it)."""
    return {
        "type": "object",
        "title": "JsonRpcRequest",
        "description": "A JSON-RPC 2.0 request of A2A v1.0 (SendMessage, "
        "SendStreamingMessage, GetTask, ListTasks, CancelTask, SubscribeToTask; with an "
        "`A2A-Version: 1.0` header) or v0.3 (message/send, message/stream, tasks/get, "
        "tasks/cancel, tasks/resubscribe). Its errors are JSON-RPC error objects, in a 200.",
        "properties": {
            "jsonrpc": {"const": "2.0"},
            "id": {"type": ["string", "integer", "null"]},
            "method": {"type": "string"},
            "params": {"type": "object"},
        },
    }


def delivery_body() -> dict[str, Any]:
    """``POST /v1/channels/{channel}/webhook``: the platform's delivery."""
    return {
        "type": "object",
        "title": "ChannelDelivery",
        "description": "The platform's delivery (WhatsApp: a webhook notification), signed "
        "in its header (WhatsApp: `X-Hub-Signature-256`).",
    }


HEADERS: dict[int, dict[str, dict[str, Any]]] = {
    401: {
        "WWW-Authenticate": {
            "description": 'The scheme to authenticate with: `Bearer realm="astromesh"`.',
            "schema": {"type": "string"},
        }
    },
    429: {
        "Retry-After": {
            "description": "Seconds until the request can succeed: the rate limit's window "
            "(or a budget that resets).",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    },
}
"""Headers of error responses, by status."""

SHOULD_RETRY = {
    "x-should-retry": {
        "description": "Whether the official OpenAI client may retry (`true` only for an "
        "unavailable agent or backend and a budget that resets).",
        "schema": {"type": "string", "enum": ["true", "false"]},
    }
}
"""The OpenAI-compatible routes' own header on their errors."""
