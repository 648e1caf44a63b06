"""What the loopback chat servers refuse, and the error each real API answers.

A real API refuses a conversation whose tool results do not follow their calls; a
loopback server that took anything would let a provider (or the engine, across a
swarm handoff between providers) send histories the real one answers with a 400.
``ScriptedOpenAIServer`` and ``ScriptedOllamaServer`` run these checks on every chat
request; the walk over tool-call blocks (``tool_sequence_problem``) is shared, each
server words its problems as its API does:

- OpenAI (``openai_messages_refusal``): each ``role: tool`` message answers a
  ``tool_call_id`` of the assistant message with ``tool_calls`` right before it (or
  before the tool messages run after it); every id of that message is answered
  before the next message of another role; no id is answered twice in a request
  (as OpenAI within a block; across blocks as the strict OpenAI-compatible APIs
  do, e.g. DeepSeek, and OpenAI's Responses API); arguments are JSON strings.
  Also ``response_format`` (``openai_response_format_refusal``).
- Ollama: tool-call ``function.arguments`` must be objects (``ollama_decode_error``,
  Go's decoder error, a 400 before anything else); a ``tool`` message must follow
  an assistant message with ``tool_calls`` or another ``tool`` message
  (``ollama_sequence_error``).  Ollama itself pairs results by ``tool_name`` and,
  as of its source in 2026-08, renders an orphan tool message rather than refusing
  it: the loopback refuses it (in Ollama's ``{"error": ...}`` shape), so a history
  that would reach a model as nonsense fails the test instead.

Plain data in and out (no HTTP), so the rules are tested alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "OpenAIRefusal",
    "SequenceProblem",
    "ollama_decode_error",
    "ollama_sequence_error",
    "openai_messages_refusal",
    "openai_response_format_refusal",
    "tool_sequence_problem",
]

_RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")
_SCHEMA_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
# How OpenAI names a JSON value's type in its errors.
_JSON_TYPES = {
    str: "a string",
    int: "an integer",
    float: "a decimal",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


@dataclass(frozen=True)
class OpenAIRefusal:
    """An OpenAI error answer: HTTP ``status`` and ``{"error": {message, type, param, code}}``."""

    message: str
    param: str | None = None
    code: str | None = None
    status: int = 400
    kind: str = "invalid_request_error"

    def body(self) -> dict[str, Any]:
        """The error body, as OpenAI sends it (clients read ``error.message``)."""
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(frozen=True)
class SequenceProblem:
    """Where a conversation's tool results stop following their calls.

    ``kind``: ``orphan`` (a tool message with no assistant ``tool_calls`` before it),
    ``unknown`` (it answers an id its block did not call), ``duplicate`` (an id
    answered a second time; ``first`` is the message that answered it before) or
    ``unanswered`` (``index`` is the assistant message, ``call_ids`` the ids no tool
    message answered before the next message of another role, or the end).
    """

    kind: Literal["orphan", "unknown", "duplicate", "unanswered"]
    index: int
    call_ids: tuple[str, ...] = ()
    first: int | None = None


def tool_sequence_problem(messages: list[Any], *, by_id: bool) -> SequenceProblem | None:
    """The first problem with the tool messages of ``messages`` (wire dicts), or None.

    Without ``by_id`` (Ollama, which pairs by tool name) only ``orphan`` is looked
    for; with it (OpenAI) tool messages must answer the block's ``tool_call_id``s,
    each once in the whole request, and every id of a block must be answered.
    """
    block: int | None = None  # index of the assistant message whose results run now
    pending: list[str] = []
    answered: dict[str, int] = {}
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "tool":
            if block is None:
                return SequenceProblem("orphan", index)
            if by_id:
                call_id = str(message.get("tool_call_id"))
                if call_id in answered:
                    return SequenceProblem("duplicate", index, (call_id,), answered[call_id])
                if call_id not in pending:
                    return SequenceProblem("unknown", index, (call_id,))
                pending.remove(call_id)
                answered[call_id] = index
            continue
        if block is not None and by_id and pending:
            return SequenceProblem("unanswered", block, tuple(pending))
        block = None
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if role == "assistant" and isinstance(calls, list) and calls:
            block = index
            pending = [
                str(c.get("id")) for c in calls if isinstance(c, dict) and c.get("id") is not None
            ]
    if block is not None and by_id and pending:
        return SequenceProblem("unanswered", block, tuple(pending))
    return None


# -- OpenAI ----------------------------------------------------------------------------


def openai_messages_refusal(messages: list[Any]) -> OpenAIRefusal | None:
    """OpenAI's 400 for ``messages`` (a non-empty list) it cannot take, or None."""
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            return _invalid_type(where, message, "an object")
        role = message.get("role")
        if role is None:
            return _missing(f"{where}.role")
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            if message.get("tool_call_id") is None:
                return _missing(f"{where}.tool_call_id")
            return _invalid_type(f"{where}.tool_call_id", message["tool_call_id"], "a string")
        if role == "assistant" and message.get("tool_calls") is not None:
            refused = _tool_calls_refusal(where, message["tool_calls"])
            if refused is not None:
                return refused
    problem = tool_sequence_problem(messages, by_id=True)
    if problem is None:
        return None
    if problem.kind == "unanswered":
        return OpenAIRefusal(
            "An assistant message with 'tool_calls' must be followed by tool messages "
            "responding to each 'tool_call_id'. The following tool_call_ids did not have "
            f"response messages: {', '.join(problem.call_ids)}",
            param=f"messages.[{problem.index}].role",
        )
    if problem.kind == "duplicate":
        return OpenAIRefusal(
            f"Invalid parameter: Duplicate value for 'tool_call_id' of '{problem.call_ids[0]}', "
            f"in messages[{problem.first}] and messages[{problem.index}].",
            param=f"messages.[{problem.index}].tool_call_id",
        )
    # `preceeding`: OpenAI's own spelling, which clients may match on.
    return OpenAIRefusal(
        "Invalid parameter: messages with role 'tool' must be a response to a preceeding "
        "message with 'tool_calls'.",
        param=f"messages.[{problem.index}].role",
    )


def _tool_calls_refusal(where: str, calls: Any) -> OpenAIRefusal | None:
    if not isinstance(calls, list):
        return _invalid_type(f"{where}.tool_calls", calls, "an array")
    if not calls:
        return OpenAIRefusal(
            f"Invalid '{where}.tool_calls': empty array. Expected an array with minimum "
            "length 1, but got an empty array instead.",
            param=f"{where}.tool_calls",
            code="empty_array",
        )
    for position, call in enumerate(calls):
        at = f"{where}.tool_calls[{position}]"
        if not isinstance(call, dict):
            return _invalid_type(at, call, "an object")
        for key in ("id", "type", "function"):
            if call.get(key) is None:
                return _missing(f"{at}.{key}")
        if not isinstance(call["id"], str):
            return _invalid_type(f"{at}.id", call["id"], "a string")
        function = call["function"]
        if not isinstance(function, dict):
            return _invalid_type(f"{at}.function", function, "an object")
        for key in ("name", "arguments"):
            if function.get(key) is None:
                return _missing(f"{at}.function.{key}")
        # Ollama's shape (arguments as an object) sent to OpenAI.
        if not isinstance(function["arguments"], str):
            return _invalid_type(f"{at}.function.arguments", function["arguments"], "a string")
    return None


def openai_response_format_refusal(fmt: Any) -> OpenAIRefusal | None:
    """OpenAI's 400 for a ``response_format`` it cannot take, or None.

    ``type`` must be ``text``, ``json_object`` or ``json_schema``; ``json_schema``
    needs ``json_schema.name`` (``^[a-zA-Z0-9_-]{1,64}$``) and, if given, an object
    ``schema``.  Other keys pass, as vLLM and llama-cpp-python let them (the latter
    reads ``schema`` next to ``type: json_object``).
    """
    if fmt is None:
        return None
    where = "response_format"
    if not isinstance(fmt, dict):
        return _invalid_type(where, fmt, "an object")
    kind = fmt.get("type")
    if kind is None:
        return _missing(f"{where}.type")
    if kind not in _RESPONSE_FORMAT_TYPES:
        supported = "'text', 'json_object', and 'json_schema'"
        return OpenAIRefusal(
            f"Invalid value: {kind!r}. Supported values are: {supported}.",
            param=f"{where}.type",
            code="invalid_value",
        )
    if kind != "json_schema":
        return None
    spec = fmt.get("json_schema")
    if spec is None:
        return _missing(f"{where}.json_schema")
    if not isinstance(spec, dict):
        return _invalid_type(f"{where}.json_schema", spec, "an object")
    name = spec.get("name")
    if name is None:
        return _missing(f"{where}.json_schema.name")
    if not isinstance(name, str) or not _SCHEMA_NAME.fullmatch(name):
        return OpenAIRefusal(
            f"Invalid '{where}.json_schema.name': string does not match pattern. "
            "Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
            param=f"{where}.json_schema.name",
            code="invalid_value",
        )
    schema = spec.get("schema")
    if schema is not None and not isinstance(schema, dict):
        return _invalid_type(f"{where}.json_schema.schema", schema, "an object")
    return None


def _missing(param: str) -> OpenAIRefusal:
    return OpenAIRefusal(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def _invalid_type(param: str, value: Any, expected: str) -> OpenAIRefusal:
    got = _JSON_TYPES.get(type(value), type(value).__name__)
    return OpenAIRefusal(
        f"Invalid type for '{param}': expected {expected}, but got {got} instead.",
        param=param,
        code="invalid_type",
    )


# -- Ollama ----------------------------------------------------------------------------


def ollama_decode_error(messages: Any) -> str | None:
    """Ollama's (Go) decoder error for message shapes it cannot take, or None."""
    if messages is None:
        return None
    if not isinstance(messages, list):
        return (
            "json: cannot unmarshal into Go struct field ChatRequest.messages of type []api.Message"
        )
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return "json: cannot unmarshal into Go value of type api.Message"
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            # The classic OpenAI-client mistake: arguments as a JSON string.
            if not isinstance(function, dict) or not isinstance(
                function.get("arguments", {}), dict
            ):
                return (
                    "json: cannot unmarshal string into Go struct field "
                    "ToolCallFunction.messages.tool_calls.function.arguments of type "
                    "api.ToolCallFunctionArguments"
                )
    return None


def ollama_sequence_error(messages: list[Any]) -> str | None:
    """The loopback's refusal of a ``tool`` message that follows no tool call, or None
    (worded in Ollama's style; Ollama itself would render it, see the module doc)."""
    problem = tool_sequence_problem(messages, by_id=False)
    if problem is None:
        return None
    return (
        f'invalid message at index {problem.index}: a message with role "tool" must follow '
        'an assistant message with "tool_calls" or another "tool" message'
    )
