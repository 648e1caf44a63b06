"""``FlakyProxy``: a raw asyncio HTTP/1.1 proxy on loopback that drops connections.

It stands in front of a scripted server (``ScriptedOpenAIServer``, ...), reads each
request of each keep-alive connection and, by its plan, resets the connection (RST),
closes it without answering (FIN), cuts the answer halfway, or forwards the request
and answers with the upstream's response (whole, with a ``Content-Length``, keeping
the connection alive).  It also counts connections: how many were opened, and how
many were open at once.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterable
from typing import Literal, Self

import httpx

Action = Literal["pass", "reset", "close", "cut"]

__all__ = ["Action", "FlakyProxy"]


class FlakyProxy:
    """A loopback proxy to ``upstream`` (a server root URL) that answers the n-th
    request by the n-th action of ``plan`` (then ``pass`` once it runs out):

    - ``pass``: forward the request and send back the upstream's whole answer;
    - ``reset``: read the request, then reset the connection (the client reads
      ``ECONNRESET``);
    - ``close``: read the request, then close the connection without a word;
    - ``cut``: forward, send the answer's head and half its body, then reset.

    ``requests`` records ``(connection number, action)`` per request; ``connections``
    counts connections opened, ``max_open`` the most open at once.
    """

    def __init__(self, upstream: str, plan: Iterable[Action] = ()) -> None:
        self.upstream = upstream.rstrip("/")
        self.plan: list[Action] = list(plan)
        self.requests: list[tuple[int, Action]] = []
        self.connections = 0
        self.max_open = 0
        self._open = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._client: httpx.AsyncClient | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The proxy's root URL (``http://127.0.0.1:<port>``)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add(self, *actions: Action) -> None:
        """Append actions to the plan."""
        with self._lock:
            self.plan.extend(actions)

    async def _start(self) -> None:
        self._client = httpx.AsyncClient(timeout=30)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._client is not None:
            await self._client.aclose()

    def _next(self, connection: int) -> Action:
        with self._lock:
            action: Action = self.plan.pop(0) if self.plan else "pass"
            self.requests.append((connection, action))
            return action

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
            number = self.connections
            self._open += 1
            self.max_open = max(self.max_open, self._open)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return  # the client closed its (idle) connection
                action = self._next(number)
                if action == "reset":
                    _reset(writer)
                    return
                if action == "close":
                    return
                answer = await self._forward(*request)
                if action == "cut":
                    body_at = answer.index(b"\r\n\r\n") + 4
                    writer.write(answer[: body_at + (len(answer) - body_at) // 2])
                    await writer.drain()
                    _reset(writer)
                    return
                writer.write(answer)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            with self._lock:
                self._open -= 1
            if not writer.is_closing():
                writer.close()

    async def _forward(self, head: list[str], body: bytes) -> bytes:
        assert self._client is not None
        method, target, _ = head[0].split(" ", 2)
        headers = [tuple(line.split(":", 1)) for line in head[1:]]
        sent = {k.strip(): v.strip() for k, v in headers if k.strip().lower() not in _HOP}
        response = await self._client.request(
            method, self.upstream + target, headers=sent, content=body
        )
        lines = [f"HTTP/1.1 {response.status_code} {response.reason_phrase}"]
        lines += [f"{k}: {v}" for k, v in response.headers.items() if k.lower() not in _HOP]
        lines.append(f"content-length: {len(response.content)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.content


# Per-connection headers, and the length the proxy recomputes.
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


async def _read_request(reader: asyncio.StreamReader) -> tuple[list[str], bytes] | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    head = raw.decode("latin-1").rstrip("\r\n").split("\r\n")
    length = 0
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return head, await reader.readexactly(length)


def _reset(writer: asyncio.StreamWriter) -> None:
    # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
    sock: socket.socket = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
