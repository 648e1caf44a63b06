"""A loopback HTTP server for the webhook and http_request tests: echoes what it
received, fails on demand, answers slowly or hugely."""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

zstandard: Any
try:
    import zstandard
except ImportError:  # pragma: no cover - the zstd test is skipped then
    zstandard = None


class HookServer:
    """Routes: ``/echo/...`` (method, path, query, headers, JSON body back),
    ``/flaky/{key}?fail=N`` (503 for the first N calls per key), ``/big?size=N``
    (N bytes, ``chunked=1`` without a Content-Length), ``/slow?s=S``,
    ``/missing`` (404), ``/text``, ``/binary``, ``/redirect?to=URL&code=302``,
    ``/redirect_drip?to=URL`` (a 302 with a slow endless-looking body),
    ``/encoded?enc=gzip,gzip&size=N`` (compressed whatever was asked),
    ``/deep?n=N`` (JSON nested N deep), ``/`` (echo)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HookServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        app = Starlette(routes=self._routes())
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("HookServer failed to start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._server.force_exit = True
            self._thread.join(timeout=10)

    def __enter__(self) -> HookServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _record(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        seen = {
            "method": request.method,
            "path": request.url.path,
            "raw_path": request.scope["raw_path"].decode(),
            "query": list(request.query_params.multi_items()),
            "headers": dict(request.headers),
            "body": raw.decode("utf-8", "replace"),
        }
        with self._lock:
            self.requests.append(seen)
            self.calls[request.url.path] += 1
        return seen

    def count(self, path: str) -> int:
        with self._lock:
            return self.calls[path]

    def _routes(self) -> list[Route]:
        async def echo(request: Request) -> Response:
            seen = await self._record(request)
            return JSONResponse(seen)

        async def flaky(request: Request) -> Response:
            await self._record(request)
            fail = int(request.query_params.get("fail", "2"))
            if self.count(request.url.path) <= fail:
                return PlainTextResponse("try later", status_code=503)
            return JSONResponse({"ok": True, "calls": self.count(request.url.path)})

        async def big(request: Request) -> Response:
            await self._record(request)
            size = int(request.query_params.get("size", "50000"))
            if request.query_params.get("chunked"):

                async def chunks() -> AsyncIterator[bytes]:
                    for _ in range(size // 1000):
                        yield b"x" * 1000

                return StreamingResponse(chunks(), media_type="text/plain")
            return PlainTextResponse("x" * size)

        async def slow(request: Request) -> Response:
            await self._record(request)
            await asyncio.sleep(float(request.query_params.get("s", "5")))
            return PlainTextResponse("finally")

        async def missing(request: Request) -> Response:
            await self._record(request)
            return PlainTextResponse("no such thing\n  here", status_code=404)

        async def text(request: Request) -> Response:
            await self._record(request)
            return PlainTextResponse("plain words")

        async def binary(request: Request) -> Response:
            await self._record(request)
            return Response(b"\x89PNG\r\n\x1a\n" + bytes(92), media_type="image/png")

        async def redirect(request: Request) -> Response:
            await self._record(request)
            code = int(request.query_params.get("code", "302"))
            return Response(status_code=code, headers={"location": request.query_params["to"]})

        async def redirect_drip(request: Request) -> Response:
            # A redirect whose body trickles for a long time: a client that reads it
            # before following the redirect waits (and buffers) all along.
            await self._record(request)

            async def drip() -> AsyncIterator[bytes]:
                for _ in range(600):
                    yield b"r" * 1000
                    await asyncio.sleep(0.05)

            return StreamingResponse(
                drip(), status_code=302, headers={"location": request.query_params["to"]}
            )

        async def encoded(request: Request) -> Response:
            # ``x`` * size, compressed by each of ``enc`` (comma-separated, applied
            # in order), sent with that Content-Encoding whatever the client asked for.
            await self._record(request)
            body = b"x" * int(request.query_params.get("size", "1000"))
            layers = [e.strip() for e in request.query_params.get("enc", "gzip").split(",")]
            for layer in layers:
                if layer == "gzip":
                    body = gzip.compress(body)
                elif layer == "deflate":
                    body = zlib.compress(body)
                elif layer == "zstd":
                    body = zstandard.ZstdCompressor().compress(body)
            headers = {"content-encoding": ", ".join(layers)}
            return Response(body, media_type="text/plain", headers=headers)

        async def deep(request: Request) -> Response:
            await self._record(request)
            depth = int(request.query_params.get("n", "100000"))
            return Response(b"[" * depth + b"]" * depth, media_type="application/json")

        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        return [
            Route("/echo/{rest:path}", echo, methods=methods),
            Route("/flaky/{key}", flaky, methods=methods),
            Route("/big", big),
            Route("/slow", slow),
            Route("/missing", missing),
            Route("/text", text),
            Route("/binary", binary),
            Route("/redirect", redirect, methods=methods),
            Route("/redirect_drip", redirect_drip),
            Route("/encoded", encoded),
            Route("/deep", deep),
            Route("/", echo),
        ]
