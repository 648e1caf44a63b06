"""``TGIProvider``: HuggingFace Text Generation Inference.

Two modes (option ``mode``):

- ``generate`` (default): our messages and tools become one prompt through a chat
  template applied on our side (``ChatFormat``: ChatML with Hermes-style tools, or the
  model card's own Jinja template), sent to ``POST /generate`` or ``/generate_stream``
  (SSE); tool calls are parsed back out of the generated ``<tool_call>`` text.  It
  works with any TGI version, provided the template is the one the model was tuned on.
- ``messages``: TGI's OpenAI-compatible Messages API (``/v1/chat/completions``, TGI
  applies the model's template and grammar-constrains tool calls); every call is
  delegated to an ``OpenAIProvider``.

Talks plain ``httpx`` through one pooled client per event loop, like ``OpenAIProvider``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import httpx

from astromesh_ray.core.messages import (
    Completion,
    CompletionChunk,
    CompletionRequest,
    Message,
    Usage,
)
from astromesh_ray.core.providers.chat_format import DEFAULT_STOP, ChatFormat
from astromesh_ray.core.providers.http import (
    DEFAULT_MAX_CONNECTIONS,
    ClientPool,
    auth_hint,
    bearer_headers,
    check_options,
    connection_lost,
    estimate_tokens,
    header_option,
    retryable_status,
    status_message,
    transport_message,
)
from astromesh_ray.core.providers.openai import OpenAIProvider
from astromesh_ray.core.providers.structured import tgi_grammar
from astromesh_ray.errors import ConfigError, ProviderError

__all__ = ["DEFAULT_ENDPOINT", "TGIProvider"]

DEFAULT_ENDPOINT = "http://localhost:8080"
DEFAULT_MAX_NEW_TOKENS = 512
_TOOL_CALL = "<tool_call>"
_OPTIONS = {
    "mode": "'generate' (default: /generate with our chat template) or 'messages' "
    "(TGI's OpenAI-compatible /v1/chat/completions)",
    "chat_template": "a Jinja chat template replacing the default ChatML with Hermes tools",
    "stop": "extra stop sequences (a list of strings)",
    "headers": "extra HTTP headers for every request",
}
# TGI's own GenerateParameters, passed through unchanged.
_NATIVE: tuple[str, ...] = ("seed", "repetition_penalty", "frequency_penalty", "typical_p")
_NATIVE += ("truncate", "watermark", "grammar", "do_sample")
_MAPPED = ("max_tokens", "max_new_tokens", "temperature", "top_p", "top_k", "stop")
_VALID_PARAMETERS = _MAPPED + _NATIVE
# TGI's ErrorResponse.error_type values that mean "this request is wrong", not "try again".
_CALLER_ERRORS = {"validation", "template_error", "missing_template_variable", "tool_error"}
_FINISH = {"length": "length", "eos_token": "stop", "stop_sequence": "stop"}
_PARAMETERS_HINT = "valid parameters: " + ", ".join(_VALID_PARAMETERS)
_GENERATION_FAILED = frozenset({424})
_TIMEOUT_HINT = "raise the model block's timeout, or lower max_tokens"
_STATUS_HINTS = {
    429: "the model is overloaded: retry later, or raise --max-concurrent-requests",
    503: "the model is overloaded or still loading: retry later",
}
_NO_MESSAGES_HINT = (
    "this server has no Messages API (it needs TGI >= 1.4 and a model with a chat "
    "template): use option mode: generate"
)


class TGIProvider:
    """A model served by text-generation-inference (``provider: hf_tgi``).

    ``parameters`` are default sampling options in OpenAI names (``max_tokens``,
    ``temperature``, ...) or TGI's own; a request's own ``parameters`` win.  The API key
    (TGI's ``--api-key``, or a Hugging Face token for Inference Endpoints) is read from
    ``api_key_env`` at call time and sent as a Bearer token.  ``max_connections``
    sizes the connection pool (all kept alive).  A request's ``response_schema``
    becomes TGI's JSON grammar (``parameters.grammar``, or the Messages API's
    ``response_format``), unless TGI would refuse it (no top-level ``properties``).
    """

    # Constrained decoding to request.response_schema, done by TGI (a JSON grammar).
    native_structured_output: ClassVar[bool] = True

    def __init__(
        self,
        *,
        name: str,
        kind: str = "hf_tgi",
        model: str,
        endpoint: str | None = None,
        api_key_env: str | None = None,
        parameters: dict[str, Any] | None = None,
        timeout_s: float = 60.0,
        options: dict[str, Any] | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        opts = dict(options or {})
        check_options(name, kind, opts, _OPTIONS)
        self.mode = str(opts.get("mode", "generate"))
        stop = [opts["stop"]] if isinstance(opts.get("stop"), str) else opts.get("stop") or []
        template = opts.get("chat_template")
        if self.mode not in ("generate", "messages"):
            raise ConfigError(f"{name}: option mode is {self.mode!r}", hint=_OPTIONS["mode"])
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise ConfigError(f"{name}: option stop must be a list of non-empty strings")
        if template is not None and not isinstance(template, str):
            raise ConfigError(f"{name}: option chat_template must be a string (Jinja source)")
        if self.mode == "messages" and template is not None:
            raise ConfigError(
                f"{name}: option chat_template works in mode generate only",
                hint="in mode messages TGI applies the model's own template",
            )
        if self.mode == "generate":  # the Messages API takes OpenAI's parameters instead
            try:
                _tgi_parameters(parameters or {})
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{name}: {exc}", hint=_PARAMETERS_HINT) from None
        self.name = name
        self.kind = kind
        self.model = model
        # Users give the server root; tolerate the /v1 that OpenAI-style configs carry.
        self.endpoint = (endpoint or DEFAULT_ENDPOINT).rstrip("/").removesuffix("/v1")
        self.api_key_env = api_key_env
        self.parameters: dict[str, Any] = dict(parameters or {})
        self.timeout_s = timeout_s
        self.extra_headers = header_option(opts)
        self.chat_template: str | None = template
        # ChatML's end-of-turn markers always (harmless with other templates), then the
        # user's own, e.g. "<|eot_id|>" with a Llama 3 template.
        self.stop: tuple[str, ...] = tuple(dict.fromkeys((*DEFAULT_STOP, *stop)))
        self._format = ChatFormat(template, stop=self.stop)  # a bad template fails here
        self.max_connections = max_connections
        self._pool = ClientPool(max_connections)  # pickles without its live client
        self._messages: OpenAIProvider | None = None
        if self.mode == "messages":
            self._messages = OpenAIProvider(
                name=name,
                kind="openai_compat",
                model=model,
                endpoint=f"{self.endpoint}/v1",
                api_key_env=api_key_env,
                parameters={**({"stop": stop} if stop else {}), **(parameters or {})},
                timeout_s=timeout_s,
                options={"headers": self.extra_headers} if self.extra_headers else None,
                max_connections=max_connections,
                response_format=tgi_grammar,  # TGI's GrammarType, not OpenAI's shape
            )

    def __repr__(self) -> str:
        return f"TGIProvider(name={self.name!r}, mode={self.mode!r}, endpoint={self.endpoint!r})"

    # Compiled Jinja templates cannot cross processes (Ray pickles providers into
    # replicas): drop it and rebuild on arrival.  The client pool drops its own client.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_format": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._format = ChatFormat(self.chat_template, stop=self.stop)

    # -- Provider protocol -------------------------------------------------------------

    async def complete(self, request: CompletionRequest) -> Completion:
        """Generate one whole answer; tool calls are parsed from the generated text."""
        if self._messages is not None:
            try:
                return await self._messages.complete(request)
            except ProviderError as exc:
                raise self._retarget(exc) from exc.__cause__
        body = self._body(request)
        url = f"{self.endpoint}/generate"
        try:
            response = await self._http().post(url, json=body, headers=self._headers())
        except httpx.TransportError as exc:
            raise self._transport_error(exc, url) from exc
        if response.status_code >= 400:
            raise self._status_error(response.status_code, response.content, url)
        try:
            data = response.json()
            text = data["generated_text"]
            if not isinstance(text, str):
                raise TypeError(text)
        except (ValueError, KeyError, TypeError) as exc:
            raise self._bad_response(f"not a /generate answer: {response.text[:200]!r}") from exc
        details = data.get("details") if isinstance(data.get("details"), dict) else {}
        content, calls = self._format.parse(text)
        # Prompt tokens: TGI's x-prompt-tokens header.  details.prefill is filled only
        # when decoder_input_details is asked for, which costs a logprob per prompt token.
        prompt = _int(response.headers.get("x-prompt-tokens")) or len(details.get("prefill") or [])
        generated = _int(details.get("generated_tokens"))
        if generated is None:
            generated = _int(response.headers.get("x-generated-tokens"))
        return Completion(
            message=Message(role="assistant", content=content, tool_calls=calls),
            usage=Usage(
                input_tokens=prompt or estimate_tokens(body["inputs"]),
                output_tokens=estimate_tokens(text) if generated is None else generated,
                calls=1,
            ),
            model=self.model,
            provider=self.name,
            finish_reason=_finish(details.get("finish_reason"), bool(calls)),
        )

    async def stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        """Stream text deltas as tokens arrive.

        From the first ``<tool_call>`` on, text is held back: tool calls are emitted
        whole in the last chunk, with usage and finish reason.
        """
        if self._messages is not None:
            try:
                async for chunk in self._messages.stream(request):
                    yield chunk
            except ProviderError as exc:
                raise self._retarget(exc) from exc.__cause__
            return
        body = self._body(request)
        url = f"{self.endpoint}/generate_stream"
        text = ""  # non-special token text so far
        sent = ""  # what the deltas have shown of it
        tokens = 0
        final: dict[str, Any] | None = None
        try:
            async with self._http().stream(
                "POST", url, json=body, headers=self._headers()
            ) as response:
                if response.status_code >= 400:
                    raise self._status_error(response.status_code, await response.aread(), url)
                async for line in response.aiter_lines():
                    event = self._decode_event(line)
                    if event is None:
                        continue
                    token = event.get("token") or {}
                    tokens += 1
                    if not token.get("special"):  # EOS and friends are not text
                        text += str(token.get("text") or "")
                    if event.get("generated_text") is not None:
                        final = event
                        break
                    shown = _showable(text, (_TOOL_CALL, *self.stop))
                    if len(shown) > len(sent) and shown.startswith(sent):
                        yield CompletionChunk(text=shown[len(sent) :])
                        sent = shown
        except httpx.TransportError as exc:
            raise self._transport_error(exc, url) from exc
        if final is None:
            raise self._error(f"stream from {url} ended before its last token", retryable=True)
        content, calls = self._format.parse(str(final["generated_text"]))
        # Held-back text that turned out to be content (a partial marker that was not
        # one, text after a tool call) still reaches the deltas.
        if (content or "").startswith(sent) and len(content or "") > len(sent):
            yield CompletionChunk(text=(content or "")[len(sent) :])
        details: dict[str, Any] = final["details"] if isinstance(final.get("details"), dict) else {}
        yield CompletionChunk(
            tool_calls=calls,
            usage=Usage(
                # Stream details carry input_length since TGI 2.x; older ones do not.
                input_tokens=_int(details.get("input_length")) or estimate_tokens(body["inputs"]),
                # Without details, every SSE event is one generated token: count them.
                output_tokens=_int(details.get("generated_tokens")) or tokens,
                calls=1,
            ),
            finish_reason=_finish(details.get("finish_reason"), bool(calls)),
            model=self.model,
        )

    async def health(self) -> bool:
        """Whether ``GET {endpoint}/health`` answers 200 (model loaded); never raises."""
        try:
            response = await self._http().get(
                f"{self.endpoint}/health", headers=self._headers(), timeout=min(self.timeout_s, 5.0)
            )
            return response.status_code == 200
        except Exception:  # a probe: any failure just means "not healthy"
            return False

    async def aclose(self) -> None:
        """Close the pooled HTTP client(s); a later call opens new ones."""
        await self._pool.aclose()
        if self._messages is not None:
            await self._messages.aclose()

    # -- request side ------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        return self._pool.client(self.timeout_s)

    def _headers(self) -> dict[str, str]:
        return bearer_headers(self.extra_headers, self.api_key_env)

    def _body(self, request: CompletionRequest) -> dict[str, Any]:
        try:
            prompt = self._format.render(request.messages, request.tools)
            wire = _tgi_parameters({**self.parameters, **request.parameters})
        except ProviderError as exc:  # the chat template failed
            raise self._error(exc.message, hint=exc.hint, caller_fault=True) from None
        except (ValueError, TypeError) as exc:  # an unknown parameter, or a bad value
            raise self._error(str(exc), hint=_PARAMETERS_HINT, caller_fault=True) from None
        # The end-of-turn markers always stop generation, whatever the caller's own stops
        # (TGI takes --max-stop-sequences of them, 4 by default).
        wire["stop"] = list(dict.fromkeys([*self.stop, *wire.get("stop", [])]))
        wire.setdefault("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
        # Set last so sampling parameters can never change what we parse.
        wire.update(details=True, return_full_text=False)
        schema = request.response_schema
        grammar = tgi_grammar(schema) if schema is not None else None
        if grammar is not None:
            wire["grammar"] = grammar  # the request's schema beats a `grammar` parameter
        return {"inputs": prompt, "parameters": wire}

    # -- response side -----------------------------------------------------------------

    def _decode_event(self, line: str) -> dict[str, Any] | None:
        # TGI writes "data:{...}" (no space); only data fields matter, keep-alives are ":".
        if not line.startswith("data:"):
            return None
        try:
            event = json.loads(line[5:])
        except ValueError:
            event = None
        if not isinstance(event, dict):
            raise self._bad_response(f"undecodable stream event {line[:200]!r}")
        if "error" in event:
            # TGI reports failures after the 200 header as an event: validation errors
            # (the request is wrong) and generation / overload / incomplete ones (retry).
            kind = str(event.get("error_type") or "")
            raise self._error(
                f"stream failed: {event['error']}" + (f" ({kind})" if kind else ""),
                retryable=kind not in _CALLER_ERRORS,
                caller_fault=kind in _CALLER_ERRORS,
                error_type=kind or None,
            )
        return event

    # -- errors ------------------------------------------------------------------------

    def _error(
        self, message: str, *, hint: str | None = None, retryable: bool = False, **details: Any
    ) -> ProviderError:
        details.setdefault("status", None)
        return ProviderError(
            f"{self.name}: {message}",
            hint=hint,
            provider=self.name,
            retryable=retryable,
            **details,
        )

    def _bad_response(self, what: str) -> ProviderError:
        hint = f"check that {self.endpoint} is a text-generation-inference server"
        return self._error(f"malformed response from {self.endpoint}: {what}", hint=hint)

    def _start_hint(self) -> str:
        return (
            f"start text-generation-inference at {self.endpoint} "
            f"(text-generation-launcher --model-id {self.model})"
        )

    def _transport_error(self, exc: httpx.TransportError, url: str) -> ProviderError:
        what = transport_message(exc, url, self.timeout_s)
        if isinstance(exc, httpx.TimeoutException):
            return self._error(what, hint=_TIMEOUT_HINT, retryable=True)
        return self._error(
            what, hint=self._start_hint(), retryable=True, connection_lost=connection_lost(exc)
        )

    def _status_error(self, status: int, content: bytes, url: str) -> ProviderError:
        text = content.decode("utf-8", errors="replace").strip()
        error_type = None
        with contextlib.suppress(ValueError):
            data = json.loads(text)
            if isinstance(data, dict) and data.get("error"):  # {"error", "error_type"}
                text, error_type = str(data["error"]), data.get("error_type")
        hint = _STATUS_HINTS.get(status)
        if status in (401, 403):
            hint = auth_hint(self.api_key_env)
        elif status == 404:
            hint = f"check that {self.endpoint} is a text-generation-inference server"
        return self._error(
            status_message(status, url, text[:300]),
            hint=hint,
            status=status,
            # 424 is TGI's "generation failed" (e.g. out of GPU memory): worth another try.
            retryable=retryable_status(status, also=_GENERATION_FAILED),
            error_type=error_type,
        )

    def _retarget(self, exc: ProviderError) -> ProviderError:
        """Give the Messages API's errors TGI's hints instead of generic OpenAI ones."""
        cause = exc.__cause__
        if isinstance(cause, httpx.TransportError) and not isinstance(
            cause, httpx.TimeoutException
        ):
            return ProviderError(exc.message, hint=self._start_hint(), **exc.details)
        if exc.details.get("status") == 404:
            return ProviderError(exc.message, hint=_NO_MESSAGES_HINT, **exc.details)
        return exc


def _tgi_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """Our (OpenAI-named) sampling parameters as TGI ``GenerateParameters``."""
    if unknown := sorted(set(params) - set(_VALID_PARAMETERS)):
        raise ValueError(f"parameters {', '.join(map(repr, unknown))} are not understood by TGI")
    wire: dict[str, Any] = {k: params[k] for k in _NATIVE if params.get(k) is not None}
    limit = params.get("max_tokens", params.get("max_new_tokens"))
    if limit is not None:
        wire["max_new_tokens"] = int(limit)
    temperature = params.get("temperature")
    if temperature is not None:
        if float(temperature) <= 0:
            # Greedy.  TGI rejects temperature 0 ("must be strictly positive").
            wire["do_sample"] = False
        else:
            wire["temperature"] = float(temperature)
            wire.setdefault("do_sample", True)  # OpenAI semantics: a temperature samples
    top_p = params.get("top_p")
    # TGI wants 0 < top_p < 1; 1.0 is the common way of saying "no nucleus filter".
    if top_p is not None and 0 < float(top_p) < 1:
        wire["top_p"] = float(top_p)
    top_k = params.get("top_k")
    if top_k is not None and int(top_k) > 0:  # 0 means "off" elsewhere; TGI rejects it
        wire["top_k"] = int(top_k)
    stop = params.get("stop")
    if stop:
        wire["stop"] = [stop] if isinstance(stop, str) else [str(s) for s in stop]
    return wire


def _showable(text: str, markers: tuple[str, ...]) -> str:
    """The part of streamed ``text`` that is surely content.

    It ends before the first marker (``<tool_call>``, a stop sequence) and before any
    suffix that may be the start of one still arriving token by token.  Leading and
    trailing whitespace are held too, because the final parse strips them: so the
    deltas always add up to the answer's content.
    """
    cut = len(text)
    for marker in markers:
        found = text.find(marker)
        if found >= 0:
            cut = min(cut, found)
        for size in range(min(len(marker) - 1, len(text)), 0, -1):
            if text.endswith(marker[:size]):
                cut = min(cut, len(text) - size)
                break
    return text[:cut].strip()


def _finish(reason: Any, has_calls: bool) -> str:
    if has_calls:
        return "tool_calls"
    return _FINISH.get(str(reason), "stop")


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
