"""``ScriptedServer``: the loopback machinery the scripted HTTP servers share.

A subclass supplies its Starlette routes and wire format; this base runs uvicorn on a
free 127.0.0.1 port in a daemon thread, holds the queue of scripted steps (validated
when added), and records what each request sent.

Imports neither Ray nor any vendor SDK; ``import astromesh_ray.testing`` does not
import this module (it pulls in uvicorn and starlette).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any, ClassVar, Self

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

__all__ = ["ScriptedServer"]


class ScriptedServer:
    """A loopback HTTP server that answers from a queue of scripted steps.

    Subclasses set the class attributes below and implement ``_routes()``; their
    handlers take steps with ``_await_step()`` and record bodies with ``_record()``.
    """

    # The server's name in error messages.
    _name: ClassVar[str] = "ScriptedServer"
    # The serving thread's name; ``{port}`` is replaced by the bound port.
    _thread_name: ClassVar[str] = "scripted-{port}"
    # Keys a step dict may have.
    _step_keys: ClassVar[frozenset[str]] = frozenset()
    # The key a bare ``str`` step stands for.
    _text_key: ClassVar[str] = "content"
    # A step needs at least one of these keys (in the order the error message names them).
    _answer_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, steps: Iterable[str | dict[str, Any]] = ()) -> None:
        self.requests: list[dict[str, Any]] = []
        self.request_headers: list[dict[str, str]] = []
        self._steps: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._served = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self.add_steps(*steps)

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL: the server root, ``http://127.0.0.1:<port>``."""
        if self._port is None:
            raise RuntimeError(f"{self._name} is not started")
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> Self:
        """Bind a free loopback port and serve in a daemon thread; returns self."""
        if self._thread is not None:
            return self
        # Bind the socket ourselves so the port is known before uvicorn starts.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        app = Starlette(routes=self._routes())
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            daemon=True,
            name=self._thread_name.format(port=self._port),
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self._name} failed to start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Shut the server down and wait for its thread."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            # Don't wait for in-flight (e.g. deliberately delayed) requests to finish.
            self._server.force_exit = True
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- script ------------------------------------------------------------------------

    def add_steps(self, *steps: str | dict[str, Any]) -> None:
        """Append steps; a typo in a step's keys fails here, not as a confusing reply."""
        normalized = [self._normalize(s) for s in steps]
        with self._lock:
            self._steps.extend(normalized)

    @property
    def remaining(self) -> int:
        """Steps not consumed yet."""
        with self._lock:
            return len(self._steps)

    def assert_consumed(self) -> None:
        """Fail if some scripted steps were never requested."""
        with self._lock:
            left = list(self._steps)
        if left:
            raise AssertionError(f"{self._name}: {len(left)} step(s) not consumed: {left}")

    def discard_remaining(self) -> int:
        """Drop the steps not consumed (a test that cannot know how many calls a
        limit lets through); returns how many there were."""
        with self._lock:
            left, self._steps[:] = len(self._steps), []
        return left

    def _normalize(self, step: str | dict[str, Any]) -> dict[str, Any]:
        if isinstance(step, str):
            return {self._text_key: step}
        unknown = set(step) - self._step_keys
        if unknown:
            valid = sorted(self._step_keys)
            raise ValueError(f"unknown step keys {sorted(unknown)}; valid: {valid}")
        if not (set(self._answer_keys) & set(step)):
            *first, last = (f"'{key}'" for key in self._answer_keys)
            needed = f"{', '.join(first)} or {last}" if first else last
            raise ValueError(f"a step needs {needed}: {step!r}")
        for call in step.get("tool_calls") or []:
            if "name" not in call:
                raise ValueError(f"a scripted tool call needs a 'name': {call!r}")
        return dict(step)

    def _next_step(self) -> dict[str, Any] | None:
        with self._lock:
            self._served += 1
            return self._steps.pop(0) if self._steps else None

    async def _await_step(self) -> dict[str, Any] | None:
        """The next step, after its ``delay_s``; ``None`` when the script is exhausted."""
        step = self._next_step()
        if step is not None and step.get("delay_s"):
            await asyncio.sleep(float(step["delay_s"]))
        return step

    def _exhausted(self) -> str:
        """The error message for a request the script has no step left for."""
        return f"{self._name}: script exhausted, unexpected request #{self._served}"

    # -- HTTP --------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        raise NotImplementedError

    def _record(self, request: Request, body: Any) -> None:
        """Keep a request's body and headers for the test to inspect."""
        with self._lock:
            self.requests.append(body)
            self.request_headers.append(dict(request.headers))
