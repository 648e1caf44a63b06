"""``OnnxProvider``: a chat model run in this process by ONNX Runtime.

The model is a local folder or a Hugging Face Hub repo id (fetched once into the
Hugging Face cache); see ``onnx_model`` for the layout it expects.  Messages and
tools become a prompt through the model's chat template (``ChatFormat``); the
decoder runs a prefill and then one token per step with its KV cache, greedy by
default or sampled (``temperature``, ``top_p``, ``top_k``, ``seed``).  Text streams
as it decodes; a ``<tool_call>`` block is held back and parsed into whole tool calls
at the end.  Usage is counted by the tokenizer.

The model loads lazily on the first call (once, even under concurrent first calls),
and every blocking step runs in a worker thread so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from astromesh_ray.core.messages import (
    Completion,
    CompletionChunk,
    CompletionRequest,
    Message,
    ToolCall,
    Usage,
)
from astromesh_ray.core.providers.chat_format import ChatFormat
from astromesh_ray.core.providers.http import DEFAULT_MAX_CONNECTIONS
from astromesh_ray.errors import ConfigError, ProviderError

try:
    from astromesh_ray.core.providers.onnx_model import (
        IncrementalDecoder,
        OnnxModel,
        Sampling,
        check_model_ref,
        fetch_model,
        token_env,
    )
except ImportError as exc:  # the registry imports this module when YAML names onnx
    raise ConfigError(
        f"provider 'onnx' needs the package {exc.name!r}, which is not installed",
        hint="pip install 'astromesh-ray[onnx]'",
    ) from exc

__all__ = ["OnnxProvider"]

# `options:` keys of a model block this provider understands.
_OPTIONS = {
    "execution_provider": "cpu (default) or cuda",
    "subfolder": "folder of the .onnx graph inside the model, e.g. onnx",
    "file": "the .onnx graph to load, e.g. onnx/model_q4.onnx",
    "revision": "Hub branch, tag or commit",
    "cache_dir": "Hugging Face cache folder for Hub downloads",
    "chat_template": "a Jinja chat template replacing the model's own",
    "max_context": "context length in tokens (default: config.json max_position_embeddings)",
    "threads": "ONNX Runtime intra-op threads",
}
# Sampling parameters (YAML `parameters:` and per-request) this provider honours.
_PARAMETERS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop")
_DEFAULT_MAX_TOKENS = 256
_TOOL_OPEN = "<tool_call>"


@dataclass
class _Outcome:
    """The end of one generation: what ``complete`` returns and ``stream`` ends with."""

    content: str | None
    tool_calls: list[ToolCall]
    usage: Usage
    finish_reason: str


class OnnxProvider:
    """A chat model run in-process by ONNX Runtime (CPU by default, CUDA on request).

    ``model`` is a local folder or a Hugging Face Hub repo id; ``api_key_env`` names
    the variable holding a Hub token (for gated or private repos).  ``parameters``
    are default sampling options; a request's own ``parameters`` win.  Usage counts
    the prompt's tokens and every generated token, the eos token included (as vLLM
    does).  ``max_connections`` is taken for the signature every provider shares; a
    model in this process opens no connections.

    No constrained decoding: a request's ``response_schema`` is ignored here, and the
    engine validates the answer against it and asks again.
    """

    # No native constrained decoding (see the class docstring).
    native_structured_output: ClassVar[bool] = False

    def __init__(
        self,
        *,
        name: str,
        kind: str = "onnx",
        model: str,
        endpoint: str | None = None,
        api_key_env: str | None = None,
        parameters: dict[str, Any] | None = None,
        timeout_s: float = 60.0,
        options: dict[str, Any] | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        opts = dict(options or {})
        unknown = sorted(set(opts) - set(_OPTIONS))
        if unknown:
            raise ConfigError(
                f"{name}: unknown options {', '.join(map(repr, unknown))} for provider {kind!r}",
                hint="valid options: " + ", ".join(f"{k} ({v})" for k, v in _OPTIONS.items()),
            )
        if endpoint is not None:
            raise ConfigError(
                f"{name}: provider 'onnx' runs the model in-process and takes no endpoint",
                hint="remove endpoint; set model to a local folder or a Hugging Face repo id",
            )
        check_model_ref(name, model)
        self.name = name
        self.kind = kind
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.parameters: dict[str, Any] = dict(parameters or {})
        _check_parameters(self.parameters, lambda msg: ConfigError(f"{name}: {msg}"))
        self.execution_provider = str(opts.get("execution_provider", "cpu")).lower()
        if self.execution_provider not in ("cpu", "cuda"):
            raise ConfigError(
                f"{name}: execution_provider must be 'cpu' or 'cuda', "
                f"not {opts['execution_provider']!r}"
            )
        subfolder, file = opts.get("subfolder"), opts.get("file")
        self.graph_file: str | None = (
            "/".join(str(p).strip("/") for p in (subfolder, file or "model.onnx") if p)
            if subfolder or file
            else None
        )
        self.revision: str | None = _opt_str(name, opts, "revision")
        self.cache_dir: str | None = _opt_str(name, opts, "cache_dir")
        self.chat_template: str | None = _opt_str(name, opts, "chat_template")
        if self.chat_template is not None:
            ChatFormat(self.chat_template)  # a syntax error is a ConfigError now, not later
        self.max_context = _opt_int(name, opts, "max_context")
        self.threads = _opt_int(name, opts, "threads")
        self._model: OnnxModel | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OnnxProvider(name={self.name!r}, model={self.model!r})"

    # A loaded session cannot cross processes (Ray pickles providers into replicas):
    # the copy loads its own on first use.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_model"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- Provider protocol -------------------------------------------------------------

    async def complete(self, request: CompletionRequest) -> Completion:
        """Generate a whole answer: content and/or tool calls, with usage."""
        outcome: _Outcome | None = None
        async for item in self._generate(request):
            if isinstance(item, _Outcome):
                outcome = item
        assert outcome is not None  # _generate always ends with its outcome
        return Completion(
            message=Message(
                role="assistant", content=outcome.content, tool_calls=outcome.tool_calls
            ),
            usage=outcome.usage,
            model=self.model,
            provider=self.name,
            finish_reason=outcome.finish_reason,
        )

    async def stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        """Yield text deltas as tokens decode; tool calls, usage and finish reason
        come in the last chunk."""
        async for item in self._generate(request):
            if isinstance(item, _Outcome):
                yield CompletionChunk(
                    tool_calls=item.tool_calls,
                    usage=item.usage,
                    finish_reason=item.finish_reason,
                    model=self.model,
                )
            else:
                yield CompletionChunk(text=item)

    async def health(self) -> bool:
        """Whether the model loads (loading it if needed); never raises."""
        try:
            await self._loaded()
            return True
        except Exception:  # a probe: any failure just means "not healthy"
            return False

    async def aclose(self) -> None:
        """Release the ONNX Runtime session (a later call loads the model again).

        Generations already running keep their reference and finish; the lock is not
        taken, so closing never waits for a slow first load (a Hub download).
        """
        self._model = None

    # -- token level (tests compare these with transformers) ---------------------------

    async def encode_prompt(self, request: CompletionRequest) -> list[int]:
        """The prompt token ids ``request`` becomes (chat template, then tokenizer)."""
        model = await self._loaded()
        return await asyncio.to_thread(_prompt_ids, model, request)

    async def generate_ids(
        self, prompt_ids: Sequence[int], parameters: Mapping[str, Any] | None = None
    ) -> list[int]:
        """The token ids generated after ``prompt_ids`` (an eos id included when the
        model emits one), with this provider's parameters updated by ``parameters``."""
        model = await self._loaded()
        max_tokens, sampling, _ = self._settings(parameters or {})
        return await asyncio.to_thread(
            lambda: list(model.generate(list(prompt_ids), max_tokens, sampling))
        )

    # -- generation --------------------------------------------------------------------

    async def _generate(self, request: CompletionRequest) -> AsyncIterator[str | _Outcome]:
        max_tokens, sampling, stops = self._settings(request.parameters)
        model = await self._loaded()
        prompt_ids = await asyncio.to_thread(_prompt_ids, model, request)
        tokens = model.generate(prompt_ids, max_tokens, sampling)
        decoder = IncrementalDecoder(model)
        text = _HeldText((*model.chat_format.stop, *stops))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        finish, generated = "length", 0
        try:
            while (token := await asyncio.to_thread(next, tokens, None)) is not None:
                generated += 1
                if token in model.eos_ids:
                    finish = "stop"
                    break
                delta = text.add(decoder.push(token))
                if delta:
                    yield delta
                if text.stopped:
                    finish = "stop"
                    break
                if loop.time() > deadline:
                    raise ProviderError(
                        f"{self.name}: generation took longer than {self.timeout_s:g}s "
                        f"({generated} tokens)",
                        hint="lower max_tokens, raise timeout, or use a GPU",
                        provider=self.name,
                        status=None,
                        retryable=True,
                    )
        finally:
            # Frees the KV cache even when the consumer stops early.  ValueError: a
            # cancelled step is still running in its thread, and ends on its own.
            with contextlib.suppress(ValueError):
                tokens.close()
        if not text.stopped:
            text.add(decoder.flush())
        content, calls = model.chat_format.parse(text.text)
        tail = text.rest(content or "")
        if tail:
            yield tail
        yield _Outcome(
            content=content,
            tool_calls=calls,
            usage=Usage(input_tokens=len(prompt_ids), output_tokens=generated, calls=1),
            finish_reason="tool_calls" if calls else finish,
        )

    def _settings(self, overrides: Mapping[str, Any]) -> tuple[int, Sampling, tuple[str, ...]]:
        _check_parameters(
            overrides,
            lambda msg: ProviderError(
                f"{self.name}: {msg}",
                provider=self.name,
                status=None,
                retryable=False,
                caller_fault=True,
            ),
        )
        merged = {**self.parameters, **overrides}
        stop = merged.get("stop") or ()
        return (
            int(merged.get("max_tokens") or _DEFAULT_MAX_TOKENS),
            Sampling(
                temperature=float(merged.get("temperature") or 0.0),
                top_p=float(merged.get("top_p") or 1.0),
                top_k=int(merged.get("top_k") or 0),
                seed=merged.get("seed"),
            ),
            (stop,) if isinstance(stop, str) else tuple(stop),
        )

    async def _loaded(self) -> OnnxModel:
        model = self._model
        return model if model is not None else await asyncio.to_thread(self._load)

    def _load(self) -> OnnxModel:
        # A thread lock, not an asyncio one: callers may come from different event loops
        # (asyncio.run per call), and the loading itself runs in a worker thread.
        with self._lock:
            if self._model is None:
                folder: Path = fetch_model(
                    self.name,
                    self.model,
                    graph_file=self.graph_file,
                    revision=self.revision,
                    cache_dir=self.cache_dir,
                    token=token_env(self.api_key_env),
                )
                self._model = OnnxModel.load(
                    self.name,
                    folder,
                    graph_file=self.graph_file,
                    execution_provider=self.execution_provider,
                    threads=self.threads,
                    chat_template=self.chat_template,
                    max_context=self.max_context,
                )
            return self._model


class _HeldText:
    """Generated text, and how much of it may be streamed yet.

    Cuts the text at the first stop string; holds back everything from
    ``<tool_call>`` on (parsed whole at the end) and any tail that may be the start of
    a marker; streams the rest stripped of surrounding whitespace, so the deltas add up
    exactly to the content ``ChatFormat.parse`` returns.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.markers = (*self.stops, _TOOL_OPEN)
        self.text = ""
        self.emitted = ""
        self.stopped = False

    def add(self, delta: str) -> str:
        """Append ``delta``; return the newly streamable text."""
        if self.stopped or not delta:
            return ""
        # A stop string may straddle the previous text and the delta.
        start = max(0, len(self.text) - max((len(s) for s in self.stops), default=0))
        self.text += delta
        cuts = [i for s in self.stops if (i := self.text.find(s, start)) >= 0]
        if cuts:
            self.text = self.text[: min(cuts)]
            self.stopped = True
        tool = self.text.find(_TOOL_OPEN)
        end = tool if tool >= 0 else len(self.text) - self._marker_prefix(self.text)
        return self._release(self.text[:end].strip())

    def rest(self, content: str) -> str:
        """What is left to stream once the final ``content`` is known."""
        return self._release(content)

    def _release(self, candidate: str) -> str:
        if not candidate.startswith(self.emitted):
            return ""  # never happens: released text is always a prefix of the content
        delta, self.emitted = candidate[len(self.emitted) :], candidate
        return delta

    def _marker_prefix(self, text: str) -> int:
        # Length of the longest tail of `text` that begins some marker.
        for size in range(min(len(text), max(len(m) for m in self.markers)), 0, -1):
            tail = text[-size:]
            if any(m.startswith(tail) for m in self.markers):
                return size
        return 0


def _prompt_ids(model: OnnxModel, request: CompletionRequest) -> list[int]:
    return model.encode(model.chat_format.render(request.messages, request.tools))


def _check_parameters(params: Mapping[str, Any], error: Callable[[str], Exception]) -> None:
    unknown = sorted(set(params) - set(_PARAMETERS))
    if unknown:
        raise error(
            f"unknown parameters {', '.join(map(repr, unknown))}; "
            f"this provider understands {', '.join(_PARAMETERS)}"
        )
    for key, value in params.items():
        # bool is an int to Python, never a sensible sampling value.
        if isinstance(value, bool) or not _VALID[key](value):
            raise error(f"parameter {key}={value!r} is out of range or of the wrong type")


_VALID: dict[str, Callable[[Any], bool]] = {
    "max_tokens": lambda v: isinstance(v, int) and v >= 1,
    "temperature": lambda v: isinstance(v, int | float) and v >= 0,
    "top_p": lambda v: isinstance(v, int | float) and 0 < v <= 1,
    "top_k": lambda v: isinstance(v, int) and v >= 0,
    "seed": lambda v: v is None or (isinstance(v, int) and v >= 0),
    "stop": lambda v: (
        isinstance(v, str) or (isinstance(v, list | tuple) and all(isinstance(s, str) for s in v))
    ),
}


def _opt_str(name: str, opts: Mapping[str, Any], key: str) -> str | None:
    value = opts.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{name}: option {key} must be a string, not {value!r}")
    return value


def _opt_int(name: str, opts: Mapping[str, Any], key: str) -> int | None:
    value = opts.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{name}: option {key} must be a positive integer, not {value!r}")
    return value
