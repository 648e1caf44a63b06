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
from collections.abc import Iterable
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
from astromesh_ray.testing.openai_chat import ChatReply, StreamRecord
from astromesh_ray.testing.openai_moderation import (
    MODERATION_CATEGORIES,
    moderation_inputs,
    moderation_result,
)
from astromesh_ray.testing.scripted import count_words

__all__ = ["MODERATION_CATEGORIES", "ScriptedOpenAIServer", "StreamRecord", "fake_embedding"]


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
    (sleep before answering), ``token_delay_s`` (sleep between a stream's chunks, so
    it lasts long enough for a test to cancel it).  Each streamed answer is kept in
    ``streams`` (``StreamRecord``: chunks sent, and whether its client went away
    before the end).  ``reasoning_field`` is ``reasoning_content`` (vLLM,
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
    ) | {"reasoning", "token_delay_s"}
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
        self.streams: list[StreamRecord] = []
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
        reply = ChatReply(step, body, self._served, self.reasoning_field)
        if body.get("stream"):
            options = body.get("stream_options") or {}
            record = StreamRecord(serial=self._served)
            with self._lock:
                self.streams.append(record)
            return StreamingResponse(
                reply.sse(
                    self.stream_usage and bool(options.get("include_usage")),
                    record,
                    float(step.get("token_delay_s") or 0.0),
                ),
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
        texts = moderation_inputs(body.get("input") if isinstance(body, dict) else None)
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
                "results": [moderation_result(text, rules) for text in texts],
            }
        )


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


def _error(
    status: int, message: str, kind: str, *, param: str | None = None, code: str | None = None
) -> JSONResponse:
    return _response(OpenAIRefusal(message, param=param, code=code, status=status, kind=kind))


def _response(refusal: OpenAIRefusal) -> JSONResponse:
    # OpenAI's error body shape; clients read error.message.
    return JSONResponse(refusal.body(), status_code=refusal.status)
