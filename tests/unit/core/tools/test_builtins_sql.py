"""``sql_query`` configuration and DSN handling, and the built-ins of the original
Astromesh that are refused with the alternative.  (Queries against real databases:
tests/integration/tools/test_sql_query.py.)"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from astromesh_ray.core.tools.builtins import FACTORIES, REFUSED
from astromesh_ray.core.tools.builtins.sql import _authorize, _first_word
from astromesh_ray.errors import ConfigError, ToolError

from .builtin_helpers import call, make_tool, tool_env


def test_dsn_env_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config.dsn_env is required"):
        make_tool("sql_query", tool_env(tmp_path))


@pytest.mark.parametrize(
    ("config", "words", "hint"),
    [
        (
            {"dsn_env": "DB", "host": "x"},
            "unknown config key 'host'",
            "dsn_env, max_result_bytes, max_rows",
        ),
        ({"connection_string": "sqlite:///x.db"}, "not used by astromesh-ray", "dsn_env"),
        ({"dsn_env": "DB", "read_only": False}, "read_only: false", "only reads"),
        ({"dsn_env": "not a name"}, "config.dsn_env", "fix config"),
        ({"dsn_env": "DB", "max_rows": 0}, "config.max_rows", "fix config"),
        ({"dsn_env": "DB", "max_result_bytes": 0}, "config.max_result_bytes", "fix config"),
    ],
)
def test_config_errors(tmp_path: Path, config: dict[str, object], words: str, hint: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_tool("sql_query", tool_env(tmp_path), **config)
    assert words in err.value.message
    assert hint in (err.value.hint or "")


async def test_missing_env_var_is_a_tool_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ASTROMESH_TEST_NO_DB", raising=False)
    tool = make_tool("sql_query", tool_env(tmp_path), dsn_env="ASTROMESH_TEST_NO_DB")
    with pytest.raises(ToolError, match=r"ASTROMESH_TEST_NO_DB .* is not set"):
        await call(tool, query="SELECT 1")


async def test_unknown_scheme_never_shows_the_dsn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASTROMESH_TEST_DB", "mysql://root:hunter2@db/x")
    tool = make_tool("sql_query", tool_env(tmp_path), dsn_env="ASTROMESH_TEST_DB")
    with pytest.raises(ToolError) as err:
        await call(tool, query="SELECT 1")
    assert "neither postgresql:// nor sqlite:///" in err.value.message
    assert "hunter2" not in str(err.value)


def test_sql_query_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = make_tool("sql_query", tool_env(tmp_path), dsn_env="DB")
    assert tool.validate({"query": "SELECT 1"}) == {"query": "SELECT 1", "params": []}
    with pytest.raises(ToolError, match="params"):
        tool.validate({"query": "SELECT ?", "params": [{"a": 1}]})


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_builtins_name_the_alternative(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_tool(name, tool_env(tmp_path))
    assert f"built-in tool {name!r} is not supported" in err.value.message
    assert "type: webhook" in (err.value.hint or "") or "http_request" in (err.value.hint or "")


def test_refused_names_cover_the_originals_account_tools() -> None:
    assert {
        "web_search",
        "web_scrape",
        "wikipedia",
        "graphql_query",
        "send_email",
        "send_slack",
        "send_message",
        "send_webhook",
    } <= set(REFUSED)
    assert not set(REFUSED) & set(FACTORIES)


@pytest.mark.parametrize(
    ("query", "word"),
    [
        ("COPY t TO STDOUT", "copy"),
        ("  \n\tcopy (SELECT 1) TO PROGRAM 'id'", "copy"),
        ("-- a comment\nCoPy t FROM STDIN", "copy"),
        ("/* a /* nested */ comment */ COPY t TO '/tmp/x'", "copy"),
        ("/**/--\n/* x */copy t to stdout", "copy"),
        ("SELECT 'COPY'", "select"),
        ("-- COPY\nSELECT 1", "select"),
        ("/* COPY */ WITH x AS (SELECT 1) SELECT * FROM x", "with"),
        ("", ""),
        ("/* unterminated", ""),
    ],
)
def test_first_word_skips_blanks_and_comments(query: str, word: str) -> None:
    assert _first_word(query) == word


async def test_postgres_copy_is_refused_before_connecting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Port 1: nothing listens there, so a connection attempt would say "cannot connect".
    monkeypatch.setenv("ASTROMESH_TEST_DB", "postgresql://nobody@127.0.0.1:1/x")
    tool = make_tool("sql_query", tool_env(tmp_path), dsn_env="ASTROMESH_TEST_DB")
    with pytest.raises(ToolError, match="does not run COPY"):
        await call(tool, query="/* x */ COPY (SELECT 1) TO PROGRAM 'id'")


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("table_info", "items", True),
        ("index_list", "items", True),
        ("user_version", None, True),
        ("user_version", "3", False),
        ("query_only", "0", False),
        ("query_only", None, False),
        ("writable_schema", "1", False),
        ("temp_store_directory", "/tmp", False),
        ("temp_store_directory", None, False),
        ("hard_heap_limit", "1", False),
        ("soft_heap_limit", "1", False),
        ("cache_size", "10", False),
        ("journal_mode", "wal", False),
    ],
)
def test_sqlite_pragmas_are_allow_listed(name: str, value: str | None, allowed: bool) -> None:
    expected = sqlite3.SQLITE_OK if allowed else sqlite3.SQLITE_DENY
    assert _authorize(sqlite3.SQLITE_PRAGMA, name, value, None, None) == expected
    assert _authorize(sqlite3.SQLITE_PRAGMA, name.upper(), value, "main", None) == expected
