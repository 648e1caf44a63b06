"""A run's trace: spans with W3C ids and parents, ready for an OpenTelemetry exporter.

Every span has a 128-bit ``trace_id`` shared by the whole request, a 64-bit
``span_id`` and the ``parent_id`` of the span it belongs to.  The W3C
``traceparent`` of a span (``TraceContext.traceparent``) is what crosses a process
or Ray hop: the gateway passes its own to the agent, the model step passes the
model-call span's to the provider deployment, and a peer sub-run gets the span of
the call that started it, so every hop parents its spans on the caller's and the
client sees one tree.

Spans are small dataclasses while the run is going and plain dicts
(``Span.to_dict``) when they cross HTTP and Ray; ``where`` records the process
(and, under Ray, the replica and node) a span ran on.
"""

from __future__ import annotations

import os
import random
import re
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_INVALID_TRACE = "0" * 32
_INVALID_SPAN = "0" * 16
# Ids need uniqueness, not secrecy: a private generator seeded from os.urandom,
# reseeded in a forked child so two processes never draw the same ids.
_random = random.Random()

SpanStatus = Literal["ok", "error"]

os.register_at_fork(after_in_child=lambda: _forked())


def _read_location() -> dict[str, str]:
    return {"host": socket.gethostname(), "pid": str(os.getpid())}


_location = _read_location()


def _forked() -> None:
    global _location
    _location = _read_location()
    _random.seed()


def local_location() -> dict[str, str]:
    """Where this process runs; the serve layer adds replica and node ids."""
    return dict(_location)


def new_trace_id() -> str:
    """A random, valid (non-zero) W3C trace id: 32 lowercase hex digits."""
    return f"{_random.getrandbits(128) or 1:032x}"


def new_span_id() -> str:
    """A random, valid (non-zero) W3C span id: 16 lowercase hex digits."""
    return f"{_random.getrandbits(64) or 1:016x}"


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A position in a trace: the trace, and the span new work is parented on."""

    trace_id: str
    span_id: str
    sampled: bool = True

    @property
    def traceparent(self) -> str:
        """The W3C ``traceparent`` header value of this position."""
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    @staticmethod
    def parse(header: str | None) -> TraceContext | None:
        """A context from a ``traceparent`` value; ``None`` when absent or invalid
        (the W3C rule: an invalid header starts a new trace, it is not an error)."""
        if not header:
            return None
        match = _TRACEPARENT.match(header.strip().lower())
        if match is None:
            return None
        version, trace_id, span_id, flags = match.groups()
        if version == "ff" or trace_id == _INVALID_TRACE or span_id == _INVALID_SPAN:
            return None
        return TraceContext(trace_id, span_id, sampled=bool(int(flags, 16) & 1))

    @staticmethod
    def new() -> TraceContext:
        """The root of a new trace (its span id is the root span's)."""
        return TraceContext(new_trace_id(), new_span_id())


@dataclass(slots=True)
class Span:
    """One timed piece of work.  ``attributes`` say what it was (provider, model,
    tokens, tool, route, ...); ``where`` says where it ran."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    start_time: float  # Unix time, seconds
    where: Mapping[str, str]
    attributes: dict[str, Any] = field(default_factory=dict)
    duration_ms: float | None = None  # None while the span is open
    status: SpanStatus = "ok"
    error: str | None = None
    _started: float = field(default=0.0, repr=False)  # perf_counter at start
    sampled: bool = field(default=True, repr=False)  # the W3C flag, passed on as received

    @property
    def context(self) -> TraceContext:
        """The position under this span (for work it starts elsewhere)."""
        return TraceContext(self.trace_id, self.span_id, self.sampled)

    def set(self, **attributes: Any) -> None:
        """Add attributes."""
        self.attributes.update(attributes)

    def locate(self, where: Mapping[str, str]) -> None:
        """Record that the work ran (also) at ``where`` (e.g. a provider replica)."""
        self.where = {**self.where, **where}

    def end(self, error: BaseException | str | None = None) -> None:
        """Close the span (idempotent); ``error`` marks it failed."""
        if self.duration_ms is None:
            self.duration_ms = round((time.perf_counter() - self._started) * 1000, 3)
        if error is not None:
            self.status = "error"
            self.error = (
                error if isinstance(error, str) else f"{type(error).__name__}: {error}"[:500]
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_id": self.parent_id,
            "start_time": self.start_time,
            "duration_ms": self.duration_ms,
            "status": self.status,
            "error": self.error,
            "where": dict(self.where),
            "attributes": dict(self.attributes),
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Span:
        return Span(
            name=str(data["name"]),
            trace_id=str(data["trace_id"]),
            span_id=str(data["span_id"]),
            parent_id=data.get("parent_id"),
            start_time=float(data["start_time"]),
            where=dict(data.get("where") or {}),
            attributes=dict(data.get("attributes") or {}),
            duration_ms=data.get("duration_ms"),
            status="error" if data.get("status") == "error" else "ok",
            error=data.get("error"),
        )


def child_span(
    trace_parent: str | None, name: str, where: Mapping[str, str], **attributes: Any
) -> Span | None:
    """A span parented on a W3C ``traceparent`` received from another process (a
    provider replica answering a model call); ``None`` without a valid parent."""
    parent = TraceContext.parse(trace_parent)
    if parent is None:
        return None
    return Span(
        name=name,
        trace_id=parent.trace_id,
        span_id=new_span_id(),
        parent_id=parent.span_id,
        start_time=time.time(),
        where=where,
        attributes=attributes,
        _started=time.perf_counter(),
        sampled=parent.sampled,
    )


class Trace:
    """The spans of one run, in start order, under one trace id."""

    __slots__ = ("sampled", "spans", "trace_id", "where")

    def __init__(
        self, trace_id: str, where: Mapping[str, str] | None = None, *, sampled: bool = True
    ) -> None:
        self.trace_id = trace_id
        self.sampled = sampled
        # Read-only: a span that ran elsewhere gets a new mapping (Span.locate).
        self.where: Mapping[str, str] = where or _location
        self.spans: list[Span] = []

    def start(self, name: str, parent: str | None, **attributes: Any) -> Span:
        """Open and record a span under ``parent``; close it with ``Span.end``."""
        span = Span(
            name=name,
            trace_id=self.trace_id,
            span_id=new_span_id(),
            parent_id=parent,
            start_time=time.time(),
            where=self.where,
            attributes=attributes,
            _started=time.perf_counter(),
            sampled=self.sampled,
        )
        self.spans.append(span)
        return span

    def extend(self, spans: Iterable[Span | Mapping[str, Any]]) -> None:
        """Add spans recorded elsewhere (a provider replica, a peer's sub-run)."""
        for span in spans:
            self.spans.append(span if isinstance(span, Span) else Span.from_dict(span))
