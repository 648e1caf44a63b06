"""``sql_query`` against a real PostgreSQL (``scripts/test-services.sh``: trust auth,
user postgres, database astromesh_test) and a real SQLite file: parameters, the
``max_rows`` and ``max_result_bytes`` cuts, writes refused by the database's
read-only transaction (not by parsing SQL), the statement timeout, and roles that
could reach the server's files or programs refused (the queries run as a
least-privilege role each test creates)."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest

from astromesh_ray.core.context import Caller
from astromesh_ray.core.tools.base import Tool, ToolContext, ToolResult
from astromesh_ray.core.tools.builtins import builtin_tool
from astromesh_ray.core.tools.env import ToolEnv
from astromesh_ray.core.tools.services import local_tool_services
from astromesh_ray.errors import ToolError
from astromesh_ray.spec import AgentSpec
from astromesh_ray.spec.tools import BuiltinToolSpec

POSTGRES_URL = os.environ.get(
    "ASTROMESH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/astromesh_test"
)


def sql_tool(workdir: Path, env_var: str, **config: Any) -> Tool:
    agent = AgentSpec.model_validate(
        {
            "apiVersion": "astromesh/v1",
            "kind": "Agent",
            "metadata": {"name": "sql-agent"},
            "spec": {"model": {"primary": {"provider": "ollama", "model": "m"}}},
        }
    )
    env = ToolEnv(agent=agent, services=local_tool_services(), workdir=workdir)
    spec = BuiltinToolSpec(name="sql_query", type="builtin", config={"dsn_env": env_var, **config})
    return builtin_tool(spec, env)


async def query(tool: Tool, sql: str, *params: Any) -> ToolResult:
    ctx = ToolContext(
        run_id="r",
        agent="sql-agent",
        session_id=None,
        caller=Caller(),
        deadline=asyncio.get_running_loop().time() + 60,
        trace_parent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
        lineage=(),
    )
    return await tool.call(tool.validate({"query": sql, "params": list(params)}), ctx)


async def admin(sql: str) -> None:
    """``sql`` as the test database's superuser (setting up, never through the tool)."""
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def dsn_as(role: str, password: str) -> str:
    """``POSTGRES_URL`` with another user (and its password: trust auth ignores it)."""
    url = urlsplit(POSTGRES_URL)
    host = url.hostname or "127.0.0.1"
    netloc = f"{role}:{password}@{host}" + (f":{url.port}" if url.port else "")
    return urlunsplit((url.scheme, netloc, url.path, url.query, url.fragment))


@pytest.fixture
async def reader() -> AsyncIterator[tuple[str, str]]:
    """A least-privilege login role (name, DSN): what an operator should configure."""
    name, password = "sqlq_reader_" + uuid.uuid4().hex[:10], uuid.uuid4().hex
    await admin(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
    try:
        yield name, dsn_as(name, password)
    finally:
        await admin(f"DROP OWNED BY {name}")
        await admin(f"DROP ROLE IF EXISTS {name}")


@pytest.fixture
async def table(reader: tuple[str, str]) -> AsyncIterator[str]:
    name = "sqlq_" + uuid.uuid4().hex[:10]
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, name text, price numeric)")
        await conn.executemany(
            f"INSERT INTO {name} VALUES ($1, $2, $3)",
            [(i, f"item{i}", f"{i}.50") for i in range(1, 11)],
        )
        await conn.execute(f"GRANT SELECT ON {name} TO {reader[0]}")
        yield name
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {name}")
        await conn.close()


@pytest.fixture
def pg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader: tuple[str, str]) -> Tool:
    monkeypatch.setenv("ASTROMESH_TEST_SQL_DSN", reader[1])
    return sql_tool(tmp_path, "ASTROMESH_TEST_SQL_DSN", max_rows=3, timeout_seconds=1)


async def rows_of(name: str) -> int:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        count: int = await conn.fetchval(f"SELECT count(*) FROM {name}")
        return count
    finally:
        await conn.close()


async def test_postgres_select_with_params(pg: Tool, table: str) -> None:
    result = await query(pg, f"SELECT id, name, price FROM {table} WHERE id = $1", 4)
    assert result.data == {
        "columns": ["id", "name", "price"],
        "rows": [[4, "item4", "4.50"]],
        "row_count": 1,
        "truncated": False,
    }


async def test_postgres_max_rows_truncates(pg: Tool, table: str) -> None:
    result = await query(pg, f"SELECT id FROM {table} WHERE id > $1 ORDER BY id", 2)
    assert result.data["rows"] == [[3], [4], [5]]
    assert result.data["truncated"] is True
    assert result.data["truncated_by"] == "max_rows"
    exact = await query(pg, f"SELECT id FROM {table} WHERE id <= 3 ORDER BY id")
    assert exact.data["rows"] == [[1], [2], [3]]
    assert exact.data["truncated"] is False and "truncated_by" not in exact.data


async def test_postgres_result_stops_at_max_result_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader: tuple[str, str]
) -> None:
    monkeypatch.setenv("ASTROMESH_TEST_SQL_DSN", reader[1])
    tool = sql_tool(tmp_path, "ASTROMESH_TEST_SQL_DSN", max_result_bytes=250_000)
    result = await query(tool, "SELECT repeat('x', 100000) FROM generate_series(1, 50)")
    assert result.data["row_count"] == 2  # 100 kB each: the third would pass 250 kB
    assert result.data["truncated"] is True
    assert result.data["truncated_by"] == "max_result_bytes"
    assert len(result.content.encode()) < 250_000 + 1000
    # One value larger than the cap on its own: dropped, and said so.
    huge = await query(tool, "SELECT 1 AS n, repeat('x', 2000000) AS big")
    assert huge.data["rows"] == [] and huge.data["columns"] == ["n", "big"]
    assert huge.data["truncated_by"] == "max_result_bytes"


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO {t} VALUES (99, 'x', 1)",
        "UPDATE {t} SET name = 'x'",
        "DELETE FROM {t}",
        "DROP TABLE {t}",
        "WITH gone AS (DELETE FROM {t} RETURNING id) SELECT count(*) FROM gone",
        "SET TRANSACTION READ WRITE",
    ],
)
async def test_postgres_writes_are_refused_by_the_database(
    pg: Tool, table: str, reader: tuple[str, str], statement: str
) -> None:
    # The role may write this table: the read-only transaction is what refuses.
    await admin(f"GRANT INSERT, UPDATE, DELETE ON {table} TO {reader[0]}")
    with pytest.raises(ToolError) as err:
        await query(pg, statement.format(t=table))
    # The database's own refusal (SET ... READ WRITE: our snapshot was taken first).
    assert re.search(
        r"in a read-only transaction|read-write mode must be set before any query",
        err.value.message,
    ), err.value.message
    assert await rows_of(table) == 10


async def test_postgres_commit_then_write_is_still_refused(pg: Tool, table: str) -> None:
    # One statement per call, a new read-only connection each time: a COMMIT ends
    # nothing the next call could use.
    await query(pg, "COMMIT")
    with pytest.raises(ToolError, match="read-only transaction"):
        await query(pg, f"DELETE FROM {table}")
    with pytest.raises(ToolError, match="multiple commands"):
        await query(pg, f"COMMIT; DELETE FROM {table}")
    assert await rows_of(table) == 10


async def test_postgres_superuser_dsn_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASTROMESH_TEST_SQL_SUPER", POSTGRES_URL)  # user postgres
    tool = sql_tool(tmp_path, "ASTROMESH_TEST_SQL_SUPER")
    for sql in ("SELECT pg_read_file('/etc/passwd')", "SELECT 1"):
        with pytest.raises(ToolError) as err:
            await query(tool, sql)
        assert "refuses to run as the database role 'postgres'" in err.value.message
        assert "is a superuser" in err.value.message
        assert "least-privilege role" in (err.value.hint or "")


@pytest.mark.parametrize(
    ("grant", "reason"),
    [
        ("GRANT pg_read_server_files TO {r}", "is a member of pg_read_server_files"),
        ("GRANT pg_write_server_files TO {r}", "is a member of pg_write_server_files"),
        ("GRANT pg_execute_server_program TO {r}", "is a member of pg_execute_server_program"),
        ("GRANT postgres TO {r}", "is a superuser (through postgres)"),  # SET ROLE postgres
        ("GRANT EXECUTE ON FUNCTION pg_read_file(text) TO {r}", "may execute pg_read_file"),
        ("GRANT EXECUTE ON FUNCTION lo_export(oid, text) TO {r}", "may execute lo_export"),
    ],
)
async def test_postgres_roles_reaching_the_server_are_refused(
    pg: Tool, reader: tuple[str, str], grant: str, reason: str
) -> None:
    await admin(grant.format(r=reader[0]))
    try:
        with pytest.raises(ToolError) as err:
            await query(pg, "SELECT pg_read_file('/etc/hostname')")
        assert f"database role {reader[0]!r}" in err.value.message
        assert reason in err.value.message
    finally:
        await admin(grant.format(r=reader[0]).replace("GRANT", "REVOKE").replace(" TO ", " FROM "))


async def test_postgres_plain_role_reads_but_not_server_files(pg: Tool, table: str) -> None:
    result = await query(pg, f"SELECT count(*) FROM {table}")
    assert result.data["rows"] == [[10]]
    with pytest.raises(ToolError, match="permission denied"):
        await query(pg, "SELECT pg_read_file('/etc/passwd')")


@pytest.mark.parametrize(
    "statement",
    [
        "COPY (SELECT 1) TO PROGRAM 'id'",
        "copy {t} TO '/tmp/sqlq_copy_out'",
        "/* x */ -- y\n COPY {t} TO STDOUT",
        "COPY {t} FROM STDIN",
    ],
)
async def test_postgres_copy_is_refused(pg: Tool, table: str, statement: str) -> None:
    with pytest.raises(ToolError, match="does not run COPY"):
        await query(pg, statement.format(t=table))


async def test_postgres_statement_timeout_is_a_tool_error(pg: Tool) -> None:
    with pytest.raises(ToolError, match="statement timeout"):
        await query(pg, "SELECT pg_sleep(5)")


async def test_postgres_errors_carry_the_database_message_not_the_dsn(
    pg: Tool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ToolError, match='relation "no_such_table_x" does not exist'):
        await query(pg, "SELECT * FROM no_such_table_x")
    monkeypatch.setenv("ASTROMESH_TEST_SQL_BAD", "postgresql://postgres:hunter2@127.0.0.1:1/x")
    bad = sql_tool(tmp_path, "ASTROMESH_TEST_SQL_BAD")
    with pytest.raises(ToolError) as err:
        await query(bad, "SELECT 1")
    assert "cannot connect" in err.value.message
    assert "hunter2" not in str(err.value) and "127.0.0.1" not in str(err.value)


@pytest.fixture
def lite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Tool, Path]:
    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, blob BLOB)")
        conn.executemany(
            "INSERT INTO items VALUES (?, ?, ?)", [(i, f"item{i}", b"\x00\x01") for i in range(5)]
        )
    monkeypatch.setenv("ASTROMESH_TEST_SQLITE_DSN", "sqlite:///shop.db")  # relative to workdir
    return sql_tool(tmp_path, "ASTROMESH_TEST_SQLITE_DSN", max_rows=2, timeout_seconds=0.5), db


async def test_sqlite_select_params_and_truncation(lite: tuple[Tool, Path]) -> None:
    tool, _ = lite
    result = await query(tool, "SELECT id, name, blob FROM items WHERE id >= ? ORDER BY id", 1)
    assert result.data == {
        "columns": ["id", "name", "blob"],
        "rows": [[1, "item1", "base64:AAE="], [2, "item2", "base64:AAE="]],
        "row_count": 2,
        "truncated": True,
        "truncated_by": "max_rows",
    }


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO items (name) VALUES ('x')",
        "DELETE FROM items",
        "DROP TABLE items",
        "ATTACH DATABASE 'other.db' AS other",
        "PRAGMA query_only = OFF",
        "PRAGMA temp_store_directory = 'elsewhere'",  # process-wide
        "PRAGMA temp_store_directory",
        "PRAGMA hard_heap_limit = 1000",  # process-wide
        "PRAGMA soft_heap_limit = 1000",
        "PRAGMA user_version = 7",
        "PRAGMA cache_size = 1",
    ],
)
async def test_sqlite_is_read_only(lite: tuple[Tool, Path], statement: str) -> None:
    tool, db = lite
    with pytest.raises(ToolError, match="the database refused the query"):
        await query(tool, statement)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (5,)
    assert not (db.parent / "other.db").exists()


async def test_sqlite_timeout_and_missing_file(
    lite: tuple[Tool, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool, _ = lite
    endless = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"
    )
    with pytest.raises(ToolError, match=r"ran longer than 0.5 s"):
        await query(tool, endless)
    monkeypatch.setenv("ASTROMESH_TEST_SQLITE_MISSING", f"sqlite:///{tmp_path}/none.db")
    missing = sql_tool(tmp_path, "ASTROMESH_TEST_SQLITE_MISSING")
    with pytest.raises(ToolError, match="unable to open"):
        await query(missing, "SELECT 1")
    assert not (tmp_path / "none.db").exists()


async def test_sqlite_introspection_pragmas_still_work(lite: tuple[Tool, Path]) -> None:
    tool, _ = lite
    info = await query(tool, "PRAGMA table_info(items)")
    assert [r[1] for r in info.data["rows"]] == ["id", "name"]  # max_rows=2
    assert (await query(tool, "PRAGMA user_version")).data["rows"] == [[0]]
    listed = await query(tool, "SELECT name FROM pragma_table_info('items') ORDER BY cid")
    assert listed.data["rows"] == [["id"], ["name"]]


async def test_sqlite_values_and_results_are_bounded(
    lite: tuple[Tool, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, db = lite
    tool = sql_tool(tmp_path, "ASTROMESH_TEST_SQLITE_DSN", max_rows=100, max_result_bytes=250_000)
    for sql in ("SELECT zeroblob(300000000)", "SELECT length(zeroblob(300000000))"):
        with pytest.raises(ToolError, match=r"larger than 250000 bytes \(config max_result_bytes"):
            await query(tool, sql)
    rows = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 50) "
        "SELECT i, printf('%.*c', 100000, 'x') FROM n"
    )
    result = await query(tool, rows)
    assert [r[0] for r in result.data["rows"]] == [1, 2]
    assert result.data["truncated"] is True
    assert result.data["truncated_by"] == "max_result_bytes"
    # A stored value longer than the cap is refused when read, not loaded.
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO items VALUES (99, 'big', zeroblob(300000))")
    with pytest.raises(ToolError, match="config max_result_bytes"):
        await query(tool, "SELECT blob FROM items WHERE id = 99")
