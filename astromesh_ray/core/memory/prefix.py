"""Session-id prefixes: what the memory API accepts as ``session_prefix``, and the SQL
that matches one.

A prefix selects the sessions whose id starts with it: the gateway keeps a keyed
caller's sessions under ``<key_id>@<session>`` and lists them with ``<key_id>@``.
Matching is literal on every backend: ``%``, ``_`` and ``\\`` are plain characters,
never wildcards, and case counts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

from astromesh_ray.errors import InvalidRequest

MAX_SESSION_PREFIX_CHARS = 64
"""Longest ``session_prefix`` the memory API accepts."""

SESSION_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}")
"""What a ``session_prefix`` may be: the start of a session id (``core/context.py``
``SESSION_ID``: letters, digits and ``. _ : @ -``, starting with a letter or digit),
1 to 64 characters; it may end with ``@``."""

LIKE_ESCAPE = "\\"
"""The escape character of the patterns ``like_pattern`` writes."""


def check_session_prefix(prefix: object, field: str = "session_prefix") -> str:
    """``prefix`` if the memory API accepts it, else ``InvalidRequest`` naming ``field``."""
    if not isinstance(prefix, str) or not SESSION_PREFIX.fullmatch(prefix):
        shown = prefix[:40] if isinstance(prefix, str) else prefix
        raise InvalidRequest(
            f"invalid {field} {shown!r}",
            hint=f"1 to {MAX_SESSION_PREFIX_CHARS} characters: letters, digits and . _ : @ -,"
            " starting with a letter or digit",
            field=field,
        )
    return prefix


def like_pattern(prefix: str) -> str:
    """The ``LIKE`` pattern (with ``ESCAPE '\\'``) of the strings starting with ``prefix``:
    its wildcards and the escape character are escaped, then ``%`` is appended."""
    escaped = (
        prefix.replace(LIKE_ESCAPE, LIKE_ESCAPE * 2)
        .replace("%", LIKE_ESCAPE + "%")
        .replace("_", LIKE_ESCAPE + "_")
    )
    return escaped + "%"


def starts_with_sql(
    column: str,
    prefix: str,
    param: Callable[[Any], str],
    *,
    dialect: Literal["postgres", "sqlite"],
) -> str:
    """A condition true when ``column`` starts with ``prefix`` (false on NULL).

    ``param(value)`` adds a parameter and returns its placeholder.  PostgreSQL gets an
    escaped ``LIKE``; SQLite compares the leading characters instead, because its
    ``LIKE`` ignores ASCII case (``'K1@%'`` would match ``'k1@x'``).
    """
    if dialect == "sqlite":
        # substr and len both count characters (code points).
        return f"substr({column}, 1, {param(len(prefix))}) = {param(prefix)}"
    return f"{column} LIKE {param(like_pattern(prefix))} ESCAPE '{LIKE_ESCAPE}'"
