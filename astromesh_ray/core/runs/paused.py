"""A paused run: what it needs to go on, and where it is kept.

A run pauses when the model calls a ``client`` tool (the caller runs it) or one
that ``requires_approval``.  The tool calls of that model answer that need nothing
from the caller have run; the run is saved with its transcript, steps, usage, model
call count and the pending calls, and the caller gets ``status: requires_action``.
The caller answers with tool results or decisions; the run is then taken out of
the store (once: a second answer finds nothing), the pending calls are completed,
and the pattern goes on from the saved transcript, on any replica.

Once the pending calls are completed, the run is saved again with nothing pending
(a checkpoint): if it then fails (its model down, a timeout, the replica lost), the
caller can retry it from there (``POST .../runs/{run_id}/retry``) without the
approved calls running again.  The checkpoint is removed when the run answers.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from astromesh_ray.core.context import Caller, RunRequest
from astromesh_ray.core.events import PendingToolCall, Step, _adapters
from astromesh_ray.core.messages import Message, Usage

PAUSED_TTL_S = 24 * 3600.0
"""How long a paused run waits for its caller before it is dropped."""


@dataclass(slots=True)
class PausedRun:
    """Everything a paused run needs to resume (JSON-able through ``to_dict``)."""

    run_id: str
    agent: str
    request: RunRequest
    messages: list[Message]
    steps: list[Step]
    usage: Usage
    iterations: int
    turn_start: int
    trace_id: str
    pending: list[PendingToolCall]
    created_at: float = field(default_factory=time.time)
    # The spans recorded before the pause (the resumed run's trace holds them too).
    spans: list[dict[str, Any]] = field(default_factory=list)
    # Why the resumed run stopped, for a checkpoint (nothing pending) it left.
    error: str | None = None

    @property
    def interrupted(self) -> bool:
        """Nothing is pending: the run's resume failed after its calls completed."""
        return not self.pending

    @property
    def caller(self) -> Caller:
        return self.request.caller

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "agent": self.agent,
            "request": self.request.to_dict(),
            "messages": [m.to_dict() for m in self.messages],
            "steps": _adapters().steps.dump_python(self.steps, mode="json"),
            "usage": self.usage.to_dict(),
            "iterations": self.iterations,
            "turn_start": self.turn_start,
            "trace_id": self.trace_id,
            "pending": [p.to_dict() for p in self.pending],
            "created_at": self.created_at,
            "spans": self.spans,
            "error": self.error,
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> PausedRun:
        usage = {k: v for k, v in dict(data.get("usage") or {}).items() if k != "total_tokens"}
        return PausedRun(
            run_id=str(data["run_id"]),
            agent=str(data["agent"]),
            request=RunRequest.from_dict(data["request"]),
            messages=[Message.from_dict(m) for m in data.get("messages") or []],
            steps=_adapters().steps.validate_python(data.get("steps") or []),
            usage=Usage(**usage),
            iterations=int(data.get("iterations") or 0),
            turn_start=int(data.get("turn_start") or 0),
            trace_id=str(data.get("trace_id") or ""),
            pending=[PendingToolCall.from_dict(p) for p in data.get("pending") or []],
            created_at=float(data.get("created_at") or 0.0),
            spans=list(data.get("spans") or []),
            error=data.get("error"),
        )


@dataclass(frozen=True, slots=True)
class ToolDecision:
    """The caller's answer for one pending call: a client tool's ``result`` (with
    ``is_error``), or an approval decision (``approve`` / ``reject``, with an
    optional ``reason`` the model reads)."""

    call_id: str
    action: Literal["result", "approve", "reject"]
    content: str = ""
    is_error: bool = False


class PausedRunStore(Protocol):
    """Paused runs by agent and run id.  Implementations sit next to each
    conversation store (``core/runs/stores.py``)."""

    async def save(self, agent: str, run: PausedRun, ttl_s: float = PAUSED_TTL_S) -> None:
        """Keep ``run`` (replacing one with its id) for ``ttl_s`` seconds."""
        ...

    async def get(self, agent: str, run_id: str) -> PausedRun | None:
        """The paused run, or ``None`` (unknown, resumed, or expired)."""
        ...

    async def take(self, agent: str, run_id: str) -> PausedRun | None:
        """Remove and return the paused run, atomically: of concurrent takes of one
        run, exactly one gets it."""
        ...

    async def aclose(self) -> None: ...
