"""Our provider calls over Ray's ``LLMServer``: what is specific to calling it in process.

``serve/vllm.py`` deploys in-cluster vLLM as Ray's ``LLMServer`` with
``ProviderMethods`` mixed in, so the agent's ``ServeProvider`` calls ``complete`` /
``stream`` / ``health`` on plain dicts as with every provider deployment.  The OpenAI
chat wire format both ways is ``core/providers/openai_wire.py``, the very code
``OpenAIProvider`` speaks to a vLLM server over HTTP; here is only what differs in
process: the body becomes vLLM's ``ChatCompletionRequest`` (``make_request``), answers
are pydantic objects (dumped to dicts), a stream arrives as batches of SSE strings
(``stream_chunks``), and engine failures and timeouts become ``ProviderError``s.

Nothing here imports vLLM: the request model is injected (``make_request``), so the
whole path is testable without it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from astromesh_ray.core.messages import CompletionChunk, CompletionRequest
from astromesh_ray.core.providers.http import sse_data
from astromesh_ray.core.providers.openai_wire import OpenAIChatWire, OpenAIStreamDecoder
from astromesh_ray.core.trace import child_span
from astromesh_ray.errors import AstromeshError, ProviderError
from astromesh_ray.serve.location import replica_location
from astromesh_ray.serve.outcome import failure, ok

__all__ = ["ChatFn", "ProviderMethods", "VLLMChatAdapter", "stream_chunks"]


def _plain(item: Any) -> Any:
    # vLLM's response models are pydantic; dicts and SSE strings pass through.
    dump = getattr(item, "model_dump", None)
    return dump() if callable(dump) else item


def stream_chunks(decoder: OpenAIStreamDecoder, item: Any) -> list[CompletionChunk]:
    """The chunks in one item ``LLMServer.chat`` streams: Ray batches vLLM's
    server-sent events into lists of ``"data: {...}\\n\\n"`` strings, and an item may
    also be a response or error object.  An error event raises ``ProviderError``."""
    item = _plain(item)
    if isinstance(item, list):
        return [chunk for part in item for chunk in stream_chunks(decoder, part)]
    if isinstance(item, str):
        payloads = (sse_data(line) for line in item.splitlines())
        found = [decoder.decode(p) for p in payloads if p and p != "[DONE]"]
    elif isinstance(item, Mapping):
        found = [decoder.feed(item)]
    else:
        raise decoder.wire.malformed(f"unexpected stream item {type(item).__name__}")
    return [chunk for chunk in found if chunk is not None]


# -- the replica side ---------------------------------------------------------------

ChatFn = Callable[[Any], Any]
"""``LLMServer.chat``: takes a ``ChatCompletionRequest``, returns (an awaitable of) an
async iterator of responses, SSE strings or batches of them."""


@dataclass
class VLLMChatAdapter:
    """Our provider protocol (``complete`` / ``stream`` / ``health`` on dicts, errors
    as outcome values) over an ``LLMServer``'s ``chat``.

    ``make_request`` builds vLLM's ``ChatCompletionRequest`` from the wire body's
    dict; it is injected so this class (and its tests) need no vLLM.  A request's
    ``response_schema`` reaches vLLM as OpenAI's ``response_format`` (``json_schema``),
    which ``ChatCompletionRequest`` takes for constrained decoding.
    """

    name: str
    model_id: str
    chat: ChatFn
    make_request: Callable[[dict[str, Any]], Any]
    check_health: Callable[[], Awaitable[Any]]
    timeout_s: float | None = None
    where: dict[str, str] | None = None
    wire: OpenAIChatWire = field(init=False)

    def __post_init__(self) -> None:
        self.wire = OpenAIChatWire(name=self.name, model=self.model_id, source="vLLM")

    async def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        """One whole answer, as ``ok(Completion.to_dict())`` or a failure outcome."""
        try:
            ask = CompletionRequest.from_dict(request)
            span = child_span(ask.trace_parent, "provider.complete", self.where or {})
            body = self.wire.body(ask, stream=False)
            async with asyncio.timeout(self.timeout_s):
                items = [item async for item in self._items(body)]
            if not items:
                raise self.wire.malformed("no response")
            completion = self.wire.completion(_plain(items[0]), ask)
        except TimeoutError:
            return failure(self._timed_out())
        except Exception as exc:  # the edge of the replica: a bug leaves as a RunError
            return failure(exc)
        completion.location.update(self.where or {})
        if span is not None:
            span.end()
            completion.spans.append(span.to_dict())
        return ok(completion.to_dict())

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Deltas as they come, then the last chunk; a failure ends the stream."""
        try:
            ask = CompletionRequest.from_dict(request)
            span = child_span(ask.trace_parent, "provider.stream", self.where or {})
            decoder = self.wire.decoder(ask)
            items = self._items(self.wire.body(ask, stream=True)).__aiter__()
            while True:
                try:
                    # The timeout bounds each wait (first token, then between tokens),
                    # as an HTTP client's read timeout would.
                    item = await asyncio.wait_for(items.__anext__(), self.timeout_s)
                except StopAsyncIteration:
                    break
                for chunk in stream_chunks(decoder, item):
                    yield ok(chunk.to_dict())
            last = decoder.finish()
            last.location.update(self.where or {})  # where the model ran, for the trace
            if span is not None:
                span.end()
                last.spans.append(span.to_dict())
            yield ok(last.to_dict())
        except TimeoutError:
            yield failure(self._timed_out())
        except Exception as exc:  # the edge of the replica: a bug leaves as a RunError
            yield failure(exc)

    async def health(self) -> bool:
        """Whether the engine answers its health check; never raises."""
        try:
            await self.check_health()
        except Exception:  # a probe: any failure just means "not healthy"
            return False
        return True

    async def _items(self, body: dict[str, Any]) -> AsyncIterator[Any]:
        """What the engine answers for ``body``; whatever the engine raises is a
        ``ProviderError`` (our own code around it is not wrapped: its bugs surface)."""
        try:
            request = self.make_request(body)
        except ValueError as exc:  # pydantic: a parameter vLLM does not accept
            raise ProviderError(
                f"{self.name}: vLLM refused the request: {exc}",
                hint="check the model block's parameters",
                provider=self.name,
                status=400,
                retryable=False,
            ) from None
        try:
            result = self.chat(request)
            if inspect.isawaitable(result):
                result = await result
            if not hasattr(result, "__aiter__"):
                yield result
                return
            async for item in result:
                yield item
        except (AstromeshError, TimeoutError):
            raise
        except Exception as exc:  # the engine failed (died, out of memory, ...)
            raise ProviderError(
                f"{self.name}: vLLM engine error: {type(exc).__name__}: {exc}",
                provider=self.name,
                status=None,
                retryable=True,  # another replica may not fail
            ) from exc

    def _timed_out(self) -> ProviderError:
        return ProviderError(
            f"{self.name}: no answer from vLLM within {self.timeout_s or 0:g}s",
            hint="raise the model block's timeout, or add replicas",
            provider=self.name,
            status=None,
            retryable=True,
        )


class ProviderMethods:
    """``complete`` / ``stream`` / ``health``, as ``ProviderDeployment`` has them, for
    a class with ``LLMServer``'s ``chat`` and ``check_health`` (mixed in first; it
    defines neither, so it shadows nothing of ``LLMServer``)."""

    _astromesh: VLLMChatAdapter

    def init_provider_methods(
        self, settings: Mapping[str, Any], make_request: Callable[[dict[str, Any]], Any]
    ) -> None:
        """Wire the methods to this server's ``chat``; ``settings`` are ``vllm_app``'s
        ``name``, ``model_id`` and ``timeout_s``."""
        self._astromesh = VLLMChatAdapter(
            name=str(settings["name"]),
            model_id=str(settings["model_id"]),
            timeout_s=settings.get("timeout_s"),
            chat=getattr(self, "chat"),  # noqa: B009 - provided by the server class
            make_request=make_request,
            check_health=getattr(self, "check_health"),  # noqa: B009
            where=replica_location(),
        )

    async def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        """One whole answer as an outcome (see ``VLLMChatAdapter.complete``)."""
        return await self._astromesh.complete(request)

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Chunks as outcomes (see ``VLLMChatAdapter.stream``)."""
        async for outcome in self._astromesh.stream(request):
            yield outcome

    async def health(self) -> bool:
        """Whether the engine is healthy; never raises."""
        return await self._astromesh.health()
