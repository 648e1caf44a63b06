"""Errors cross actor boundaries as values (DESIGN.md §5).

A deployment method returns ``{"ok": value}`` or ``{"error": {...}}``; the caller
``unwrap``s it and re-raises the error as its own ``AstromeshError`` subclass, with
its hint and details intact (Ray's own exception wrapping would lose them).
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from astromesh_ray.errors import AstromeshError, RunError

log = logging.getLogger("astromesh")


def ok(value: Any) -> dict[str, Any]:
    return {"ok": value}


def failure(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, AstromeshError):
        return {"error": exc.to_dict()}
    # An unexpected exception is a bug: the client gets its type and message; where
    # it happened (server file paths) goes to the server log only.
    message = f"internal error: {type(exc).__name__}: {exc}"
    frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" at {frame[0].filename}:{frame[0].lineno}" if frame else ""
    log.error("%s%s", message, where, exc_info=exc)
    return {"error": RunError(message).to_dict()}


def unwrap(outcome: dict[str, Any]) -> Any:
    if "error" in outcome:
        raise AstromeshError.from_dict(outcome["error"])
    return outcome["ok"]
