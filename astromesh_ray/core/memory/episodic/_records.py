"""What both episodic backends share: the checks on episodes and queries, the JSON
codec of ``data``, and the SQL of a query.

An episode is stored as one row: its fields in columns (``COLUMNS``) and its
``data`` as compact JSON text, which both SQLite (``TEXT``) and PostgreSQL
(``jsonb``) take.  The backends' SQL differs only in placeholders (``?`` / ``$1``)
and in how a session prefix is matched, so ``select_sql`` builds it once for both.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from astromesh_ray.core.memory.base import EPISODE_TYPES, Episode, EpisodeQuery
from astromesh_ray.core.memory.prefix import starts_with_sql
from astromesh_ray.errors import InvalidRequest

__all__ = [
    "COLUMNS",
    "INSERT_COLUMNS",
    "MAX_NAME_CHARS",
    "MAX_QUERY_LIMIT",
    "check_query",
    "check_session",
    "episode_from_row",
    "episode_rows",
    "select_sql",
]

COLUMNS = ("id", "ts", "namespace", "agent", "session", "run_id", "trace_id", "type", "data")
"""A stored episode's columns, in the order ``episode_from_row`` reads them."""
INSERT_COLUMNS = COLUMNS[1:]
"""The columns an append writes (``id`` is assigned by the log)."""

MAX_NAME_CHARS = 512
"""Longest namespace, agent, session, run id or trace id accepted."""
MAX_QUERY_LIMIT = 10_000
"""Most episodes one query returns: page with ``offset`` for more."""

_TYPES = frozenset(EPISODE_TYPES)
# What PostgreSQL's jsonb refuses and SQLite would store: NUL (written by json as the
# escape \u0000) and lone surrogates (raw, with ensure_ascii=False).  Replaced by
# U+FFFD on both backends, so they return the same data.  "\\u0000" also matches an
# escaped backslash before "u0000"; that only costs a walk that changes nothing.
_UNSTORABLE_JSON = re.compile(r"\\u0000|[\ud800-\udfff]")
_UNSTORABLE_CHARS = re.compile(r"[\x00\ud800-\udfff]")


def episode_rows(episodes: Sequence[Episode]) -> list[tuple[Any, ...]]:
    """The rows to insert (``INSERT_COLUMNS`` order), every episode checked first:
    one bad episode raises ``InvalidRequest`` and none is stored."""
    rows = []
    for index, episode in enumerate(episodes):
        where = f"episode #{index}"
        _check_name(f"{where}: namespace", episode.namespace)
        _check_name(f"{where}: agent", episode.agent)
        if episode.session is not None:
            _check_name(f"{where}: session", episode.session)
        _check_name(f"{where}: run_id", episode.run_id)
        _check_name(f"{where}: trace_id", episode.trace_id, empty=True)
        if episode.type not in _TYPES:
            raise InvalidRequest(
                f"{where}: unknown episode type {episode.type!r}",
                hint="valid types: " + ", ".join(EPISODE_TYPES),
            )
        rows.append(
            (
                _check_time(f"{where}: ts", episode.ts),
                episode.namespace,
                episode.agent,
                episode.session,
                episode.run_id,
                episode.trace_id,
                episode.type,
                encode_data(where, episode.data),
            )
        )
    return rows


def encode_data(where: str, data: Mapping[str, Any]) -> str:
    """``data`` as compact JSON text; ``InvalidRequest`` when it is not JSON-able."""
    if not isinstance(data, Mapping):
        raise InvalidRequest(f"{where}: data must be a mapping, got {type(data).__name__}")
    try:
        text = _dumps(dict(data))
    except (TypeError, ValueError) as exc:  # a non-JSON value, NaN or infinity
        raise InvalidRequest(
            f"{where}: data is not JSON: {exc}",
            hint="pass it through astromesh_ray.core.memory.redact.redact first",
        ) from None
    if _UNSTORABLE_JSON.search(text):
        text = _dumps(_storable(data))
    return text


def decode_data(text: str) -> dict[str, Any]:
    """The ``data`` mapping of a stored row."""
    data = json.loads(text)
    return data if isinstance(data, dict) else {"value": data}


def episode_from_row(row: Sequence[Any]) -> Episode:
    """An ``Episode`` from a row of ``COLUMNS``."""
    id_, ts, namespace, agent, session, run_id, trace_id, type_, data = row
    return Episode(
        namespace=namespace,
        agent=agent,
        session=session,
        run_id=run_id,
        trace_id=trace_id,
        type=type_,
        data=decode_data(data),
        ts=float(ts),
        id=int(id_),
    )


def check_query(query: EpisodeQuery) -> None:
    """Refuse a query with bad arguments (``InvalidRequest``)."""
    _check_name("namespace", query.namespace)
    _check_name("agent", query.agent)
    if query.session is not None:
        _check_name("session", query.session)
    if query.session_prefix is not None:
        _check_name("session_prefix", query.session_prefix)
    if query.run_id is not None:
        _check_name("run_id", query.run_id)
    # A bare string would read as a sequence of one-letter types.
    if isinstance(query.types, str) or not isinstance(query.types, Sequence):
        raise InvalidRequest(f"types must be a list of episode types, got {query.types!r}")
    unknown = [t for t in query.types if t not in _TYPES]
    if unknown:
        raise InvalidRequest(
            f"unknown episode types {unknown!r}", hint="valid types: " + ", ".join(EPISODE_TYPES)
        )
    for what, value in (("since", query.since), ("until", query.until)):
        if value is not None:
            _check_time(what, value)
    if _not_int(query.limit) or not 1 <= query.limit <= MAX_QUERY_LIMIT:
        raise InvalidRequest(
            f"limit must be an integer from 1 to {MAX_QUERY_LIMIT}, got {query.limit!r}",
            hint="page through longer logs with offset",
        )
    if _not_int(query.offset) or query.offset < 0:
        raise InvalidRequest(f"offset must be a non-negative integer, got {query.offset!r}")


def check_session(namespace: str, agent: str, session: str) -> None:
    """Refuse a session address with bad parts (``InvalidRequest``)."""
    _check_name("namespace", namespace)
    _check_name("agent", agent)
    _check_name("session", session)


def select_sql(
    table: str,
    query: EpisodeQuery,
    placeholder: Callable[[int], str],
    *,
    dialect: Literal["postgres", "sqlite"],
    data_column: str = "data",
) -> tuple[str, list[Any]]:
    """The ``SELECT`` of ``query`` (checked) and its parameters.

    ``placeholder(n)`` writes the n-th parameter (1-based): ``?`` for SQLite, ``$n``
    for PostgreSQL; ``dialect`` picks how a session prefix is matched (see
    ``starts_with_sql``).  Rows come oldest first; ``id`` breaks ties of equal ``ts``
    in the order episodes were appended.
    """
    params: list[Any] = []

    def param(value: Any) -> str:
        params.append(value)
        return placeholder(len(params))

    where = [f"namespace = {param(query.namespace)}", f"agent = {param(query.agent)}"]
    if query.session is not None:
        where.append(f"session = {param(query.session)}")
    if query.session_prefix is not None:
        # Episodes without a session never match (NULL).
        where.append(starts_with_sql("session", query.session_prefix, param, dialect=dialect))
    if query.run_id is not None:
        where.append(f"run_id = {param(query.run_id)}")
    if query.types:
        where.append(f"type IN ({', '.join(param(t) for t in dict.fromkeys(query.types))})")
    if query.since is not None:
        where.append(f"ts >= {param(float(query.since))}")
    if query.until is not None:
        where.append(f"ts < {param(float(query.until))}")
    columns = ", ".join(data_column if c == "data" else c for c in COLUMNS)
    sql = (
        f"SELECT {columns} FROM {table} WHERE {' AND '.join(where)} "
        f"ORDER BY ts, id LIMIT {param(query.limit)} OFFSET {param(query.offset)}"
    )
    return sql, params


def _check_name(what: str, value: object, *, empty: bool = False) -> None:
    if not isinstance(value, str) or (not value and not empty):
        raise InvalidRequest(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > MAX_NAME_CHARS:
        raise InvalidRequest(f"{what} is longer than {MAX_NAME_CHARS} characters")
    # PostgreSQL text cannot hold NUL; refusing it everywhere keeps backends alike.
    if "\x00" in value:
        raise InvalidRequest(f"{what} must not contain NUL characters")


def _check_time(what: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest(f"{what} must be a finite number of unix seconds, got {value!r}")
    return float(value)


def _not_int(value: object) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _storable(value: Any) -> Any:
    if isinstance(value, str):
        return _UNSTORABLE_CHARS.sub("\ufffd", value)
    if isinstance(value, Mapping):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    return value
