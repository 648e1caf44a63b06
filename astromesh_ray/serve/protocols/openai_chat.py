"""OpenAI chat completions over agents: the wire format, with no Ray and no HTTP.

``parse_chat_request`` turns a ``POST /v1/chat/completions`` body into a
``ChatRequest`` (``InvalidRequest`` naming the field for anything it cannot honour),
whose ``run_body`` is a run's ``RunRequest`` fields.  ``completion`` renders a run's
result as a ``chat.completion``; ``ChunkWriter`` renders a run's events as
``chat.completion.chunk`` objects; ``openai_error`` renders an ``AstromeshError`` in
OpenAI's error shape, with the status that makes the official client raise the
matching exception class.

What the body may hold is a closed list (nothing is parsed and then ignored):
``model`` (an agent's name), ``messages``, ``stream``, ``stream_options.include_usage``,
``user`` (the session), ``n`` (only 1) and our own ``context`` (the agent's prompt
variables, which the official client sends through ``extra_body``).  Client-side
tools are refused (the agent runs its own tools), and so are sampling parameters
(the agent's YAML sets them).

The agent's own tool activity travels in an extra top-level field, ``astromesh``,
which OpenAI clients keep as an unknown field (``model_extra``) without an error;
it is never sent as ``tool_calls``, which would tell the client to run them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationError
from pydantic_core import PydanticCustomError

from astromesh_ray.core.context import check_session_id
from astromesh_ray.core.messages import Message, ToolCall
from astromesh_ray.errors import AgentNotFound, AstromeshError, InvalidRequest

MAX_QUERY_CHARS = 100_000  # as POST /v1/agents/{name}/run
CLIENT_TOOL_FIELDS = ("tools", "tool_choice", "functions", "function_call", "parallel_tool_calls")
MODEL_PARAMETER_FIELDS = (
    *("temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty"),
    *("max_tokens", "max_completion_tokens", "logit_bias", "logprobs", "top_logprobs"),
    *("response_format", "reasoning_effort", "verbosity"),
)
# Fields of an assistant message that OpenAI's own answers carry: a conversation
# copied from OpenAI sends them back, and empty they have no effect.
_EMPTY_ONLY = ("refusal", "audio", "function_call", "annotations")
# Run events the stream passes on in the ``astromesh`` field (the agent's own work).
SURFACED_EVENTS = ("tool_call", "tool_result", "delegate", "handoff")


def _text_content(value: Any) -> Any:
    """A message's content as text: a string, or a list of text parts joined by a
    newline (as vLLM joins them); any other part is refused, naming it."""
    if not isinstance(value, list):
        return value  # str (or None, or a wrong type: the field's own check says so)
    texts = []
    for index, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            raise PydanticCustomError(
                "content_part",
                "part {index} has type {kind}: only text parts are supported",
                {"index": index, "kind": repr(kind), "at": f"[{index}].type"},
            )
        extra = sorted(set(part) - {"type", "text"})
        if not isinstance(part.get("text"), str) or extra:
            raise PydanticCustomError(
                "content_part",
                "a text part has type 'text' and a string text, and nothing else",
                {"at": f"[{index}]"},
            )
        texts.append(part["text"])
    return "\n".join(texts)


Content = Annotated[str, BeforeValidator(_text_content)]


class WireFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    arguments: str


class WireToolCall(BaseModel):
    """A tool call of an earlier assistant message (history, not a request)."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: WireFunction


class ChatMessage(BaseModel):
    """One message of ``messages``; ``developer`` is OpenAI's newer name for
    ``system``.  Which fields each role takes is checked by ``parse_chat_request``."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Content | None = None
    name: str | None = None
    tool_calls: list[WireToolCall] | None = None
    tool_call_id: str | None = None
    refusal: None = None
    audio: None = None
    function_call: None = None
    annotations: list[Any] | None = Field(default=None, max_length=0)

    def message(self) -> Message:
        role = "system" if self.role == "developer" else self.role
        calls = [
            ToolCall.parse(c.id, c.function.name, c.function.arguments)
            for c in self.tool_calls or []
        ]
        return Message(role, self.content, calls, self.tool_call_id, self.name)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool = False


class ChatRequest(BaseModel):
    """The fields of ``POST /v1/chat/completions`` this endpoint honours."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, description="The agent's name.")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, description="The session id (or X-Session-Id).")
    n: Literal[1] | None = Field(default=None, description="One choice: a run has one answer.")
    context: dict[str, Any] = Field(
        default_factory=dict, description="The agent's prompt variables (extra_body)."
    )

    @property
    def query(self) -> str:
        return self.messages[-1].content or ""

    def history(self) -> list[Message]:
        """The messages before the query, as the run's history."""
        return [m.message() for m in self.messages[:-1]]

    def run_body(self, session_id: str | None, with_history: bool) -> dict[str, Any]:
        """The ``RunRequest`` fields of this request."""
        history = [m.to_dict() for m in self.history()] if with_history else []
        return {
            "query": self.query,
            "session_id": session_id,
            "context": dict(self.context),
            "history": history,
        }

    def session(self, header: str | None) -> str | None:
        """The session: the ``X-Session-Id`` header, else ``user``; both must agree."""
        if header is not None and self.user is not None and header != self.user:
            raise InvalidRequest(
                "the X-Session-Id header and the user field name different sessions",
                hint="send one of them, or the same id in both",
                field="user",
            )
        if header is not None:
            return check_session_id(header, "X-Session-Id", client=True)
        return None if self.user is None else check_session_id(self.user, "user", client=True)


def parse_chat_request(body: Any) -> ChatRequest:
    """A request body (parsed JSON) as a ``ChatRequest``; ``InvalidRequest`` naming
    the first bad field (``field``) and every problem (``message``)."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", field=None)
    try:
        request = ChatRequest.model_validate(body)
    except ValidationError as exc:
        problems = [_problem(err) for err in exc.errors()]
        raise InvalidRequest(
            "; ".join(f"{where}: {what}" for where, what in problems),
            hint="POST /v1/chat/completions takes model, messages, stream, "
            "stream_options.include_usage, user, n (1) and context",
            field=problems[0][0],
        ) from None
    _check_messages(request)
    if request.stream_options is not None and not request.stream:
        raise InvalidRequest(
            "stream_options is only allowed when stream is true", field="stream_options"
        )
    return request


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problem(err: Mapping[str, Any]) -> tuple[str, str]:
    """``(field, message)`` of one pydantic error, worded for this endpoint."""
    loc = tuple(err.get("loc", ()))
    ctx = err.get("ctx") or {}
    where = _path(loc) + str(ctx.get("at", ""))
    kind = err.get("type")
    if kind == "extra_forbidden":
        name = str(loc[-1]) if loc else ""
        if len(loc) == 1 and name in CLIENT_TOOL_FIELDS:
            return where, (
                "client-side tools are not supported through this endpoint: the agent "
                "calls its own tools (declared in its YAML); their activity is in the "
                "`astromesh` field"
            )
        if len(loc) == 1 and name in MODEL_PARAMETER_FIELDS:
            return where, "sampling parameters are set by the agent's YAML (spec.model)"
        return where, "unknown field"
    if kind == "literal_error" and loc == ("n",):
        return where, "only n=1 is supported: a run has one answer"
    if kind in ("none_required", "too_long") and len(loc) == 3 and loc[2] in _EMPTY_ONLY:
        return where, "accepted only when empty (null)"
    return where, str(err.get("msg", "invalid"))


def _refuse(index: int, field: str, message: str) -> InvalidRequest:
    return InvalidRequest(
        f"messages[{index}].{field}: {message}", field=f"messages[{index}].{field}"
    )


def _check_messages(request: ChatRequest) -> None:
    """Each role's fields, the query, and that tool results answer their calls."""
    allowed = {
        "system": {"content", "name"},
        "developer": {"content", "name"},
        "user": {"content", "name"},
        "assistant": {"content", "name", "tool_calls"},
        "tool": {"content", "tool_call_id"},
    }
    open_calls: set[str] = set()  # calls of the last assistant message, unanswered
    for index, message in enumerate(request.messages):
        given = {k for k in message.model_fields_set if getattr(message, k) is not None}
        extra = given - allowed[message.role] - set(_EMPTY_ONLY) - {"role"}
        if extra:
            field = sorted(extra)[0]
            raise _refuse(index, field, f"not a field of a {message.role} message")
        if message.content is None and not (message.role == "assistant" and message.tool_calls):
            raise _refuse(index, "content", "required")
        if message.role == "tool":
            if message.tool_call_id is None:
                raise _refuse(index, "tool_call_id", "required")
            if message.tool_call_id not in open_calls:
                raise _refuse(
                    index, "tool_call_id", "answers no tool call of the assistant message before it"
                )
            open_calls.discard(message.tool_call_id)
            continue
        if open_calls:
            raise _refuse(
                index,
                "role",
                "the tool calls before it are unanswered: " + ", ".join(sorted(open_calls)),
            )
        for number, call in enumerate(message.tool_calls or []):
            if ToolCall.parse(call.id, "", call.function.arguments).invalid_arguments is not None:
                field = f"tool_calls[{number}].function.arguments"
                raise _refuse(index, field, "not a JSON object")
        open_calls = {c.id for c in message.tool_calls or []}
    last = len(request.messages) - 1
    if request.messages[last].role != "user":
        raise _refuse(last, "role", "the last message must be the user's (the query)")
    if not request.query.strip():
        raise _refuse(last, "content", "the query is empty")
    if len(request.query) > MAX_QUERY_CHARS:
        raise _refuse(last, "content", f"at most {MAX_QUERY_CHARS} characters")


# -- responses ------------------------------------------------------------------------


def usage(result: Mapping[str, Any]) -> dict[str, int]:
    """OpenAI's usage object from a run's usage."""
    spent = result.get("usage") or {}
    prompt, completion_ = int(spent.get("input_tokens", 0)), int(spent.get("output_tokens", 0))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_,
        "total_tokens": prompt + completion_,
    }


def run_summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """What the ``astromesh`` field says about a finished run."""
    return {
        "run_id": result.get("run_id"),
        "session_id": result.get("session_id"),
        "trace_id": result.get("trace_id"),
        "status": result.get("status", "completed"),
        "pending": list(result.get("pending") or []),
        "cost_usd": (result.get("usage") or {}).get("cost_usd", 0.0),
    }


def completion(result: Mapping[str, Any], model: str, created: int) -> dict[str, Any]:
    """A run's result as a ``chat.completion``; ``astromesh`` adds the run's ids,
    status and ``steps`` (as the REST result has them: tool calls, thoughts, ...)."""
    return {
        "id": f"chatcmpl-{result['run_id']}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": str(result.get("answer") or "")},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage(result),
        "astromesh": {**run_summary(result), "steps": list(result.get("steps") or [])},
    }


class ChunkWriter:
    """A run's events as ``chat.completion.chunk`` objects (``event`` per event).

    Nothing is written before the run has something to say (its first answer token,
    tool event or result): until then an error can still be answered with its HTTP
    status.  The first chunk sets ``delta.role``; answer tokens are ``delta.content``;
    the events of ``SURFACED_EVENTS`` go, as the REST stream sends them, in an
    ``astromesh`` field on a chunk with an empty delta; ``run_finished`` writes the
    finish chunk (``astromesh``: the run's ids and status) and, with
    ``include_usage``, the usage chunk (empty ``choices``).
    """

    def __init__(self, model: str, created: int, include_usage: bool) -> None:
        self.model = model
        self.created = created
        self.include_usage = include_usage
        self.run_id = ""
        self.started = False
        self.finished = False
        self.streamed = False  # some answer text was sent

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": f"chatcmpl-{self.run_id}",
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.include_usage:
            chunk["usage"] = None  # as OpenAI: null on all but the last chunk
        return chunk

    def _out(self, *chunks: dict[str, Any]) -> list[dict[str, Any]]:
        if self.started:
            return list(chunks)
        self.started = True
        return [self._chunk({"role": "assistant", "content": ""}), *chunks]

    def event(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The chunks ``event`` makes (none for most)."""
        kind = event.get("type")
        if kind == "run_started":
            self.run_id = str(event.get("run_id", ""))
        elif kind == "token" and event.get("channel") == "answer" and event.get("text"):
            self.streamed = True
            return self._out(self._chunk({"content": event["text"]}))
        elif kind in SURFACED_EVENTS:
            chunk = self._chunk({})
            chunk["astromesh"] = dict(event)
            return self._out(chunk)
        elif kind == "run_finished":
            return self._finish(event["result"])
        return []

    def _finish(self, result: Mapping[str, Any]) -> list[dict[str, Any]]:
        self.finished = True
        self.run_id = str(result.get("run_id") or self.run_id)
        chunks = []
        answer = str(result.get("answer") or "")
        if answer and not self.streamed:  # the answer was not streamed token by token
            chunks.append(self._chunk({"content": answer}))
        finish = self._chunk({}, "stop")
        finish["astromesh"] = {"type": "run_finished", **run_summary(result)}
        chunks.append(finish)
        if self.include_usage:
            last = self._chunk({})
            last["choices"] = []
            last["usage"] = usage(result)
            chunks.append(last)
        return self._out(*chunks)


# -- errors ---------------------------------------------------------------------------

# OpenAI's error types by status (4xx otherwise: invalid_request_error).
_TYPES = {401: "authentication_error", 403: "permission_error", 429: "insufficient_quota"}


def openai_error(exc: AstromeshError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """``(status, body, headers)`` of ``exc`` in OpenAI's error shape: ``message``,
    ``type``, ``param`` (the field at fault), ``code`` (ours; ``model_not_found`` for
    an unknown agent), plus our ``hint`` and details.  422 becomes 400 (OpenAI's
    status for a bad request; the client raises ``BadRequestError``).  The
    ``x-should-retry`` header tells the official client whether retrying (it retries
    429 and 5xx by default, which would run the agent again) can help: only for an
    unavailable agent or backend (503) and a budget that resets (429 with
    ``Retry-After``)."""
    status = 400 if exc.http_status == 422 else exc.http_status
    detail = exc.to_dict()
    kind = _TYPES.get(status) or ("server_error" if status >= 500 else "invalid_request_error")
    unknown = isinstance(exc, AgentNotFound)  # the `model` names no agent
    code = "model_not_found" if unknown else exc.code
    body = {
        **detail,
        "message": exc.message,
        "type": kind,
        "param": detail.get("field") or ("model" if unknown else None),
        "code": code,
    }
    headers = {"x-should-retry": "false"}
    retry_after = exc.details.get("retry_after_s")
    if status == 429 and isinstance(retry_after, int | float) and retry_after > 0:
        headers = {"x-should-retry": "true", "Retry-After": str(int(retry_after))}
    elif status == 503 and exc.details.get("retryable") is not False:
        headers["x-should-retry"] = "true"
    return status, {"error": body}, headers


def stream_error(exc: AstromeshError) -> dict[str, Any]:
    """The SSE data object that ends a stream which failed after it started."""
    return openai_error(exc)[1]
