"""Token counting, for the ``token_budget`` history strategy.

``TokenCounter`` is the interface; ``token_counter(endpoint)`` picks the counter
that matches a model endpoint's tokenizer:

- ``onnx``: ``HFTokenizerCounter`` on the model's own ``tokenizer.json`` (found the
  way ``OnnxProvider`` finds its model: a local folder or a Hub snapshot);
- ``llamacpp``: ``LlamaCppTokenCounter``, asking the llama.cpp server;
- ``hf_tgi``: ``TGITokenCounter``, asking text-generation-inference;
- anything else: ``EstimateTokenCounter``.

Counting must never fail a turn: a counter whose tokenizer or server fails counts
that call with the estimate instead and logs a warning (the first time; later
fallbacks log at debug level).  Each text is counted on its own, without the role
markers a chat template adds around messages (the strategy adds those); the server
counters count what their server does, a BOS token included where it adds one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import httpx

from astromesh_ray.core.providers.http import (
    ClientPool,
    bearer_headers,
    header_option,
    status_message,
    transport_message,
)
from astromesh_ray.errors import AstromeshError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from astromesh_ray.core.providers.onnx import OnnxProvider
    from astromesh_ray.spec import ModelEndpoint

__all__ = [
    "EstimateTokenCounter",
    "HFTokenizerCounter",
    "LlamaCppTokenCounter",
    "TGITokenCounter",
    "TokenCounter",
    "estimate_tokens",
    "token_counter",
]

log = logging.getLogger("astromesh.memory")

BYTES_PER_TOKEN = 4
"""The estimate's rule: one token per 4 bytes of UTF-8 (see ``estimate_tokens``)."""
_TIMEOUT_S = 5.0  # a count waits no longer than this for a tokenizer server
_CONCURRENCY = 8  # requests one count sends at once (and connections it keeps)


@runtime_checkable
class TokenCounter(Protocol):
    """Counts the tokens of texts with one model's tokenizer.  Implementations:
    ``HFTokenizerCounter``, ``LlamaCppTokenCounter``, ``TGITokenCounter``,
    ``EstimateTokenCounter``."""

    name: str

    async def count(self, texts: Sequence[str]) -> list[int]:
        """The token count of each text, in order; never raises for a tokenizer or
        server that fails (the estimate counts instead)."""
        ...

    async def aclose(self) -> None: ...


def estimate_tokens(text: str) -> int:
    """``ceil(len(text.encode("utf-8")) / 4)``: tokens when no tokenizer is known.

    Byte-level BPE vocabularies average about 4 bytes a token on English text and
    code.  Counting bytes rather than characters errs high on other scripts (a CJK
    character is 3 bytes and often a token of its own, where characters / 4 would
    count a quarter), and a budget is better overestimated than overrun.
    """
    return math.ceil(len(text.encode("utf-8", errors="surrogatepass")) / BYTES_PER_TOKEN)


class EstimateTokenCounter:
    """Counts with ``estimate_tokens``: the fallback for providers without a
    tokenizer we can ask (OpenAI, Ollama, vLLM, ...)."""

    name = "estimate"

    async def count(self, texts: Sequence[str]) -> list[int]:
        """``estimate_tokens`` of each text."""
        return [estimate_tokens(t) for t in texts]

    async def aclose(self) -> None:
        """Nothing to release."""


class _Fallback:
    """The estimate for a counter whose tokenizer failed, with a warning the first
    time (one per counter, not one per turn)."""

    def __init__(self, counter: str) -> None:
        self.counter = counter
        self.warned = False

    def count(self, texts: Sequence[str], why: str) -> list[int]:
        level = logging.DEBUG if self.warned else logging.WARNING
        self.warned = True
        log.log(level, "token counter %s: %s; estimating tokens instead", self.counter, why)
        return [estimate_tokens(t) for t in texts]


# --------------------------------------------------------------------------- Hugging Face


class HFTokenizerCounter:
    """Counts with a Hugging Face ``tokenizers`` tokenizer (a ``tokenizer.json``).

    ``tokenizer_json`` is the file's path, or a function returning it (called once,
    in a worker thread, at the first count: it may download it).  Texts are encoded
    without the tokenizer's added special tokens (a BOS), and without the padding or
    truncation the file may ask for (every text is counted whole).  A file that
    cannot be found or read, or a missing ``tokenizers`` package, makes each count
    fall back to the estimate (and retry the file the next time); texts the
    tokenizer refuses (a lone surrogate) make that call fall back to the estimate.
    """

    def __init__(
        self,
        tokenizer_json: str | os.PathLike[str] | Callable[[], str | os.PathLike[str]],
        *,
        name: str = "hf",
    ) -> None:
        self.name = name
        self._source = tokenizer_json
        self._tokenizer: Tokenizer | None = None
        self._lock = threading.Lock()
        self._fallback = _Fallback(name)

    def __repr__(self) -> str:
        return f"HFTokenizerCounter(name={self.name!r})"

    # A lock cannot cross processes (Ray pickles counters with their strategy).
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    async def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text, by the tokenizer (loaded on first use)."""
        if not texts:
            return []
        tokenizer = self._tokenizer
        if tokenizer is None:
            loaded = await asyncio.to_thread(self._load)
            if isinstance(loaded, str):
                return self._fallback.count(texts, loaded)
            tokenizer = loaded
        try:
            encodings = await asyncio.to_thread(
                tokenizer.encode_batch, list(texts), add_special_tokens=False
            )
        except Exception as exc:  # e.g. TypeError on a lone surrogate ("\ud83d")
            return self._fallback.count(texts, f"cannot encode the texts: {exc!r}")
        return [len(e.ids) for e in encodings]

    async def aclose(self) -> None:
        """Drop the tokenizer (a later count loads it again)."""
        self._tokenizer = None

    def _load(self) -> Tokenizer | str:
        """The tokenizer, or why it cannot be loaded."""
        # A thread lock, not an asyncio one: counts may come from different loops.
        with self._lock:
            if self._tokenizer is not None:
                return self._tokenizer
            try:
                from tokenizers import Tokenizer
            except ImportError:
                return "the tokenizers package is not installed (pip install 'astromesh-ray[onnx]')"
            source = self._source
            try:
                path = os.fspath(source() if callable(source) else source)
            except (AstromeshError, OSError) as exc:  # the model's lookup failed
                return f"cannot find the tokenizer: {exc}"
            try:
                tokenizer = Tokenizer.from_file(path)
                # A tokenizer.json may pad and cut every text to a fixed length
                # (all-MiniLM-L6-v2's: 128), which would make every count that length.
                tokenizer.no_padding()
                tokenizer.no_truncation()
            except Exception as exc:  # tokenizers raises plain Exception on a bad file
                return f"cannot read {path}: {exc}"
            self._tokenizer = tokenizer
            return tokenizer


@dataclass(frozen=True)
class _OnnxTokenizerFile:
    """The ``tokenizer.json`` of an ONNX provider's model, found as the provider
    finds its model (``fetch_model``: a local folder, or a Hub snapshot)."""

    provider: OnnxProvider

    def __call__(self) -> Path:
        from astromesh_ray.core.providers.onnx_model import fetch_model, token_env

        p = self.provider
        folder = fetch_model(
            p.name,
            p.model,
            graph_file=p.graph_file,
            revision=p.revision,
            cache_dir=p.cache_dir,
            token=token_env(p.api_key_env),
        )
        return folder / "tokenizer.json"


# --------------------------------------------------------------------------- servers


class _CountFailed(Exception):
    """A tokenizer server could not count one text (the message says why)."""


class _ServerCounter:
    """What the two server counters share: the pooled client, headers, fan-out and
    the fallback.  A subclass sends one text in ``_count_one``."""

    name: str

    def __init__(
        self,
        endpoint: str,
        timeout_s: float,
        *,
        api_key_env: str | None,
        headers: Mapping[str, str] | None,
        name: str,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s!r}")
        self.name = name
        # Users give the server root or its OpenAI base URL; both servers tokenize at
        # the root.
        self.endpoint = endpoint.rstrip("/").removesuffix("/v1")
        self.timeout_s = timeout_s
        self.api_key_env = api_key_env
        self.headers = dict(headers or {})
        self._pool = ClientPool(_CONCURRENCY)  # pickles without its live client
        self._fallback = _Fallback(name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(endpoint={self.endpoint!r})"

    async def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text, by the server; the estimate for the whole call if
        the server fails on any of them.  Empty texts are 0 without asking."""
        if not texts:
            return []
        client = self._pool.client(self.timeout_s)
        headers = bearer_headers(self.headers, self.api_key_env)
        try:
            return await self._count_all(client, headers, list(texts))
        except _CountFailed as exc:
            return self._fallback.count(texts, str(exc))

    async def aclose(self) -> None:
        """Close the pooled client (a later count opens a new one)."""
        await self._pool.aclose()

    async def _count_all(
        self, client: httpx.AsyncClient, headers: dict[str, str], texts: list[str]
    ) -> list[int]:
        counts = [0] * len(texts)
        todo = [i for i, text in enumerate(texts) if text]
        if not todo:
            return counts
        # The first text alone: it may settle which route the server answers on.
        counts[todo[0]] = await self._count_one(client, headers, texts[todo[0]])
        gate = asyncio.Semaphore(_CONCURRENCY)

        async def one(i: int) -> int:
            async with gate:
                return await self._count_one(client, headers, texts[i])

        # return_exceptions: every request ends before the call does (none is left
        # running on its own); a failure of ours (not _CountFailed) still propagates.
        results = await asyncio.gather(*(one(i) for i in todo[1:]), return_exceptions=True)
        for i, result in zip(todo[1:], results, strict=True):
            if isinstance(result, BaseException):
                raise result
            counts[i] = result
        return counts

    async def _post(
        self, client: httpx.AsyncClient, headers: dict[str, str], path: str, body: Any
    ) -> httpx.Response:
        url = f"{self.endpoint}{path}"
        try:
            return await client.post(url, json=body, headers=headers)
        except httpx.TransportError as exc:
            raise _CountFailed(transport_message(exc, url, self.timeout_s)) from exc

    def _failed(self, response: httpx.Response) -> _CountFailed:
        detail = response.text.strip()[:200]
        return _CountFailed(status_message(response.status_code, str(response.url), detail))

    async def _count_one(
        self, client: httpx.AsyncClient, headers: dict[str, str], text: str
    ) -> int:
        raise NotImplementedError


class LlamaCppTokenCounter(_ServerCounter):
    """Counts with a llama.cpp server's tokenizer (``provider: llamacpp``).

    Two servers go by that name, with different routes: llama-cpp-python's
    (``python -m llama_cpp.server``, the one this project runs) answers
    ``POST /extras/tokenize`` with ``{"input": text}``; llama.cpp's own C++
    ``llama-server`` answers ``POST /tokenize`` with ``{"content": text}``.  Both
    reply ``{"tokens": [...]}``.  The first is tried first; the route that answers
    is remembered.  Control-token text (``<|im_start|>``) counts as its one token on
    both; llama-cpp-python also counts the BOS token its model adds to every text
    (one more per text, the safe side of a budget).  ``model`` is sent to
    llama-cpp-python, which serves several models from one config file.
    """

    def __init__(
        self,
        endpoint: str,
        timeout_s: float = _TIMEOUT_S,
        *,
        model: str | None = None,
        api_key_env: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            endpoint, timeout_s, api_key_env=api_key_env, headers=headers, name="llamacpp"
        )
        self.model = model
        self.route: str | None = None  # the path that answered; None until one has

    def _bodies(self, text: str) -> dict[str, dict[str, Any]]:
        python_body: dict[str, Any] = {"input": text}
        if self.model:
            python_body["model"] = self.model
        return {
            "/extras/tokenize": python_body,
            "/tokenize": {"content": text, "add_special": False, "parse_special": True},
        }

    async def _count_one(
        self, client: httpx.AsyncClient, headers: dict[str, str], text: str
    ) -> int:
        bodies = self._bodies(text)
        routes = [self.route] if self.route is not None else list(bodies)
        for path in routes:
            response = await self._post(client, headers, path, bodies[path])
            if response.status_code == 404:
                if self.route is not None:
                    self.route = None  # another server now: look again next time
                continue
            if response.status_code >= 400:
                raise self._failed(response)
            try:
                tokens = response.json()["tokens"]
                if not isinstance(tokens, list):
                    raise TypeError(tokens)
            except (ValueError, KeyError, TypeError) as exc:
                raise _CountFailed(
                    f"malformed answer from {self.endpoint}{path}: {response.text[:200]!r}"
                ) from exc
            self.route = path
            return len(tokens)
        raise _CountFailed(
            f"{self.endpoint} has no tokenize route (tried {', '.join(routes)}): "
            "is it a llama.cpp server?"
        )


class TGITokenCounter(_ServerCounter):
    """Counts with text-generation-inference's tokenizer (``provider: hf_tgi``):
    ``POST /tokenize`` with ``{"inputs": text}``, answered by one
    ``{id, text, start, stop}`` per token (special tokens the tokenizer adds
    included, as TGI counts a prompt).  A server without a fast tokenizer answers
    404, and counts fall back to the estimate."""

    def __init__(
        self,
        endpoint: str,
        timeout_s: float = _TIMEOUT_S,
        *,
        api_key_env: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            endpoint, timeout_s, api_key_env=api_key_env, headers=headers, name="hf_tgi"
        )

    async def _count_one(
        self, client: httpx.AsyncClient, headers: dict[str, str], text: str
    ) -> int:
        response = await self._post(client, headers, "/tokenize", {"inputs": text})
        if response.status_code >= 400:
            raise self._failed(response)
        try:
            tokens = response.json()
            if not isinstance(tokens, list):
                raise TypeError(tokens)
        except (ValueError, TypeError) as exc:
            raise _CountFailed(
                f"malformed answer from {self.endpoint}/tokenize: {response.text[:200]!r}"
            ) from exc
        return len(tokens)


# --------------------------------------------------------------------------- by endpoint


def _onnx_counter(endpoint: ModelEndpoint) -> TokenCounter:
    # The provider parses the model's options (subfolder, file, revision, cache_dir)
    # exactly as it will to load the model; building it loads nothing.
    from astromesh_ray.core.providers.onnx import OnnxProvider

    provider = OnnxProvider(
        name=f"onnx:{endpoint.model}",
        model=endpoint.model,
        api_key_env=endpoint.api_key_env,
        options=dict(endpoint.options),
    )
    return HFTokenizerCounter(_OnnxTokenizerFile(provider), name=f"hf:{endpoint.model}")


def _llamacpp_counter(endpoint: ModelEndpoint) -> TokenCounter:
    from astromesh_ray.core.providers.openai import DEFAULT_ENDPOINTS

    return LlamaCppTokenCounter(
        endpoint.endpoint or DEFAULT_ENDPOINTS["llamacpp"],
        _timeout(endpoint),
        model=endpoint.model,
        api_key_env=endpoint.api_key_env,
        headers=header_option(endpoint.options),
    )


def _tgi_counter(endpoint: ModelEndpoint) -> TokenCounter:
    from astromesh_ray.core.providers.tgi import DEFAULT_ENDPOINT

    return TGITokenCounter(
        endpoint.endpoint or DEFAULT_ENDPOINT,
        _timeout(endpoint),
        api_key_env=endpoint.api_key_env,
        headers=header_option(endpoint.options),
    )


def _timeout(endpoint: ModelEndpoint) -> float:
    return min(endpoint.timeout_s or _TIMEOUT_S, _TIMEOUT_S)


# Provider kind -> the counter of its tokenizer; any other kind gets the estimate.
_COUNTERS: dict[str, Callable[[ModelEndpoint], TokenCounter]] = {
    "onnx": _onnx_counter,
    "llamacpp": _llamacpp_counter,
    "hf_tgi": _tgi_counter,
}


def token_counter(endpoint: ModelEndpoint) -> TokenCounter:
    """The counter matching ``endpoint``'s tokenizer (see the module); building it
    contacts nothing.  A counter that cannot be built (the ``onnx`` extra missing, a
    bad option) is the estimate, with a warning: the provider itself reports it."""
    make = _COUNTERS.get(endpoint.provider)
    if make is None:
        return EstimateTokenCounter()
    try:
        return make(endpoint)
    except AstromeshError as exc:  # ConfigError from the provider's own checks
        log.warning(
            "token counter for %s:%s: %s; estimating tokens instead",
            endpoint.provider,
            endpoint.model,
            exc,
        )
        return EstimateTokenCounter()
