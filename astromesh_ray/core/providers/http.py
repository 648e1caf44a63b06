"""Plumbing shared by the HTTP providers (OpenAI-compatible, Ollama, TGI).

Plain functions plus ``ClientPool``, used by composition: each provider keeps its
own endpoints, wire format, hints and error wording, and takes only the pieces
whose behaviour is the same everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from astromesh_ray.errors import AstromeshError, ConfigError

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "ClientPool",
    "api_key",
    "auth_hint",
    "backend_message",
    "bearer_headers",
    "check_options",
    "connection_lost",
    "estimate_tokens",
    "header_option",
    "post_json",
    "retryable_status",
    "sse_data",
    "status_message",
    "transport_message",
]

# Connections a provider keeps to its backend when nothing says otherwise: the
# concurrency of one provider deployment replica (ProviderDeployment's
# max_ongoing_requests), so a replica never waits for, or churns, connections.
DEFAULT_MAX_CONNECTIONS = 100

_RETRYABLE_STATUS = frozenset({408, 409, 429})
# The peer dropped a connection we were using: a keep-alive connection the server had
# just closed, or a reset.  Worth one immediate retry on a fresh connection; refused
# connections (the server is down) and timeouts (it is slow) are not.
_CONNECTION_LOST = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


class ClientPool:
    """One pooled ``httpx.AsyncClient`` per event loop, of ``max_connections``
    connections, all of which stay open (keep-alive) between calls.

    A client is bound to the loop it first ran on; ``asyncio.run()`` per call or a
    replica restarting its loop needs a fresh one.  Live clients cannot cross
    processes (Ray pickles providers into replicas), so pickling drops the client.
    """

    def __init__(self, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        self.max_connections = max_connections
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_loop": None}

    def client(self, timeout_s: float) -> httpx.AsyncClient:
        """The running loop's client, opened on first use with ``timeout_s``."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop or self._client.is_closed:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
                # As many idle connections kept as may be open: under full load every
                # call finds one, instead of opening (and closing) a new one.
                limits=httpx.Limits(
                    max_connections=self.max_connections,
                    max_keepalive_connections=self.max_connections,
                ),
            )
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        """Close the pooled client (a later call opens a new one)."""
        client, self._client, self._loop = self._client, None, None
        if client is not None:
            # RuntimeError: its event loop is gone, and the sockets went with it.
            with contextlib.suppress(RuntimeError):
                await client.aclose()


def check_options(
    name: str, kind: str, options: Mapping[str, Any], valid: Mapping[str, str]
) -> None:
    """Refuse ``options:`` keys outside ``valid`` (name -> description), listing them."""
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"{name}: unknown options {', '.join(map(repr, unknown))} for provider {kind!r}",
            hint="valid options: " + ", ".join(f"{k} ({v})" for k, v in valid.items()),
        )


def header_option(options: Mapping[str, Any]) -> dict[str, str]:
    """The ``headers`` option as a ``str -> str`` mapping (empty when not given)."""
    return {str(k): str(v) for k, v in dict(options.get("headers") or {}).items()}


def api_key(api_key_env: str | None) -> str | None:
    """The key in the variable ``api_key_env``, read now so rotating it needs no restart."""
    return os.environ.get(api_key_env) if api_key_env else None


def bearer_headers(extra: Mapping[str, str], api_key_env: str | None) -> dict[str, str]:
    """``extra`` plus ``Authorization: Bearer <key>`` when ``api_key_env`` is set."""
    headers = dict(extra)
    if key := api_key(api_key_env):
        headers["Authorization"] = f"Bearer {key}"
    return headers


def transport_message(exc: httpx.TransportError, url: str, timeout_s: float) -> str:
    """What went wrong reaching ``url``: a timeout, a dropped connection or a
    connection failure."""
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer from {url} within {timeout_s:g}s ({type(exc).__name__})"
    why = str(exc) or type(exc).__name__
    if connection_lost(exc):
        return f"connection to {url} lost: {why}"
    return f"cannot reach {url}: {why}"


def connection_lost(exc: httpx.TransportError) -> bool:
    """Whether ``exc`` means the peer dropped a connection in use (closed or reset it:
    ``ReadError``, ``WriteError``, ``RemoteProtocolError``), worth one immediate retry.

    Not a refused connection (``ConnectError``: nothing listens) nor a timeout.
    """
    return isinstance(exc, _CONNECTION_LOST)


def estimate_tokens(text: str) -> int:
    """Tokens in ``text`` when the backend does not count them: BPE vocabularies
    average about 4 characters a token on English text."""
    return math.ceil(len(text) / 4)


def status_message(status: int, url: str, detail: str) -> str:
    """``HTTP <status> from <url>``, with the backend's own message when it gave one."""
    return f"HTTP {status} from {url}" + (f": {detail}" if detail else "")


def retryable_status(status: int, also: frozenset[int] = frozenset()) -> bool:
    """Whether an HTTP status says "try again": 408, 409, 429, 5xx and ``also``."""
    return status in _RETRYABLE_STATUS or status in also or status >= 500


def auth_hint(api_key_env: str | None, *, credential: str = "API key", article: str = "an") -> str:
    """The hint for a 401/403: name the variable to set, or the one to check."""
    if api_key_env is None:
        return (
            f"the server wants {article} {credential}: set api_key_env to the variable holding it"
        )
    if not os.environ.get(api_key_env):
        return f"set {api_key_env}"
    return f"check the {credential} in {api_key_env}"


def backend_message(content: bytes, pick: Callable[[dict[str, Any]], str | None]) -> str:
    """The backend's error text: ``pick`` from its JSON object, else the raw body (cut)."""
    text = content.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:300]
    if isinstance(data, dict) and (found := pick(data)) is not None:
        return found
    return text[:300]


def sse_data(line: str) -> str | None:
    """The payload of an SSE ``data:`` line; None for any other line."""
    # Only "data:" fields matter; blank lines, comments (":") and event names do not.
    if not line.startswith("data:"):
        return None
    return line[5:].strip()


# Builds the caller's own error: ``fail(message, hint=..., status=..., retryable=...)``.
Failure = Callable[..., AstromeshError]


async def post_json(
    pool: ClientPool,
    url: str,
    body: Mapping[str, Any],
    *,
    headers: Mapping[str, str],
    timeout_s: float,
    what: str,
    fail: Failure,
    reach_hint: str,
    error_text: Callable[[dict[str, Any]], str | None],
    api_key_env: str | None = None,
    status_hints: Mapping[int, str] | None = None,
) -> Any:
    """POST ``body`` to ``url`` and return the decoded JSON answer, for a call that
    is idempotent (an embedding, a moderation): a connection the server dropped
    under us (a stale keep-alive) is retried once on a fresh one.

    Unreachable, an HTTP error (its message picked by ``error_text``) or a body that
    is not JSON: the error ``fail`` builds, its message starting with ``what``, with
    ``status_hints``'s hint for its status (401 and 403 name ``api_key_env``).
    """
    for attempt in (1, 2):
        try:
            response = await pool.client(timeout_s).post(url, json=body, headers=dict(headers))
            break
        except httpx.TransportError as exc:
            if attempt == 1 and connection_lost(exc):
                continue
            raise fail(
                f"{what}: {transport_message(exc, url, timeout_s)}",
                hint=reach_hint,
                retryable=True,
            ) from exc
    if response.status_code >= 400:
        status = response.status_code
        detail = backend_message(response.content, error_text)
        hint = (status_hints or {}).get(status)
        if hint is None and status in (401, 403):
            hint = auth_hint(api_key_env)
        raise fail(
            f"{what}: {status_message(status, url, detail)}",
            hint=hint,
            status=status,
            retryable=retryable_status(status),
        )
    try:
        return response.json()
    except ValueError:
        raise fail(
            f"{what}: {url} answered something that is not JSON: {response.text[:200]!r}",
            retryable=False,
        ) from None
