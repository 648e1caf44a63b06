"""One JSON POST to an embeddings API, with the providers' HTTP plumbing.

The pooled client, the transport and status wording come from
``core/providers/http.py``; what differs here is the error type: an embedder that
fails raises ``MemoryUnavailable`` (HTTP 503), not ``ProviderError``.  Embedding is
idempotent, so a connection the server dropped under us (a stale keep-alive) is
retried once on a fresh one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import httpx

from astromesh_ray.core.providers.http import (
    ClientPool,
    auth_hint,
    backend_message,
    connection_lost,
    retryable_status,
    status_message,
    transport_message,
)
from astromesh_ray.errors import MemoryUnavailable

__all__ = ["post_json"]


async def post_json(
    pool: ClientPool,
    url: str,
    body: Mapping[str, Any],
    *,
    headers: Mapping[str, str],
    timeout_s: float,
    backend: str,
    reach_hint: str,
    error_text: Callable[[dict[str, Any]], str | None],
    api_key_env: str | None = None,
    status_hints: Mapping[int, str] | None = None,
) -> Any:
    """POST ``body`` to ``url`` and return the decoded JSON answer.

    Unreachable, an HTTP error (its message picked by ``error_text``) or a body that
    is not JSON: ``MemoryUnavailable`` naming ``backend``, with ``status_hints``'s
    hint for its status (401 and 403 name ``api_key_env``).
    """
    for attempt in (1, 2):
        try:
            response = await pool.client(timeout_s).post(url, json=body, headers=dict(headers))
            break
        except httpx.TransportError as exc:
            if attempt == 1 and connection_lost(exc):
                continue
            raise MemoryUnavailable(
                f"{backend}: {transport_message(exc, url, timeout_s)}",
                hint=reach_hint,
                backend=backend,
                retryable=True,
            ) from exc
    if response.status_code >= 400:
        status = response.status_code
        detail = backend_message(response.content, error_text)
        hint = (status_hints or {}).get(status)
        if hint is None and status in (401, 403):
            hint = auth_hint(api_key_env)
        raise MemoryUnavailable(
            f"{backend}: {status_message(status, url, detail)}",
            hint=hint,
            backend=backend,
            status=status,
            retryable=retryable_status(status),
        )
    try:
        return response.json()
    except ValueError:
        raise MemoryUnavailable(
            f"{backend}: {url} answered something that is not JSON: {response.text[:200]!r}",
            backend=backend,
            retryable=False,
        ) from None
