"""A run's trace: timed spans of model calls, tool calls and router decisions.

Spans are plain dicts so a trace crosses HTTP and Ray unchanged; ``where`` records
the process (and, under Ray, the replica and node) a step ran on.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def local_location() -> dict[str, str]:
    """Where this process runs; the serve layer adds replica and node ids."""
    return {"host": socket.gethostname(), "pid": str(os.getpid())}


class Trace:
    """Spans in start order.  ``span()`` times a block and records its attributes."""

    def __init__(self, run_id: str, where: dict[str, str] | None = None) -> None:
        self.run_id = run_id
        self.where = dict(where or local_location())
        self._origin = time.perf_counter()
        self.spans: list[dict[str, Any]] = []

    @contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[dict[str, Any]]:
        """Record a span; the yielded dict can be filled with more attributes."""
        start = time.perf_counter()
        record: dict[str, Any] = {
            "name": name,
            "start_ms": round((start - self._origin) * 1000, 3),
            "duration_ms": None,
            "status": "ok",
            "where": dict(self.where),
            **attributes,
        }
        self.spans.append(record)
        try:
            yield record
        except BaseException as exc:
            record["status"] = "error"
            record["error"] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            record["duration_ms"] = round((time.perf_counter() - start) * 1000, 3)

    def to_list(self) -> list[dict[str, Any]]:
        return [dict(s) for s in self.spans]
