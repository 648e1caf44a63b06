"""One JSON POST to an embeddings API: ``core/providers/http.py``'s ``post_json``,
failing with ``MemoryUnavailable`` (HTTP 503) naming the embedder, not
``ProviderError``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from astromesh_ray.core.providers import http
from astromesh_ray.core.providers.http import ClientPool
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
    """POST ``body`` to ``url`` and return the decoded JSON answer; whatever fails is
    ``MemoryUnavailable`` naming ``backend``."""
    return await http.post_json(
        pool,
        url,
        body,
        headers=headers,
        timeout_s=timeout_s,
        what=backend,
        fail=functools.partial(MemoryUnavailable, backend=backend),
        reach_hint=reach_hint,
        error_text=error_text,
        api_key_env=api_key_env,
        status_hints=status_hints,
    )
