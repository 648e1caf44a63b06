"""``ScriptedOpenAIServer``: a real loopback HTTP server speaking OpenAI chat completions.

It answers ``POST /v1/chat/completions`` from a script of steps and ``GET /v1/models``,
``POST /v1/embeddings`` with deterministic vectors (``fake_embedding``) and ``POST
/v1/moderations`` by substring rules (``moderation_rules``), in the exact wire format
(JSON bodies, SSE streams with tool-call arguments split across chunks, the
``stream_options.include_usage`` usage chunk, ``data: [DONE]``), so integration
tests and demos exercise a provider's real HTTP path without a model.  Validated
against the official ``openai`` client in the integration tests.

Imports neither Ray nor any vendor SDK; uvicorn runs it in a daemon thread.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import struct
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from astromesh_ray.testing.chat_checks import (
    OpenAIRefusal,
    openai_messages_refusal,
    openai_response_format_refusal,
)
from astromesh_ray.testing.loopback import ScriptedServer
from astromesh_ray.testing.scripted import count_words, split_words

__all__ = ["MODERATION_CATEGORIES", "ScriptedOpenAIServer", "fake_embedding"]

# How many pieces a streamed tool call's argument JSON is cut into (real servers
# send a few characters per chunk; clients must concatenate them).
_ARG_PIECES = 3

MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
"""The categories OpenAI's ``omni-moderation-latest`` reports for every input."""

# Scores of the moderation answers: a rule naming just a category scores it
# _RULE_SCORE; a category scored _FLAG_SCORE or more is flagged; one no rule names
# scores _BASE_SCORE (real models never answer exactly 0).
_RULE_SCORE = 0.9
_FLAG_SCORE = 0.5
_BASE_SCORE = 1e-4


class ScriptedOpenAIServer(ScriptedServer):
    """An OpenAI-compatible server on 127.0.0.1 that replies from scripted steps.

    A step is a dict with one of:

    - ``{"content": "text"}`` (a bare ``str`` is shorthand for this);
    - ``{"tool_calls": [{"name": ..., "arguments": {...}}]}``: ``arguments`` may also be
      a raw string, sent verbatim (to test malformed JSON); ``id`` is optional;
    - ``{"status": 500, "error": "message"}``: answer that HTTP error instead
      (``"retry_after": 2`` adds a ``Retry-After`` header).

    and optionally ``reasoning`` (the model's reasoning text, sent before the answer as
    vLLM and DeepSeek do: ``message.<reasoning_field>``, streamed as
    ``delta.<reasoning_field>`` deltas), ``finish_reason`` (override) and ``delay_s``
    (sleep before answering).  ``reasoning_field`` is ``reasoning_content`` (vLLM,
    DeepSeek) by default; newer vLLM also names it ``reasoning``.  ``stream_usage =
    False`` answers streams as llama-cpp-python does: without the usage chunk that
    ``stream_options.include_usage`` asks for.
    Every chat-completion body received is appended to ``requests`` (its headers to
    ``request_headers``), whether or not it was answered successfully.  Running out of
    steps answers HTTP 500 saying the script is exhausted.  A conversation OpenAI
    would refuse (a tool result that does not follow its call, a call left
    unanswered, arguments that are not a JSON string: ``chat_checks.py``) or a
    malformed ``response_format`` gets OpenAI's 400 and consumes no step (the answer
    itself is scripted: the server does not constrain it); the messages of those
    refusals go to ``refused``.

    ``POST /v1/embeddings`` consumes no step: it answers ``fake_embedding(text,
    dimensions or embedding_dim)`` for each input, as floats or (``encoding_format:
    "base64"``, what the official client asks for) base64 float32.  Its bodies go to
    ``embedding_requests`` (headers to ``embedding_headers``); ``fail_embeddings``
    makes the next calls fail, and ``embeddings_reversed = True`` lists ``data`` in
    reverse order (clients must order by ``index``).

    ``POST /v1/moderations`` consumes no step either: it answers OpenAI's moderation
    format (every category of ``MODERATION_CATEGORIES``, scores, flags and applied
    input types, one result per input) by ``moderation_rules``: a substring found
    in the input (case-insensitively) names a category (scored 0.9) or maps
    categories to scores (``{"rude": {"harassment": 0.3}}``); the highest score
    a category gets counts, a category scored 0.5 or more is flagged, and a category
    no rule names scores 0.0001.  Its bodies go to ``moderation_requests`` (headers
    to ``moderation_headers``); ``fail_moderations`` makes the next calls fail, and
    ``moderation_delay_s`` delays every answer.
    """

    embedding_dim = 32
    embeddings_reversed = False

    _name = "ScriptedOpenAIServer"
    _thread_name = "scripted-openai-{port}"
    _step_keys = frozenset(
        {"content", "tool_calls", "status", "error", "finish_reason", "delay_s", "retry_after"}
    ) | {"reasoning"}
    _answer_keys = ("content", "tool_calls", "status")

    def __init__(
        self,
        steps: Iterable[str | dict[str, Any]] = (),
        *,
        model: str = "scripted-model",
        require_api_key: str | None = None,
        reasoning_field: str = "reasoning_content",
        stream_usage: bool = True,
    ) -> None:
        self.model = model
        self.require_api_key = require_api_key
        self.reasoning_field = reasoning_field
        self.stream_usage = stream_usage
        self.embedding_requests: list[dict[str, Any]] = []
        self.embedding_headers: list[dict[str, str]] = []
        self._embedding_failures: list[tuple[int, str]] = []
        self.moderation_rules: dict[str, str | dict[str, float]] = {}
        self.moderation_delay_s = 0.0
        self.moderation_requests: list[dict[str, Any]] = []
        self.moderation_headers: list[dict[str, str]] = []
        self._moderation_failures: list[tuple[int, str]] = []
        self.refused: list[str] = []
        super().__init__(steps)

    @property
    def url(self) -> str:
        """Base URL ending in ``/v1`` (what OpenAI clients take as ``base_url``)."""
        return f"{super().url}/v1"

    # -- HTTP --------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        return [
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/v1/embeddings", self._embeddings, methods=["POST"]),
            Route("/v1/moderations", self._moderations, methods=["POST"]),
        ]

    def _refuse(self, refusal: OpenAIRefusal) -> Response:
        with self._lock:
            self.refused.append(refusal.message)
        return _response(refusal)

    def fail_embeddings(self, status: int, message: str, times: int = 1) -> None:
        """Answer the next ``times`` embedding calls with HTTP ``status``."""
        with self._lock:
            self._embedding_failures.extend([(status, message)] * times)

    def fail_moderations(self, status: int, message: str, times: int = 1) -> None:
        """Answer the next ``times`` moderation calls with HTTP ``status``."""
        with self._lock:
            self._moderation_failures.extend([(status, message)] * times)

    def _auth_error(self, request: Request) -> Response | None:
        if self.require_api_key is None:
            return None
        header = request.headers.get("authorization", "")
        if header == f"Bearer {self.require_api_key}":
            return None
        given = header.removeprefix("Bearer ").strip()
        shown = f"{given[:3]}***" if given else "(none)"
        return _error(
            401,
            f"Incorrect API key provided: {shown}.",
            "invalid_request_error",
            code="invalid_api_key",
        )

    async def _models(self, request: Request) -> Response:
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        entry = {"id": self.model, "object": "model", "created": 0, "owned_by": "astromesh"}
        return JSONResponse({"object": "list", "data": [entry]})

    async def _chat(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(
                400, "We could not parse the JSON body of your request.", "invalid_request_error"
            )
        if isinstance(body, dict):
            self._record(request, body)
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        if not isinstance(body, dict) or not body.get("model"):
            return _error(
                422, "you must provide a model parameter", "invalid_request_error", param="model"
            )
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return _error(
                422,
                "'messages' must be a non-empty array",
                "invalid_request_error",
                param="messages",
            )
        refused = openai_messages_refusal(body["messages"]) or openai_response_format_refusal(
            body.get("response_format")
        )
        if refused is not None:
            return self._refuse(refused)
        step = await self._await_step()
        if step is None:
            return _error(500, self._exhausted(), "server_error")
        if "status" in step:
            status = int(step["status"])
            kind = "server_error" if status >= 500 else "invalid_request_error"
            response = _error(status, str(step.get("error") or f"scripted HTTP {status}"), kind)
            if "retry_after" in step:
                response.headers["Retry-After"] = str(step["retry_after"])
            return response
        reply = _Reply(step, body, self._served, self.reasoning_field)
        if body.get("stream"):
            options = body.get("stream_options") or {}
            return StreamingResponse(
                reply.sse(self.stream_usage and bool(options.get("include_usage"))),
                media_type="text/event-stream",
            )
        return JSONResponse(reply.whole())

    async def _embeddings(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(
                400, "We could not parse the JSON body of your request.", "invalid_request_error"
            )
        if isinstance(body, dict):
            with self._lock:
                self.embedding_requests.append(body)
                self.embedding_headers.append(dict(request.headers))
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        if not isinstance(body, dict) or not body.get("model"):
            return _error(
                400, "you must provide a model parameter", "invalid_request_error", param="model"
            )
        texts = _embedding_inputs(body.get("input"))
        if texts is None:
            return _error(
                400,
                "'$.input' is invalid. Please check the API reference: "
                "https://platform.openai.com/docs/api-reference.",
                "invalid_request_error",
                param="input",
            )
        with self._lock:
            failure = self._embedding_failures.pop(0) if self._embedding_failures else None
        if failure is not None:
            status, message = failure
            kind = "server_error" if status >= 500 else "invalid_request_error"
            return _error(status, message, kind)
        dim = body.get("dimensions") or self.embedding_dim
        if not isinstance(dim, int) or dim < 1:
            return _error(400, "dimensions must be a positive integer", "invalid_request_error")
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            return _error(
                400, f"invalid encoding_format {fmt!r}", "invalid_request_error", param="format"
            )
        data: list[dict[str, Any]] = []
        for index, text in enumerate(texts):
            vector = fake_embedding(text, dim)
            embedding: Any = vector
            if fmt == "base64":
                embedding = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        if self.embeddings_reversed:
            data.reverse()
        tokens = sum(max(1, count_words(t)) for t in texts)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": str(body["model"]),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _moderations(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(
                400, "We could not parse the JSON body of your request.", "invalid_request_error"
            )
        if isinstance(body, dict):
            with self._lock:
                self.moderation_requests.append(body)
                self.moderation_headers.append(dict(request.headers))
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        texts = _moderation_inputs(body.get("input") if isinstance(body, dict) else None)
        if texts is None:
            return _error(
                400,
                "'$.input' is invalid. Please check the API reference: "
                "https://platform.openai.com/docs/api-reference.",
                "invalid_request_error",
                param="input",
            )
        with self._lock:
            failure = self._moderation_failures.pop(0) if self._moderation_failures else None
            rules = dict(self.moderation_rules)
            serial = len(self.moderation_requests)
        if self.moderation_delay_s:
            await asyncio.sleep(self.moderation_delay_s)
        if failure is not None:
            status, message = failure
            kind = "server_error" if status >= 500 else "invalid_request_error"
            return _error(status, message, kind)
        return JSONResponse(
            {
                "id": f"modr-scripted-{serial}",
                "model": str(body.get("model") or "omni-moderation-latest"),
                "results": [_moderation_result(text, rules) for text in texts],
            }
        )


def _moderation_inputs(raw: Any) -> list[str] | None:
    """The texts of a moderation ``input``: a string, strings (one result each), or
    multimodal parts (one result, of their text parts); None when it is none of those."""
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list) or not raw:
        return None
    if all(isinstance(item, str) for item in raw):
        return list(raw)
    if all(isinstance(item, dict) and item.get("type") in ("text", "image_url") for item in raw):
        return [" ".join(str(item.get("text", "")) for item in raw if item["type"] == "text")]
    return None


def _moderation_result(text: str, rules: dict[str, str | dict[str, float]]) -> dict[str, Any]:
    """One result of OpenAI's moderation format for ``text`` under ``rules``."""
    scores = dict.fromkeys(MODERATION_CATEGORIES, _BASE_SCORE)
    lowered = text.lower()
    for needle, named in rules.items():
        if needle.lower() in lowered:
            for category, score in (
                {named: _RULE_SCORE} if isinstance(named, str) else named
            ).items():
                scores[category] = max(scores.get(category, 0.0), float(score))
    flags = {category: score >= _FLAG_SCORE for category, score in scores.items()}
    return {
        "flagged": any(flags.values()),
        "categories": flags,
        "category_scores": scores,
        "category_applied_input_types": {category: ["text"] for category in scores},
    }


def fake_embedding(text: str, dim: int) -> list[float]:
    """A deterministic unit vector for ``text``: the same text always gives the same
    vector, different texts nearly orthogonal ones (what the loopback servers answer
    for embeddings)."""
    values: list[float] = []
    block = 0
    while len(values) < dim:
        digest = hashlib.sha256(f"{block}:{text}".encode()).digest()
        values.extend((byte - 127.5) / 127.5 for byte in digest)
        block += 1
    values = values[:dim]
    norm = math.sqrt(sum(x * x for x in values))
    return [x / norm for x in values]


def _embedding_inputs(raw: Any) -> list[str] | None:
    """The texts of an embeddings ``input`` (a string, strings, or token arrays, shown
    as text); None when it is not one of those, or holds an empty string."""
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        return None
    if all(isinstance(t, int) for t in raw):
        raw = [raw]  # one token array
    texts: list[str] = []
    for item in raw:
        if isinstance(item, str) and item:
            texts.append(item)
        elif isinstance(item, list) and item and all(isinstance(t, int) for t in item):
            texts.append(" ".join(map(str, item)))
        else:
            return None
    return texts


class _Reply:
    """One scripted answer rendered as a whole completion or as SSE chunks."""

    def __init__(
        self, step: dict[str, Any], body: dict[str, Any], serial: int, reasoning_field: str
    ) -> None:
        self.model = str(body["model"])
        self.id = f"chatcmpl-scripted-{serial}"
        self.created = int(time.time())
        self.content: str | None = step.get("content")
        self.reasoning: str | None = step.get("reasoning")
        self.reasoning_field = reasoning_field
        self.calls = [
            {
                "id": str(c.get("id") or f"call_{serial}_{i}"),
                "name": str(c["name"]),
                "arguments": c["arguments"]
                if isinstance(c.get("arguments"), str)
                else json.dumps(c.get("arguments") or {}),
            }
            for i, c in enumerate(step.get("tool_calls") or [])
        ]
        self.finish_reason = str(
            step.get("finish_reason") or ("tool_calls" if self.calls else "stop")
        )
        prompt = sum(
            _content_words(m.get("content")) for m in body["messages"] if isinstance(m, dict)
        )
        # Reasoning tokens count as completion tokens, as OpenAI and vLLM count them.
        completion = (
            count_words(self.reasoning)
            + count_words(self.content)
            + sum(count_words(f"{c['name']} {c['arguments']}") for c in self.calls)
        )
        self.usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def whole(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning is not None:
            message[self.reasoning_field] = self.reasoning
        if self.calls:
            message["tool_calls"] = [_wire_call(c, c["arguments"]) for c in self.calls]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": self.usage,
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> str:
        payload = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return f"data: {json.dumps(payload)}\n\n"

    async def sse(self, include_usage: bool) -> AsyncIterator[str]:
        yield self._chunk({"role": "assistant", "content": ""})
        for piece in split_words(self.reasoning or ""):
            yield self._chunk({self.reasoning_field: piece})
        for piece in split_words(self.content or ""):
            yield self._chunk({"content": piece})
        for index, call in enumerate(self.calls):
            # OpenAI sends id, type and name first with empty arguments, then fragments.
            head = _wire_call(call, "")
            yield self._chunk({"tool_calls": [{"index": index, **head}]})
            for piece in _pieces(call["arguments"], _ARG_PIECES):
                fragment = {"index": index, "function": {"arguments": piece}}
                yield self._chunk({"tool_calls": [fragment]})
        yield self._chunk({}, self.finish_reason)
        if include_usage:
            usage = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": None,
                "choices": [],
                "usage": self.usage,
            }
            yield f"data: {json.dumps(usage)}\n\n"
        yield "data: [DONE]\n\n"


def _wire_call(call: dict[str, Any], arguments: str) -> dict[str, Any]:
    return {
        "id": call["id"],
        "type": "function",
        "function": {"name": call["name"], "arguments": arguments},
    }


def _pieces(text: str, n: int) -> list[str]:
    size = max(1, -(-len(text) // n))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _content_words(content: Any) -> int:
    if isinstance(content, str):
        return count_words(content)
    if isinstance(content, list):  # content parts: count the text ones
        return sum(
            count_words(p.get("text"))
            for p in content
            if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return 0


def _error(
    status: int, message: str, kind: str, *, param: str | None = None, code: str | None = None
) -> JSONResponse:
    return _response(OpenAIRefusal(message, param=param, code=code, status=status, kind=kind))


def _response(refusal: OpenAIRefusal) -> JSONResponse:
    # OpenAI's error body shape; clients read error.message.
    return JSONResponse(refusal.body(), status_code=refusal.status)
