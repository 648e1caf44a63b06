"""What every conversational backend shares: the JSON codec of a stored turn, the
checks on arguments, the window of turns ``history`` returns, and expiry.

A turn is stored as one JSON text (its run id, messages, creation time and meta)
next to its ``seq``, which each backend keeps in its own column or list position:
so the stored text is the same on every backend, and a reader never has to trust a
``seq`` written inside it.
"""

from __future__ import annotations

import json
import math
from typing import Any

from astromesh_ray.core.memory.base import NewTurn, SessionKey, StoredTurn, Summary
from astromesh_ray.core.messages import Message
from astromesh_ray.errors import InvalidRequest

MAX_NAME_CHARS = 512
"""Longest namespace, agent, session or run id accepted (they are parts of keys)."""


def check_key(key: SessionKey) -> None:
    """Refuse a key whose parts cannot name a session on every backend."""
    for part, value in (
        ("namespace", key.namespace),
        ("agent", key.agent),
        ("session", key.session),
    ):
        _check_name(part, value)


def _check_name(what: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > MAX_NAME_CHARS:
        raise InvalidRequest(f"{what} is longer than {MAX_NAME_CHARS} characters")
    # PostgreSQL text cannot hold NUL; refusing it everywhere keeps backends alike.
    if "\x00" in value:
        raise InvalidRequest(f"{what} must not contain NUL characters")


def check_ttl(ttl_s: int | None) -> None:
    """Refuse a session lifetime that is not a positive number of seconds."""
    if ttl_s is not None and (isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or ttl_s <= 0):
        raise InvalidRequest(f"ttl_s must be a positive integer or None, got {ttl_s!r}")


def check_window(last: int | None, after: int) -> None:
    """Refuse a ``history`` window that cannot select anything sensible."""
    if last is not None and (not isinstance(last, int) or last < 0):
        raise InvalidRequest(f"last must be a non-negative integer or None, got {last!r}")
    if not isinstance(after, int) or after < 0:
        raise InvalidRequest(f"after must be a non-negative integer, got {after!r}")


def check_page(limit: int, offset: int) -> None:
    """Refuse a ``sessions`` page with a negative size or start."""
    if not isinstance(limit, int) or limit < 0:
        raise InvalidRequest(f"limit must be a non-negative integer, got {limit!r}")
    if not isinstance(offset, int) or offset < 0:
        raise InvalidRequest(f"offset must be a non-negative integer, got {offset!r}")


def check_prefix(prefix: str | None) -> None:
    """Refuse a ``sessions`` prefix that no session id could start with (an empty one
    too: listing everything is asked for with None, never by accident)."""
    if prefix is not None:
        _check_name("prefix", prefix)


def check_summary(summary: Summary) -> None:
    """Refuse a summary that is not text folding a non-negative number of turns."""
    upto = summary.upto_seq
    if isinstance(upto, bool) or not isinstance(upto, int) or upto < 0:
        raise InvalidRequest(f"summary.upto_seq must be a non-negative integer, got {upto!r}")
    if not isinstance(summary.text, str) or "\x00" in summary.text:
        raise InvalidRequest("summary.text must be a string without NUL characters")
    if not math.isfinite(float(summary.updated_at)):
        raise InvalidRequest(f"summary.updated_at must be a finite time: {summary.updated_at!r}")


def window(highest_seq: int, *, last: int | None, after: int) -> range:
    """The seqs ``history(last=, after=)`` returns from a session whose turns are
    ``1..highest_seq``: those above ``after``, only the ``last`` of them when given."""
    first = after + 1
    if last is not None:
        first = max(first, highest_seq - last + 1)
    return range(first, highest_seq + 1)


def encode_turn(turn: NewTurn) -> str:
    """The stored text of ``turn`` (checked: an id, messages, JSON-able meta)."""
    _check_name("run_id", turn.run_id)
    messages = list(turn.messages)
    if not messages:
        raise InvalidRequest("a turn must hold at least one message")
    if not all(isinstance(m, Message) for m in messages):
        raise InvalidRequest("a turn's messages must be Message objects")
    created_at = float(turn.created_at)
    if not math.isfinite(created_at):
        raise InvalidRequest(f"created_at must be a finite time, got {turn.created_at!r}")
    body = {
        "run_id": turn.run_id,
        "messages": [m.to_dict() for m in messages],
        "created_at": created_at,
        "meta": dict(turn.meta),
    }
    try:
        # Escaped ASCII: NUL and lone surrogates in content become \u escapes, which
        # every backend's text type holds (PostgreSQL jsonb would refuse \u0000).
        return json.dumps(body, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"a turn must be JSON-serialisable: {exc}") from exc


def decode_turn(seq: int, text: str | bytes) -> StoredTurn:
    """The turn stored as ``text`` under ``seq`` (the inverse of ``encode_turn``)."""
    body: dict[str, Any] = json.loads(text)
    return StoredTurn(
        seq=int(seq),
        run_id=str(body["run_id"]),
        messages=tuple(Message.from_dict(m) for m in body["messages"]),
        created_at=float(body["created_at"]),
        meta=dict(body.get("meta") or {}),
    )


def expires_at(now: float, ttl_s: int | None) -> float | None:
    """When a session appended to at ``now`` expires (None: never)."""
    return None if ttl_s is None else now + ttl_s


def is_live(expiry: float | None, now: float) -> bool:
    """Whether a session with this expiry may still be read at ``now``."""
    return expiry is None or expiry > now
