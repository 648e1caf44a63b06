"""Sliding-window request counting: at most ``requests`` per ``window_s`` per key.

Each key keeps the times of its admitted requests in the window (at most
``requests`` of them), so a refusal can say exactly when the next request fits
(``retry_after_s``).  One ``Windows`` lives in the rate-limit actor
(``serve/ratelimit.py``), which makes the count cluster-wide.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Admission:
    allowed: bool
    remaining: int
    retry_after_s: float


class Windows:
    """The recent requests of each key."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # key -> (its window, its admitted requests' times, oldest first)
        self._hits: dict[str, tuple[float, deque[float]]] = {}

    def __len__(self) -> int:
        return len(self._hits)

    def hit(self, key: str, requests: int, window_s: float) -> Admission:
        """Count one request of ``key`` if it fits in its window."""
        now = self._clock()
        self._forget_idle(now)
        hits = self._hits.setdefault(key, (window_s, deque()))[1]
        self._hits[key] = (window_s, hits)
        while hits and hits[0] <= now - window_s:
            hits.popleft()
        while len(hits) > requests:  # the limit was lowered: keep the newest
            hits.popleft()
        if len(hits) >= requests:
            return Admission(False, 0, max(hits[0] + window_s - now, 0.001))
        hits.append(now)
        return Admission(True, requests - len(hits), 0.0)

    def _forget_idle(self, now: float) -> None:
        # Bounded memory: a few keys at a time, oldest entry first, leave the table
        # when their newest request is out of their window (the others go back last).
        for _ in range(min(4, len(self._hits))):
            key = next(iter(self._hits))
            window_s, hits = self._hits.pop(key)
            if hits and hits[-1] > now - window_s:
                self._hits[key] = (window_s, hits)
