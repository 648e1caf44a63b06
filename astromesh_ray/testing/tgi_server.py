"""``ScriptedTGIServer``: a real loopback HTTP server speaking text-generation-inference.

It answers from a script of steps in TGI's wire format, as its router (``server.rs``)
writes it: ``POST /generate`` (``{generated_text, details}`` plus the ``x-prompt-tokens``
/ ``x-generated-tokens`` headers), ``POST /generate_stream`` (SSE ``data:{...}`` per
token, the last event carrying ``generated_text`` and ``details``; errors after the
200 header arrive as ``data:{"error", "error_type"}`` events), ``POST /`` (the compat
route the official ``text-generation`` client uses), ``GET /health``, ``GET /info``
and enough of the Messages API (``POST /v1/chat/completions``, JSON and SSE) for
``TGIProvider``'s ``messages`` mode.  Validated against the official client in the
integration tests.  ``POST /tokenize`` (``{"inputs": ...}``) answers TGI's list of
``{id, text, start, stop}`` (character offsets), one per token as below; it takes no
step.

"Tokens" are word pieces (``split_words``) and ChatML's special tokens
(``<|im_start|>``, ...), which a script may contain: they stream flagged ``special``
and stay out of ``generated_text``, as TGI decodes it.  A generation that ends on its
own ends with the EOS token ``<|im_end|>``, counted in ``generated_tokens`` as TGI
does.  Sampling parameters are validated as TGI does
(``temperature`` 0 is a 422), ``max_new_tokens`` and ``stop`` are honoured.  So is a
grammar (``parameters.grammar``, the Messages API's ``response_format``): TGI's
``GrammarType``, a JSON one a draft 2020-12 schema with top-level ``properties``;
the scripted text itself is not constrained by it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from jsonschema import Draft202012Validator, SchemaError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from astromesh_ray.core.providers.chat_format import ChatFormat
from astromesh_ray.testing.loopback import ScriptedServer
from astromesh_ray.testing.scripted import count_words, split_words

__all__ = ["ScriptedTGIServer"]

_EOS = "<|im_end|>"
# ChatML's special tokens; a script may contain them, a stream flags them special.
_SPECIAL_IDS = {"<|endoftext|>": 0, "<|im_start|>": 1, _EOS: 2}
_SPECIAL = re.compile("(" + "|".join(map(re.escape, _SPECIAL_IDS)) + ")")
# Errors TGI's router raises inside a started /generate_stream (HTTP 200, then an
# error event); anything else (a proxy's 503, auth) is a plain HTTP error.
_ROUTER_ERRORS = {
    422: "validation",
    424: "generation",
    429: "overloaded",
    500: "incomplete_generation",
}
_MAX_STOP_SEQUENCES = 4  # TGI's --max-stop-sequences default
# TGI's GrammarType variants (json_object is an alias of json).
_GRAMMAR_TYPES = ("json", "json_object", "regex", "json_schema")
_VERSION = "3.3.4"


class ScriptedTGIServer(ScriptedServer):
    """A TGI server on 127.0.0.1 whose "model" generates scripted text.

    A step is the raw text the model generates (a ``str``: script
    ``<tool_call>{...}</tool_call>`` in it, as a real model writes it), or a dict with:

    - ``text`` and optionally ``finish_reason`` (force ``length`` / ``stop_sequence``),
      ``stream_error`` (stream the text, then fail with this message), ``delay_s``;
    - ``status`` and ``error`` (and optionally ``error_type``): answer that error.

    Every request body is appended to ``requests`` (its path to ``request_paths``, its
    headers to ``request_headers``).  Requests TGI would refuse (validation, auth)
    consume no step; running out of steps answers 500.  ``healthy = False`` makes
    ``/health`` answer 503; ``usage_headers = False`` drops ``x-prompt-tokens`` /
    ``x-generated-tokens`` (as older TGI versions do).
    """

    _name = "ScriptedTGIServer"
    _thread_name = "ScriptedTGIServer"
    _step_keys = frozenset(
        {"text", "finish_reason", "status", "error", "error_type", "stream_error", "delay_s"}
    )
    _text_key = "text"
    _answer_keys = ("text", "status")

    def __init__(
        self,
        steps: Iterable[str | dict[str, Any]] = (),
        *,
        model_id: str = "scripted/tgi-model",
        require_api_key: str | None = None,
    ) -> None:
        self.model_id = model_id
        self.require_api_key = require_api_key
        self.healthy = True
        self.usage_headers = True
        self.request_paths: list[str] = []
        super().__init__(steps)

    # -- HTTP --------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        return [
            Route("/", self._compat, methods=["POST"]),
            Route("/generate", self._generate, methods=["POST"]),
            Route("/generate_stream", self._generate_stream, methods=["POST"]),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/tokenize", self._tokenize_inputs, methods=["POST"]),
            Route("/health", self._health, methods=["GET"]),
            Route("/info", self._info, methods=["GET"]),
        ]

    def _record(self, request: Request, body: Any) -> None:
        with self._lock:
            self.requests.append(body)
            self.request_paths.append(request.url.path)
            self.request_headers.append(dict(request.headers))

    async def _health(self, request: Request) -> Response:
        if self.healthy:
            return Response(status_code=200)
        return _error(503, "unhealthy", "healthcheck")

    async def _info(self, request: Request) -> Response:
        info = {
            "model_id": self.model_id,
            "model_sha": None,
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": 128,
            "max_best_of": 2,
            "max_stop_sequences": _MAX_STOP_SEQUENCES,
            "max_input_tokens": 4095,
            "max_total_tokens": 4096,
            "router": "text-generation-router",
            "version": _VERSION,
        }
        return JSONResponse(info)

    async def _receive(self, request: Request) -> dict[str, Any] | Response:
        """Record the body; or the refusal TGI answers before generating anything."""
        try:
            body = json.loads(await request.body())
        except ValueError:
            return Response("Failed to parse the request body as JSON", status_code=400)
        self._record(request, body)
        key = self.require_api_key
        if key is not None and request.headers.get("authorization") != f"Bearer {key}":
            return Response(status_code=401)  # TGI's --api-key: no body
        if not isinstance(body, dict):
            return Response("Json deserialize error: expected an object", status_code=422)
        return body

    async def _take_step(self, stream: bool) -> dict[str, Any] | Response:
        """The next step to generate from, or the scripted (or exhausted) failure."""
        step = await self._await_step()
        if step is None:
            return _failure(500, self._exhausted(), "incomplete_generation", stream)
        if "status" not in step:
            return step
        status = int(step["status"])
        kind = str(step.get("error_type") or _ROUTER_ERRORS.get(status, "generation"))
        return _failure(status, str(step.get("error") or f"scripted HTTP {status}"), kind, stream)

    async def _compat(self, request: Request) -> Response:
        # TGI's POST /: streams or not by the body's "stream"; its JSON answer is a list.
        body = await self._receive(request)
        if isinstance(body, Response):
            return body
        return await self._answer(body, stream=bool(body.get("stream")), as_list=True)

    async def _generate(self, request: Request) -> Response:
        body = await self._receive(request)
        return body if isinstance(body, Response) else await self._answer(body, stream=False)

    async def _generate_stream(self, request: Request) -> Response:
        body = await self._receive(request)
        return body if isinstance(body, Response) else await self._answer(body, stream=True)

    async def _answer(
        self, body: dict[str, Any], *, stream: bool, as_list: bool = False
    ) -> Response:
        params = body.get("parameters") or {}
        undecodable = _grammar_shape_error(params.get("grammar"), "parameters.grammar")
        if undecodable is not None:
            return undecodable
        problem = _validate(body, params) or _grammar_error(params.get("grammar"))
        if problem is not None:
            return _failure(422, f"Input validation error: {problem}", "validation", stream)
        step = await self._take_step(stream)
        if isinstance(step, Response):
            return step
        gen = _Generation(str(step["text"]), params, step.get("finish_reason"))
        inputs = str(body["inputs"])
        text = inputs + gen.text if params.get("return_full_text") else gen.text
        if stream:
            details = None
            if params.get("details"):
                details = {**gen.details(params), "input_length": count_words(inputs)}
            return _sse(_stream_events(gen, text, details, step.get("stream_error")))
        details = None
        if params.get("details") or params.get("decoder_input_details"):
            # Prompt tokens come back only when asked for: they cost a logprob each.
            prefill = [
                {"id": 1000 + i, "text": piece, "logprob": None if i == 0 else -1.0}
                for i, piece in enumerate(split_words(inputs))
                if params.get("decoder_input_details")
            ]
            details = {**gen.details(params), "prefill": prefill, "tokens": gen.tokens}
        headers = {"x-compute-type": "gpu+optimized"}
        if self.usage_headers:
            headers["x-prompt-tokens"] = str(count_words(inputs))
            headers["x-generated-tokens"] = str(len(gen.tokens))
        payload = {"generated_text": text, "details": details}
        return JSONResponse([payload] if as_list else payload, headers=headers)

    async def _tokenize_inputs(self, request: Request) -> Response:
        # TGI's POST /tokenize: a GenerateRequest in, its prompt's tokens out.
        body = await self._receive(request)
        if isinstance(body, Response):
            return body
        if not isinstance(body.get("inputs"), str):
            message = "Failed to deserialize the JSON body: missing field `inputs`"
            return Response(message, status_code=422)
        tokens, start = [], 0
        for index, (piece, _special) in enumerate(_tokenize(body["inputs"])):
            stop = start + len(piece)
            token_id = _SPECIAL_IDS.get(piece, 1000 + index)
            tokens.append({"id": token_id, "text": piece, "start": start, "stop": stop})
            start = stop
        return JSONResponse(tokens)

    async def _chat(self, request: Request) -> Response:
        body = await self._receive(request)
        if isinstance(body, Response):
            return body
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            message = "Failed to deserialize the JSON body: missing field `messages`"
            return Response(message, status_code=422)
        grammar = body.get("response_format")
        undecodable = _grammar_shape_error(grammar, "response_format")
        if undecodable is not None:
            return undecodable
        problem = _grammar_error(grammar)
        if problem is not None:
            return _error(422, f"Input validation error: {problem}", "validation")
        step = await self._take_step(stream=False)  # errors come before the stream starts
        if isinstance(step, Response):
            return step
        params = {"max_new_tokens": body.get("max_tokens"), "stop": body.get("stop") or []}
        reply = _ChatReply(self.model_id, body, _Generation(str(step["text"]), params, None))
        if body.get("stream"):
            options = body.get("stream_options") or {}
            return _sse(reply.events(bool(options.get("include_usage"))))
        return JSONResponse(reply.whole())


async def _stream_events(
    gen: _Generation, text: str, details: dict[str, Any] | None, error: str | None
) -> AsyncIterator[str]:
    """``/generate_stream``: one event per token, the last with text and details."""
    last = len(gen.tokens) if error else len(gen.tokens) - 1
    for index, token in enumerate(gen.tokens[:last], start=1):
        yield _data({"index": index, "token": token, "generated_text": None, "details": None})
    if error:
        yield _data({"error": error, "error_type": "generation"})
        return
    end = {"index": len(gen.tokens), "token": gen.tokens[-1], "generated_text": text}
    yield _data({**end, "details": details})


class _Generation:
    """What the scripted "model" generates under TGI's stopping rules."""

    def __init__(self, script: str, params: dict[str, Any], forced: str | None) -> None:
        limit = params.get("max_new_tokens")
        stops = [str(s) for s in params.get("stop") or []]
        self.tokens: list[dict[str, Any]] = []
        self.text = ""  # decoded as TGI does: without special tokens
        finish = "length"  # if the limit leaves no room for the EOS token
        for piece, special in [*_tokenize(script), (_EOS, True)]:
            if limit is not None and len(self.tokens) >= int(limit):
                break
            token_id = _SPECIAL_IDS.get(piece, 1000 + len(self.tokens))
            self.tokens.append(
                {"id": token_id, "text": piece, "logprob": -0.25, "special": special}
            )
            if piece == _EOS:
                finish = "eos_token"
                break
            self.text += "" if special else piece
            if any(stop in self.text for stop in stops):
                finish = "stop_sequence"  # the stop text stays in the output, as in TGI
                break
        self.finish_reason = forced or finish

    def details(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "finish_reason": self.finish_reason,
            "generated_tokens": len(self.tokens),
            "seed": params.get("seed") if params.get("do_sample") else None,
        }


class _ChatReply:
    """One scripted answer in TGI's Messages API shape (OpenAI chat completions)."""

    def __init__(self, model_id: str, body: dict[str, Any], gen: _Generation) -> None:
        self.model_id = model_id
        self.created = int(time.time())
        content, calls = ChatFormat().parse(gen.text)
        # Only a request offering tools gets structured calls (TGI constrains the model
        # with a grammar then); otherwise the text is the answer.
        self.calls = calls if body.get("tools") else []
        self.content = content if self.calls else (gen.text.strip() or None)
        finish = {"eos_token": "stop", "stop_sequence": "stop"}.get(gen.finish_reason, "length")
        self.finish = "tool_calls" if self.calls else finish
        prompt = sum(
            count_words(m.get("content")) if isinstance(m.get("content"), str) else 0
            for m in body["messages"]
            if isinstance(m, dict)
        )
        self.usage = {
            "prompt_tokens": prompt,
            "completion_tokens": len(gen.tokens),
            "total_tokens": prompt + len(gen.tokens),
        }

    def _wire_calls(self, with_arguments: bool) -> list[dict[str, Any]]:
        return [
            {
                "index": i,
                "id": str(i),
                "type": "function",
                "function": {
                    "name": call.name,
                    "arguments": json.dumps(call.arguments) if with_arguments else "",
                },
            }
            for i, call in enumerate(self.calls)
        ]

    def _envelope(self, kind: str, choice: dict[str, Any]) -> dict[str, Any]:
        return {
            "object": kind,
            "id": "",
            "created": self.created,
            "model": self.model_id,
            "system_fingerprint": f"{_VERSION}-native",
            "choices": [choice],
        }

    def whole(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.calls:
            message["tool_calls"] = [
                {k: v for k, v in c.items() if k != "index"} for c in self._wire_calls(True)
            ]
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish}
        return {**self._envelope("chat.completion", choice), "usage": self.usage}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _data({**self._envelope("chat.completion.chunk", choice), "usage": usage})

    async def events(self, include_usage: bool) -> AsyncIterator[str]:
        if self.calls:
            # Name first with empty arguments, then the arguments in two fragments.
            yield self._chunk({"role": "assistant", "tool_calls": self._wire_calls(False)})
            for i, call in enumerate(self._wire_calls(True)):
                args = call["function"]["arguments"]
                for part in (args[: len(args) // 2], args[len(args) // 2 :]):
                    fragment = {"index": i, "function": {"arguments": part}}
                    yield self._chunk({"role": "assistant", "tool_calls": [fragment]})
        else:
            for piece in split_words(self.content or ""):
                yield self._chunk({"role": "assistant", "content": piece})
        # TGI puts usage on the last token's chunk, next to the finish reason.
        yield self._chunk({"role": "assistant"}, self.finish, self.usage if include_usage else None)
        yield "data:[DONE]\n\n"


def _tokenize(script: str) -> list[tuple[str, bool]]:
    """Word pieces and special tokens, each with its ``special`` flag."""
    pieces: list[tuple[str, bool]] = []
    for part in _SPECIAL.split(script):
        if part in _SPECIAL_IDS:
            pieces.append((part, True))
        else:
            pieces.extend((word, False) for word in split_words(part))
    return pieces


def _validate(body: dict[str, Any], params: dict[str, Any]) -> str | None:
    """TGI's validation messages (router/src/validation.rs) for what tests can hit."""
    if not body.get("inputs"):
        return "`inputs` cannot be empty"
    positive = ("temperature", "top_k", "repetition_penalty", "max_new_tokens")
    for key in positive:
        if params.get(key) is not None and not params[key] > 0:
            return f"`{key}` must be strictly positive"
    if params.get("top_p") is not None and not 0 < params["top_p"] < 1:
        return "`top_p` must be > 0.0 and < 1.0"
    stops = params.get("stop") or []
    if len(stops) > _MAX_STOP_SEQUENCES:
        return f"`stop` supports up to {_MAX_STOP_SEQUENCES} stop sequences. Given: {len(stops)}"
    return None


def _grammar_shape_error(grammar: Any, field: str) -> Response | None:
    """axum's 422 for a grammar that is not TGI's ``GrammarType`` (serde, adjacently
    tagged: ``{"type": "json" | "json_object" | "regex" | "json_schema", "value": ...}``),
    answered before any stream starts; None for one that deserialises."""
    if grammar is None:
        return None
    problem = None
    if not isinstance(grammar, dict):
        problem = f"invalid type: {_serde_kind(grammar)}, expected adjacently tagged enum"
    elif "type" not in grammar:
        problem = "missing field `type`"
    elif grammar["type"] not in _GRAMMAR_TYPES:
        expected = ", ".join(f"`{t}`" for t in _GRAMMAR_TYPES)
        problem = f"unknown variant `{grammar['type']}`, expected one of {expected}"
    elif "value" not in grammar:
        problem = "missing field `value`"
    elif grammar["type"] == "regex" and not isinstance(grammar["value"], str):
        problem = f"invalid type: {_serde_kind(grammar['value'])}, expected a string"
    elif grammar["type"] == "json_schema" and not (
        isinstance(grammar["value"], dict) and "schema" in grammar["value"]
    ):
        problem = "missing field `schema`"
    if problem is None:
        return None
    message = f"Failed to deserialize the JSON body into the target type: {field}: {problem}"
    return Response(message, status_code=422)


def _grammar_error(grammar: Any) -> str | None:
    """TGI's validation of a JSON grammar (router/src/validation.rs): the value is a
    JSON Schema object (or its JSON text), valid under draft 2020-12, with top-level
    ``properties``; a regex passes as it is."""
    if not isinstance(grammar, dict) or grammar.get("type") == "regex":
        return None
    value: Any = grammar.get("value")
    if grammar.get("type") == "json_schema":
        value = value["schema"]  # its shape was checked: an object with a schema
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            return f"grammar is not valid: {exc}"
    if not isinstance(value, dict):
        return "grammar is not supported"
    try:
        Draft202012Validator.check_schema(value)
    except SchemaError as exc:
        return f"grammar is not valid: {exc.message}"
    if "properties" not in value:
        return "grammar is not valid: Grammar must have a 'properties' field"
    return None


def _serde_kind(value: Any) -> str:
    # How serde names the JSON value it got instead.
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, str):
        return f"string {json.dumps(value)}"
    if isinstance(value, int | float):
        return f"number `{value}`"
    return "sequence" if isinstance(value, list) else "map"


def _data(payload: dict[str, Any]) -> str:
    # TGI (axum) writes "data:" with no space before the JSON.
    return f"data:{json.dumps(payload)}\n\n"


def _sse(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        events, media_type="text/event-stream", headers={"x-accel-buffering": "no"}
    )


def _failure(status: int, message: str, kind: str, stream: bool) -> Response:
    if stream and status in _ROUTER_ERRORS:
        # A started stream: the status line is already 200, the error is an event.
        async def events() -> AsyncIterator[str]:
            yield _data({"error": message, "error_type": kind})

        return _sse(events())
    return _error(status, message, kind)


def _error(status: int, message: str, kind: str) -> JSONResponse:
    # TGI's ErrorResponse: {"error": ..., "error_type": ...}.
    return JSONResponse({"error": message, "error_type": kind}, status_code=status)
