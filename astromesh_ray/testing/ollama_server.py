"""``ScriptedOllamaServer``: a real loopback HTTP server speaking Ollama's native API.

Ollama cannot be installed on every test machine, so this speaks its exact wire format
instead: ``POST /api/chat`` (NDJSON streaming by default, one JSON object with
``stream: false``; tool calls whole, arguments as JSON objects; ``prompt_eval_count`` /
``eval_count`` on the ``done`` line), ``POST /api/embed`` (deterministic vectors,
``fake_embedding``), ``GET /api/tags``, ``GET /api/version``, and Ollama's
``{"error": "..."}`` bodies (404 for a model that is not pulled).  Validated
against the official ``ollama`` client in the integration tests.

Imports neither Ray nor any vendor SDK; uvicorn runs it in a daemon thread.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from astromesh_ray.testing.chat_checks import ollama_decode_error, ollama_sequence_error
from astromesh_ray.testing.loopback import ScriptedServer
from astromesh_ray.testing.openai_server import fake_embedding
from astromesh_ray.testing.scripted import count_words, split_words

__all__ = ["OLLAMA_VERSION", "ScriptedOllamaServer"]

OLLAMA_VERSION = "0.12.6"


class ScriptedOllamaServer(ScriptedServer):
    """An Ollama-compatible server on 127.0.0.1 that replies from scripted steps.

    Steps take the same form as ``ScriptedOpenAIServer``'s:

    - ``{"content": "text"}`` (a bare ``str`` is shorthand for this);
    - ``{"tool_calls": [{"name": ..., "arguments": {...}}]}``: ``arguments`` may also be
      a raw string, sent verbatim (to test clients against a misbehaving proxy); an
      ``id`` is sent only if given (newer Ollama versions send ids, older ones do not);
    - ``{"status": 500, "error": "message"}``: answer that HTTP error instead;
    - ``{"stream_error": "message"}`` (with optional ``content``): stream the content,
      then an ``{"error": ...}`` line as Ollama does when a runner dies mid-answer
      (a non-streaming request gets HTTP 500 with that error);

    and optionally ``thinking`` (a thinking model's reasoning: sent only when the
    request enables ``think``, as ``message.thinking``, streamed word by word before
    the content), ``finish_reason`` (sent as ``done_reason``, default ``stop``, which
    Ollama also sends for tool calls) and ``delay_s`` (sleep before answering).

    ``models`` are the pulled models ``/api/tags`` lists; a chat naming another model
    gets Ollama's 404 and consumes no step, and so does a ``format`` that is neither
    ``"json"`` nor a JSON Schema object (Ollama's 500, or an error line when
    streaming).  A conversation that cannot be decoded (tool-call arguments that
    are not objects) or whose ``tool`` message follows no tool call
    (``chat_checks.py``) gets a 400 and consumes no step; those errors go to
    ``refused``.  Every chat body received is appended to
    ``requests`` (headers to ``request_headers``).  Running out of steps answers 500.
    ``url`` is the base URL without ``/v1`` (what Ollama clients take as ``host``).

    ``POST /api/embed`` consumes no step: it answers ``fake_embedding(text,
    dimensions or embedding_dim)`` per input (a model must be pulled, as for chat).
    Its bodies go to ``embedding_requests`` (headers to ``embedding_headers``);
    ``fail_embeddings`` makes the next calls fail.
    """

    embedding_dim = 32

    _name = "ScriptedOllamaServer"
    _thread_name = "scripted-ollama-{port}"
    _step_keys = frozenset(
        {"content", "tool_calls", "status", "error", "finish_reason", "delay_s", "stream_error"}
    ) | {"thinking"}
    _answer_keys = ("content", "tool_calls", "status", "stream_error")

    def __init__(
        self,
        steps: Iterable[str | dict[str, Any]] = (),
        *,
        models: Iterable[str] = ("llama3.1:8b",),
        require_api_key: str | None = None,
    ) -> None:
        self.models = list(models)
        self.require_api_key = require_api_key
        self.embedding_requests: list[dict[str, Any]] = []
        self.embedding_headers: list[dict[str, str]] = []
        self._embedding_failures: list[tuple[int, str]] = []
        self.refused: list[str] = []
        super().__init__(steps)

    # -- HTTP --------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        return [
            Route("/", self._root, methods=["GET", "HEAD"]),
            Route("/api/chat", self._chat, methods=["POST"]),
            Route("/api/tags", self._tags, methods=["GET"]),
            Route("/api/version", self._version, methods=["GET"]),
            Route("/api/embed", self._embed, methods=["POST"]),
        ]

    def fail_embeddings(self, status: int, message: str, times: int = 1) -> None:
        """Answer the next ``times`` embedding calls with HTTP ``status``."""
        with self._lock:
            self._embedding_failures.extend([(status, message)] * times)

    def _denied(self, request: Request) -> Response | None:
        # Ollama has no auth of its own; this stands in for an authenticating proxy.
        if self.require_api_key is None:
            return None
        if request.headers.get("authorization", "") == f"Bearer {self.require_api_key}":
            return None
        return _error(401, "unauthorized")

    def _refuse(self, message: str) -> Response:
        with self._lock:
            self.refused.append(message)
        return _error(400, message)

    def _pulled(self, model: str) -> bool:
        # Ollama resolves a bare name to its `:latest` tag.
        wanted = model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"
        return wanted in self.models

    async def _root(self, request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def _version(self, request: Request) -> Response:
        return JSONResponse({"version": OLLAMA_VERSION})

    async def _tags(self, request: Request) -> Response:
        denied = self._denied(request)
        if denied is not None:
            return denied
        return JSONResponse({"models": [_tag_entry(m) for m in self.models]})

    async def _chat(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            return _error(400, f"invalid character in request body: {exc}")
        if isinstance(body, dict):
            self._record(request, body)
        denied = self._denied(request)
        if denied is not None:
            return denied
        if not isinstance(body, dict) or not body.get("model"):
            return _error(400, "model is required")
        problem = ollama_decode_error(body.get("messages"))
        if problem:
            return self._refuse(problem)
        model = str(body["model"])
        if not self._pulled(model):
            return _error(404, f'model "{model}" not found, try pulling it first')
        stream = body.get("stream", True) is not False  # Ollama streams unless told not to
        if not body.get("messages"):
            # An empty chat just loads the model: Ollama answers done_reason "load".
            loaded = {**_head(model), "message": {"role": "assistant", "content": ""}}
            loaded.update(done_reason="load", done=True)
            return _ndjson([loaded]) if stream else JSONResponse(loaded)
        problem = ollama_sequence_error(body["messages"])
        if problem:
            return self._refuse(problem)
        refused = _format_error(body.get("format"))
        if refused is not None:
            # Ollama finds out when it starts generating: a 500, or an error line in
            # a stream that already answered 200.
            return _ndjson([{"error": refused}]) if stream else _error(500, refused)
        step = await self._await_step()
        if step is None:
            return _error(500, self._exhausted())
        if "status" in step:
            status = int(step["status"])
            return _error(status, str(step.get("error") or f"scripted HTTP {status}"))
        reply = _Reply(step, body)
        if not stream:
            if "stream_error" in step:
                return _error(500, str(step["stream_error"]))
            return JSONResponse(reply.whole())
        return _ndjson(reply.lines())

    async def _embed(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            return _error(400, f"invalid character in request body: {exc}")
        if isinstance(body, dict):
            with self._lock:
                self.embedding_requests.append(body)
                self.embedding_headers.append(dict(request.headers))
        denied = self._denied(request)
        if denied is not None:
            return denied
        if not isinstance(body, dict) or not body.get("model"):
            return _error(400, "model is required")
        model = str(body["model"])
        if not self._pulled(model):
            return _error(404, f'model "{model}" not found, try pulling it first')
        raw = body.get("input", [])
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return _error(400, "invalid input type")
        with self._lock:
            failure = self._embedding_failures.pop(0) if self._embedding_failures else None
        if failure is not None:
            return _error(*failure)
        dim = body.get("dimensions") or self.embedding_dim
        return JSONResponse(
            {
                "model": model,
                "embeddings": [fake_embedding(t, int(dim)) for t in texts],
                "total_duration": 1_000_000,
                "load_duration": 100_000,
                "prompt_eval_count": sum(max(1, count_words(t)) for t in texts),
            }
        )


class _Reply:
    """One scripted answer rendered as a whole chat response or as NDJSON lines."""

    def __init__(self, step: dict[str, Any], body: dict[str, Any]) -> None:
        self.model = str(body["model"])
        self.content = str(step.get("content") or "")
        # A thinking model thinks aloud only when asked to (`think`: true or a level).
        think = body.get("think")
        self.thinking = str(step.get("thinking") or "") if think not in (None, False) else ""
        self.stream_error: str | None = step.get("stream_error")
        self.calls = [_wire_call(c) for c in step.get("tool_calls") or []]
        self.done_reason = str(step.get("finish_reason") or "stop")
        prompt = sum(count_words(m.get("content")) for m in body["messages"] if isinstance(m, dict))
        completion = (
            count_words(self.thinking)
            + count_words(self.content)
            + sum(count_words(f"{c['function']['name']} {_args_text(c)}") for c in self.calls)
        )
        self.counts = {"prompt_eval_count": prompt, "eval_count": completion}

    def whole(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.thinking:
            message["thinking"] = self.thinking
        if self.calls:
            message["tool_calls"] = self.calls
        return {**_head(self.model), "message": message, **self._done()}

    def _done(self) -> dict[str, Any]:
        return {
            "done_reason": self.done_reason,
            "done": True,
            "total_duration": 1_000_000,
            "load_duration": 100_000,
            "prompt_eval_count": self.counts["prompt_eval_count"],
            "prompt_eval_duration": 200_000,
            "eval_count": self.counts["eval_count"],
            "eval_duration": 700_000,
        }

    def lines(self) -> list[dict[str, Any]]:
        out = [
            {
                **_head(self.model),
                "message": {"role": "assistant", "content": "", "thinking": p},
                "done": False,
            }
            for p in split_words(self.thinking)
        ]
        out += [
            {**_head(self.model), "message": {"role": "assistant", "content": p}, "done": False}
            for p in split_words(self.content)
        ]
        if self.stream_error is not None:
            return [*out, {"error": self.stream_error}]
        if self.calls:
            # Ollama emits parsed tool calls whole, on a line of their own, before `done`.
            message = {"role": "assistant", "content": "", "tool_calls": self.calls}
            out.append({**_head(self.model), "message": message, "done": False})
        empty = {"role": "assistant", "content": ""}
        out.append({**_head(self.model), "message": empty, **self._done()})
        return out


def _ndjson(lines: list[dict[str, Any]]) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        for line in lines:
            yield json.dumps(line) + "\n"

    return StreamingResponse(body(), media_type="application/x-ndjson")


def _head(model: str) -> dict[str, Any]:
    created = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return {"model": model, "created_at": created}


def _wire_call(call: dict[str, Any]) -> dict[str, Any]:
    arguments = call.get("arguments")
    wire: dict[str, Any] = {
        "function": {
            "name": str(call["name"]),
            "arguments": arguments if isinstance(arguments, str) else dict(arguments or {}),
        }
    }
    if call.get("id"):
        wire = {"id": str(call["id"]), **wire}
    return wire


def _args_text(call: dict[str, Any]) -> str:
    arguments = call["function"]["arguments"]
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def _format_error(fmt: Any) -> str | None:
    """Ollama's error for a ``format`` it cannot constrain to (llm/llama_server.go):
    only ``"json"`` or a JSON Schema object; null and ``""`` mean "not set"."""
    if fmt is None or fmt in ("", "json") or isinstance(fmt, dict):
        return None
    raw = json.dumps(fmt, separators=(",", ":"))
    return f'invalid format: {json.dumps(raw)}; expected "json" or a valid JSON Schema object'


def _tag_entry(model: str) -> dict[str, Any]:
    return {
        "name": model,
        "model": model,
        "modified_at": "2025-01-01T00:00:00.000000Z",
        "size": 4_920_753_328,
        "digest": hashlib.sha256(model.encode()).hexdigest(),
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": "8.0B",
            "quantization_level": "Q4_K_M",
        },
    }


def _error(status: int, message: str) -> JSONResponse:
    # Ollama's error body shape; its client reads `error`.
    return JSONResponse({"error": message}, status_code=status)
