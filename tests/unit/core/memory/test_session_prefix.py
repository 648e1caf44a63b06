"""Session prefixes (``core/memory/prefix.py``): what the memory API accepts, and the
``LIKE`` patterns and SQL that match one literally (the backends run them in the
store contracts)."""

from __future__ import annotations

import sqlite3
import string

import pytest

from astromesh_ray.core.context import SESSION_ID
from astromesh_ray.core.memory.prefix import (
    MAX_SESSION_PREFIX_CHARS,
    check_session_prefix,
    like_pattern,
    starts_with_sql,
)
from astromesh_ray.errors import InvalidRequest

ID_CHARS = string.ascii_letters + string.digits + "._:@-"


@pytest.mark.parametrize("prefix", ["k", "k1@", "Key_1.a:b-c@", "9" * 64, "a@b@", "A-"])
def test_accepts_the_start_of_a_session_id(prefix: str) -> None:
    assert check_session_prefix(prefix) == prefix
    assert SESSION_ID.fullmatch(prefix)  # a prefix is itself a valid session id


@pytest.mark.parametrize(
    "prefix", ["", "x" * 65, "@k", ".k", "_k", "-k", "k 1", "k%", "k\\", "k/", "ké", "k\n", None]
)
def test_refuses_what_no_session_id_starts_with(prefix: object) -> None:
    with pytest.raises(InvalidRequest, match="invalid session_prefix") as info:
        check_session_prefix(prefix)
    assert info.value.details == {"field": "session_prefix"}


def test_names_the_field_it_was_given_as() -> None:
    with pytest.raises(InvalidRequest, match="invalid prefix") as info:
        check_session_prefix("", "prefix")
    assert info.value.details == {"field": "prefix"}


def test_same_characters_as_session_ids() -> None:
    for char in map(chr, range(0x20, 0x7F)):
        in_ids = SESSION_ID.fullmatch("a" + char) is not None
        accepted = True
        try:
            check_session_prefix("a" + char)
        except InvalidRequest:
            accepted = False
        assert accepted == in_ids, repr(char)
        assert accepted == (char in ID_CHARS), repr(char)
    assert MAX_SESSION_PREFIX_CHARS == 64


def test_like_pattern_escapes_wildcards_and_the_escape() -> None:
    assert like_pattern("k1@") == "k1@%"
    assert like_pattern("a%b_c\\d") == "a\\%b\\_c\\\\d%"
    assert like_pattern("\\%") == "\\\\\\%%"


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("a%", ["a%b"]),
        ("a_", ["a_b"]),
        ("a\\", ["a\\%", "a\\b"]),
        ("a\\%", ["a\\%"]),
        ("A", ["AB"]),
        ("a", ["a%b", "a\\%", "a\\b", "a_b", "axb"]),
        ("é", ["é1"]),
        ("ab", []),
    ],
)
@pytest.mark.parametrize("how", ["like", "sqlite"])
def test_sql_matches_the_prefix_literally(prefix: str, expected: list[str], how: str) -> None:
    """The PostgreSQL pattern checked with SQLite's LIKE made case-sensitive (the
    contracts run it on PostgreSQL itself), and SQLite's own condition."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (s TEXT)")
    rows = ["a%b", "axb", "a_b", "a\\b", "a\\%", "AB", "é1", None]
    conn.executemany("INSERT INTO t VALUES (?)", [(r,) for r in rows])
    params: list[object] = []

    def param(value: object) -> str:
        params.append(value)
        return "?"

    if how == "like":
        conn.execute("PRAGMA case_sensitive_like = ON")
        where = starts_with_sql("s", prefix, param, dialect="postgres")
        assert where == "s LIKE ? ESCAPE '\\'"
    else:
        where = starts_with_sql("s", prefix, param, dialect="sqlite")
    found = [r[0] for r in conn.execute(f"SELECT s FROM t WHERE {where} ORDER BY s", params)]
    conn.close()
    assert found == sorted(expected)
