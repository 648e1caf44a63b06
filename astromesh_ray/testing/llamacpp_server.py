"""``LlamaCppServer``: the real llama.cpp server (``llama-cpp-python[server]``) as a
context manager, for tests and demos of the ``llamacpp`` provider.

It runs ``python -m llama_cpp.server`` on a GGUF file in a child process bound to
127.0.0.1 on a free port, waits until ``GET /v1/models`` answers, and stops the
process on exit.  If the server dies or never answers, the error carries the tail of
its log, which is where llama.cpp says why (a bad GGUF key, a missing package, ...).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Self

import httpx

__all__ = ["LlamaCppServer", "LlamaCppServerError"]

_LOG_TAIL_CHARS = 3000


class LlamaCppServerError(RuntimeError):
    """The llama.cpp server could not be started; the message ends with its log tail."""


class LlamaCppServer:
    """The llama.cpp OpenAI-compatible server on one GGUF model, on loopback.

    ``chat_format`` is llama-cpp-python's chat handler; the default
    ``chatml-function-calling`` gives grammar-constrained native tool calls.
    ``model_alias`` is the model name the server reports (and the name to use in a
    provider's ``model``).  Kept light for shared CI machines: one thread, a small
    context, no GPU layers.
    """

    def __init__(
        self,
        model_path: Path | str,
        chat_format: str = "chatml-function-calling",
        *,
        model_alias: str = "tiny",
        n_ctx: int = 1024,
        n_threads: int = 1,
        startup_timeout_s: float = 60.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.model_path = Path(model_path)
        self.chat_format = chat_format
        self.model_alias = model_alias
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = list(extra_args)
        self.port: int | None = None
        self.startup_s: float | None = None  # how long the last start took
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the OpenAI API, ending in ``/v1``."""
        if self.port is None:
            raise RuntimeError("LlamaCppServer is not started")
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        """The command line that starts the server (``port`` must be chosen)."""
        return [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.model_path),
            "--model_alias",
            self.model_alias,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--chat_format",
            self.chat_format,
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            str(self.n_threads),
            "--n_threads_batch",
            str(self.n_threads),
            "--n_gpu_layers",
            "0",
            *self.extra_args,
        ]

    def start(self) -> Self:
        """Start the server and wait until it answers; raise ``LlamaCppServerError``
        (with the server's log tail) if it exits or does not answer in time."""
        if self._process is not None:
            raise RuntimeError("LlamaCppServer is already started")
        if not self.model_path.is_file():
            raise LlamaCppServerError(f"no GGUF model at {self.model_path}")
        self.port = _free_port()
        # A file, not a pipe: nobody reads the log while the server runs, and a full
        # pipe would block llama.cpp mid-request.  It lives until stop(), so no `with`.
        self._log = tempfile.TemporaryFile(prefix="llamacpp-server-")  # noqa: SIM115
        began = time.monotonic()
        self._process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            self._wait_ready(began)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Stop the server: terminate, then kill if it lingers.  Idempotent."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        """The end of the server's combined stdout and stderr so far."""
        if self._log is None:
            return ""
        self._log.flush()
        size = self._log.seek(0, os.SEEK_END)
        self._log.seek(max(0, size - chars))
        return self._log.read().decode("utf-8", errors="replace")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self, began: float) -> None:
        assert self._process is not None
        deadline = began + self.startup_timeout_s
        with httpx.Client(timeout=2.0) as client:
            while True:
                code = self._process.poll()
                if code is not None:
                    raise LlamaCppServerError(
                        f"llama.cpp server exited with code {code} while starting "
                        f"({' '.join(self.command())}); its log ends:\n{self.log_tail()}"
                    )
                # Not up yet: refused, reset mid-start, or the first request timed out.
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{self.url}/models").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise LlamaCppServerError(
                        f"llama.cpp server did not answer GET {self.url}/models within "
                        f"{self.startup_timeout_s:g}s; its log ends:\n{self.log_tail()}"
                    )
                time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
