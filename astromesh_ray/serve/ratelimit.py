"""Per-key rate limits counted cluster-wide: one named, detached Ray actor holds
every key's sliding window (``core/rate_window.py``); each gateway replica asks it
before a keyed request goes on.

The actor restarts when it dies (``max_restarts=-1``) with empty windows: a restart
forgives recent requests, it never refuses more.  When it cannot be reached in time
the request is refused with 503 (``RateLimiterUnavailable``), not let through
uncounted.
"""

from __future__ import annotations

from typing import Any

import ray

from astromesh_ray.core.rate_window import Admission, Windows
from astromesh_ray.errors import AstromeshError, RateLimited, RateLimiterUnavailable
from astromesh_ray.serve.actor_client import ACTOR_NAMESPACE, NamedActorClient
from astromesh_ray.serve.handles import describe
from astromesh_ray.serve.outcome import ok
from astromesh_ray.spec.auth import RateLimitSpec

ACTOR_NAME = "astromesh-rate-limits"
CALL_TIMEOUT_S = 5.0


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class RateLimitActor:
    """Every key's recent requests."""

    def __init__(self) -> None:
        self._windows = Windows()

    def hit(self, key: str, requests: int, window_s: float) -> dict[str, Any]:
        return ok(self._windows.hit(key, requests, window_s))


class RateLimiter(NamedActorClient):
    """A gateway replica's client of the rate-limit actor."""

    cancel_on_timeout = True

    def __init__(self, *, call_timeout_s: float = CALL_TIMEOUT_S) -> None:
        super().__init__(ACTOR_NAME, call_timeout_s)

    def _lookup(self) -> Any:
        return RateLimitActor.options(  # type: ignore[attr-defined]
            name=self.actor_name,
            namespace=ACTOR_NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
        ).remote()

    def _unavailable(self, exc: BaseException) -> AstromeshError:
        return RateLimiterUnavailable(
            f"the rate limiter is unavailable: {describe(exc)}",
            hint="it restarts by itself if it died; try again",
            retryable=True,
        )

    def _timed_out(self, method: str) -> AstromeshError:
        return RateLimiterUnavailable(
            f"the rate limiter did not answer within {self.call_timeout_s:g}s",
            hint="try again",
            retryable=True,
        )

    async def check(self, key_id: str, limit: RateLimitSpec) -> Admission:
        """Count one request of ``key_id``; ``RateLimited`` past its limit."""
        admission: Admission = await self._call("hit", key_id, limit.requests, limit.window_s)
        if not admission.allowed:
            retry = max(1, int(admission.retry_after_s + 0.999))
            raise RateLimited(
                f"API key {key_id!r} made {limit.requests} requests in {limit.window_s:g}s, "
                "its limit",
                hint=f"retry after {retry} s",
                key_id=key_id,
                limit=limit.requests,
                window_s=limit.window_s,
                retry_after_s=retry,
            )
        return admission
