"""``sql_query``: one read-only SQL statement on a database named by an environment
variable (``config.dsn_env``), so the DSN and its password never sit in YAML and
never reach the model.

Read-only is enforced by the database, not by parsing SQL:

- PostgreSQL (``postgresql://``, through asyncpg): a fresh connection per call with
  ``default_transaction_read_only`` and ``statement_timeout`` set, a transaction
  begun ``READ ONLY`` whose snapshot is taken before the model's statement (so it
  cannot switch the transaction to read-write), the statement prepared (one
  statement only), rows fetched through a portal (see "Result size"), and the
  transaction always rolled back.
- SQLite (``sqlite:///relative.db`` or ``sqlite:////absolute.db``): opened as a
  ``file:...?mode=ro`` URI with ``query_only`` on (and kept on) and ``ATTACH`` refused, in a
  worker thread; the timeout interrupts the statement from a progress handler.

A read-only transaction does not stop what a privileged PostgreSQL role can do on
the server (``COPY ... TO PROGRAM``, ``COPY ... TO '/file'``, ``lo_export``,
``pg_read_file``...): before the model's statement runs, the connection's role (and
every role it can ``SET ROLE`` to) is checked, and the call is refused if it is a
superuser, a member of ``pg_execute_server_program``, ``pg_write_server_files`` or
``pg_read_server_files``, or may execute the server-file functions.  The DSN must name
a least-privilege role (``CREATE ROLE reader LOGIN; GRANT SELECT ON ... TO reader``).
``COPY`` statements are refused outright.  SQLite pragmas are limited to the
read-only introspection ones (``table_info``, ``index_list``...): the others could
change the connection's guards or, like ``temp_store_directory`` and
``hard_heap_limit``, the whole process.

Result size: ``max_rows`` rows and ``config.max_result_bytes`` (default 1 MB) of
JSON at most; the rows past either are cut and ``truncated`` is set (with
``truncated_by`` naming the limit).  PostgreSQL rows are fetched one at a time (a
portal, one round trip per row) and counted as they come, so at most one row beyond
the cap is ever held.  *Limit*: that one row is received whole before it can be
measured (a client cannot stop a value mid-row), so one huge value -- up to
PostgreSQL's 1 GB per field -- still passes through memory once before it is
dropped; bound it on the server (views, column sizes) where that matters.  SQLite
values are bounded while the statement runs (``SQLITE_LIMIT_LENGTH`` is set to the
cap: a longer string or blob, stored or computed, fails the statement), then rows
are counted the same way.

Parameters are a list: ``$1, $2`` placeholders on PostgreSQL, ``?`` on SQLite.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydantic

from astromesh_ray.core.tools.base import ToolContext, ToolResult
from astromesh_ray.core.tools.builtins.schema_tool import (
    SchemaTool,
    ToolConfig,
    json_result,
    parse_config,
)
from astromesh_ray.core.tools.builtins.sql_rows import (
    RowCollector,
    Rows,
    database_error,
    too_big,
)
from astromesh_ray.core.tools.env import ToolEnv
from astromesh_ray.errors import ConfigError, ToolError
from astromesh_ray.spec.tools import BuiltinToolSpec

_PG_SCHEMES = ("postgresql://", "postgres://")
_SQLITE_SCHEME = "sqlite:///"


class SqlConfig(ToolConfig):
    """``config`` of ``sql_query``."""

    dsn_env: str | None = pydantic.Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding a postgresql:// or sqlite:/// DSN.",
    )
    max_rows: int = pydantic.Field(default=100, gt=0, description="Rows returned at most.")
    timeout_seconds: float = pydantic.Field(
        default=30.0, gt=0, description="How long one statement may run."
    )
    max_result_bytes: int = pydantic.Field(
        default=1_000_000,
        gt=0,
        description="Bytes of result rows (as JSON) returned at most; the rest is cut "
        "and truncated set. On SQLite also the longest string or blob a statement may "
        "read or make.",
    )
    read_only: bool = pydantic.Field(
        default=True, description="Always true: sql_query never writes."
    )


_COMMENT_OR_SPACE = re.compile(r"\s+|--[^\n]*(?:\n|$)")


def _first_word(query: str) -> str:
    """The statement's first keyword, past blanks and (nested) comments."""
    i, n = 0, len(query)
    while i < n:
        m = _COMMENT_OR_SPACE.match(query, i)
        if m and m.end() > i:
            i = m.end()
        elif query.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if query.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif query.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        else:
            break
    m = re.match(r"[A-Za-z_]+", query[i:])
    return m.group(0).lower() if m else ""


# Roles whose members reach the server's files or programs (PostgreSQL 11+).
_SERVER_ROLES = ("pg_execute_server_program", "pg_write_server_files", "pg_read_server_files")
# Server-file functions, revoked from PUBLIC by default: a GRANT reopens them.
_SERVER_FUNCTIONS = (
    "pg_catalog.lo_import(text)",
    "pg_catalog.lo_import(text,oid)",
    "pg_catalog.lo_export(oid,text)",
    "pg_catalog.pg_read_file(text)",
    "pg_catalog.pg_read_file(text,bigint,bigint)",
    "pg_catalog.pg_read_file(text,bigint,bigint,boolean)",
    "pg_catalog.pg_read_file(text,boolean)",
    "pg_catalog.pg_read_binary_file(text)",
    "pg_catalog.pg_read_binary_file(text,bigint,bigint)",
    "pg_catalog.pg_read_binary_file(text,bigint,bigint,boolean)",
    "pg_catalog.pg_read_binary_file(text,boolean)",
    "pg_catalog.pg_ls_dir(text)",
    "pg_catalog.pg_ls_dir(text,boolean,boolean)",
)
# Every role the connection is or can SET ROLE to, and what makes it too strong.
_PRIVILEGE_CHECK = """
WITH me AS (
    SELECT r.oid, r.rolname, r.rolsuper FROM pg_catalog.pg_roles r
    WHERE pg_catalog.pg_has_role(session_user, r.oid, 'MEMBER')
       OR pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER')
)
SELECT 'is a superuser' || CASE WHEN me.rolname = current_user THEN ''
       ELSE ' (through ' || me.rolname || ')' END
FROM me WHERE me.rolsuper
UNION ALL
SELECT 'is a member of ' || me.rolname FROM me WHERE me.rolname = ANY($1::text[])
UNION ALL
SELECT 'may execute ' || f::regprocedure::text
FROM me, unnest($2::text[]) AS fn, LATERAL pg_catalog.to_regprocedure(fn) AS f
WHERE f IS NOT NULL AND pg_catalog.has_function_privilege(me.oid, f, 'EXECUTE')
"""


async def _refuse_privileged_role(conn: Any) -> None:
    """A ``ToolError`` if the connection's role can reach the server's files or
    programs: a read-only transaction does not stop those."""
    role: str = await conn.fetchval("SELECT current_user")
    reasons = [r[0] for r in await conn.fetch(_PRIVILEGE_CHECK, _SERVER_ROLES, _SERVER_FUNCTIONS)]
    if reasons:
        shown = "; ".join(dict.fromkeys(reasons))
        raise ToolError(
            f"sql_query refuses to run as the database role {role!r}: it {shown}, so it "
            "can read or write the server's files or run programs there, which a "
            "read-only transaction does not prevent",
            hint="the operator must put a least-privilege role in the DSN: not a "
            "superuser, not in " + ", ".join(_SERVER_ROLES) + " (e.g. CREATE ROLE reader "
            "LOGIN; GRANT SELECT ON the tables TO reader)",
        )


async def _postgres(
    dsn: str, query: str, params: Sequence[Any], max_rows: int, max_bytes: int, timeout_s: float
) -> Rows:
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    if _first_word(query) == "copy":
        raise ToolError(
            "sql_query does not run COPY",
            hint="use a SELECT; its rows come back as JSON",
        )

    ms = str(max(1, int(timeout_s * 1000)))
    try:
        conn = await asyncpg.connect(
            dsn,
            timeout=timeout_s,
            statement_cache_size=0,
            server_settings={"default_transaction_read_only": "on", "statement_timeout": ms},
        )
    except asyncpg.PostgresError as exc:
        raise database_error(exc) from None
    except (TimeoutError, OSError, ValueError, asyncpg.InterfaceError) as exc:
        # Not str(exc): a connection error may echo the DSN's host and user.
        raise ToolError(f"cannot connect to the database ({type(exc).__name__})") from None
    got = RowCollector(max_rows, max_bytes)
    try:
        try:
            await _refuse_privileged_role(conn)
        except asyncpg.PostgresError as exc:
            raise database_error(exc) from None
        await conn.execute("BEGIN TRANSACTION READ ONLY")
        await conn.execute(f"SET LOCAL statement_timeout = {ms}")
        # The first snapshot makes READ ONLY final: a later SET TRANSACTION READ WRITE
        # from the model's statement is refused by PostgreSQL.
        await conn.fetchval("SELECT 1")
        try:
            stmt = await conn.prepare(query)
            columns = [a.name for a in stmt.get_attributes()]
            if columns:
                cursor = await stmt.cursor(*params)
                # One row per round trip: a batch would be received whole before
                # any of it could be counted against max_result_bytes.
                while not got.full:
                    record = await cursor.fetchrow()
                    if record is None or not got.add(tuple(record.values())):
                        break
                else:
                    # MOVE, not FETCH: whether more rows exist, without their data.
                    if await cursor.forward(1):
                        got.truncated_by = "max_rows"
            else:
                await stmt.fetch(*params)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise database_error(exc) from None
        except (TypeError, ValueError, OverflowError) as exc:  # asyncpg's argument encoding
            raise ToolError(f"bad query parameters: {exc}") from None
    finally:
        await conn.close(timeout=5)  # never committed: closing rolls back
    return columns, got.rows, got.truncated_by


# Introspection pragmas taking an argument (a table, an index...): read-only.
_ARG_PRAGMAS = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "foreign_key_check",
        "integrity_check",
        "quick_check",
    }
)
# Pragmas only read here: with a value (``= x``) they would set something.
_READ_PRAGMAS = frozenset(
    {
        "collation_list",
        "database_list",
        "function_list",
        "module_list",
        "pragma_list",
        "compile_options",
        "encoding",
        "user_version",
        "schema_version",
        "application_id",
        "data_version",
        "page_size",
        "page_count",
        "freelist_count",
        "foreign_keys",
    }
)


def _authorize(action: int, arg1: str | None, arg2: str | None, *rest: Any) -> int:
    # ATTACH would open another file (and create it).  Pragmas: the read-only
    # introspection ones only -- the others could lift query_only, or change the
    # whole process (temp_store_directory, hard_heap_limit, soft_heap_limit).
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA:
        name = (arg1 or "").lower()
        if name in _ARG_PRAGMAS or (name in _READ_PRAGMAS and arg2 is None):
            return sqlite3.SQLITE_OK
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _sqlite(
    path: Path, query: str, params: Sequence[Any], max_rows: int, max_bytes: int, timeout_s: float
) -> Rows:
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=timeout_s)
    except sqlite3.Error as exc:
        raise database_error(exc) from None
    got = RowCollector(max_rows, max_bytes)
    try:
        conn.execute("PRAGMA query_only = ON")
        # No string or blob (stored, or made by zeroblob(), printf()...) longer than
        # the cap: the statement fails before it can fill memory.
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max_bytes)
        conn.set_authorizer(_authorize)
        deadline = time.monotonic() + timeout_s
        conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 1000)
        try:
            cursor = conn.execute(query, list(params))
            columns = [d[0] for d in cursor.description or ()]
            while columns and not got.full:
                record = cursor.fetchone()
                if record is None or not got.add(record):
                    break
            else:
                if columns and cursor.fetchone() is not None:
                    got.truncated_by = "max_rows"
        except sqlite3.OperationalError as exc:
            if "interrupted" in str(exc):
                raise ToolError(f"the query ran longer than {timeout_s:g} s") from None
            raise database_error(exc) from None
        except sqlite3.DataError as exc:
            if "too big" in str(exc):
                raise too_big(max_bytes) from None
            raise database_error(exc) from None
        except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError) as exc:
            raise database_error(exc) from None
    finally:
        conn.close()
    return columns, got.rows, got.truncated_by


class SqlQueryTool(SchemaTool):
    """Run one read-only query on the database of ``$dsn_env``."""

    def __init__(self, config: SqlConfig, dsn_env: str, workdir: Path) -> None:
        super().__init__(
            "sql_query",
            "Run one read-only SQL query (SELECT) and get its rows as JSON. Parameters "
            "go in params: $1, $2... on PostgreSQL, ? on SQLite.",
            {
                "type": "object",
                "properties": {
                    "query": {
                        "type": "string",
                        "minLength": 1,
                        "description": "One SQL statement.",
                    },
                    "params": {
                        "type": "array",
                        "items": {"type": ["string", "number", "integer", "boolean", "null"]},
                        "default": [],
                        "description": "Values of the query's placeholders, in order.",
                    },
                },
                "required": ["query"],
                "additionalProperties": False,
            },
        )
        self.config = config
        self.dsn_env = dsn_env
        self.workdir = workdir

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        dsn = os.environ.get(self.dsn_env)
        if not dsn:
            raise ToolError(
                f"sql_query: environment variable {self.dsn_env} (config dsn_env) is not set",
                hint="the operator must set it to a postgresql:// or sqlite:/// DSN",
            )
        query: str = arguments["query"]
        params: list[Any] = arguments["params"]
        limit, timeout_s = self.config.max_rows, self.config.timeout_seconds
        max_bytes = self.config.max_result_bytes
        if dsn.startswith(_PG_SCHEMES):
            # The server's statement_timeout cuts the query; this bounds connecting.
            work = _postgres(dsn, query, params, limit, max_bytes, timeout_s)
            try:
                columns, rows, truncated_by = await asyncio.wait_for(work, timeout_s + 10)
            except TimeoutError:
                raise ToolError(f"the query did not finish within {timeout_s:g} s") from None
        elif dsn.startswith(_SQLITE_SCHEME):
            path = self.workdir / os.path.expanduser(dsn[len(_SQLITE_SCHEME) :])
            columns, rows, truncated_by = await asyncio.to_thread(
                _sqlite, path.absolute(), query, params, limit, max_bytes, timeout_s
            )
        else:
            raise ToolError(
                f"sql_query: the DSN in {self.dsn_env} is neither postgresql:// nor sqlite:///",
                hint="the operator must fix the environment variable",
            )
        result: dict[str, Any] = {
            "columns": columns,
            "rows": rows,
            "row_count": len(rows),
            "truncated": truncated_by is not None,
        }
        if truncated_by is not None:
            result["truncated_by"] = truncated_by  # max_rows or max_result_bytes
        return json_result(result)


def sql_query(spec: BuiltinToolSpec, env: ToolEnv) -> SqlQueryTool:
    """The ``sql_query`` built-in (``config.dsn_env`` names the database)."""
    config = parse_config(
        spec,
        SqlConfig,
        moved={
            "connection_string": "put the DSN in an environment variable and name it in "
            "config.dsn_env (a DSN holds a password)",
        },
    )
    if not config.dsn_env:
        raise ConfigError(
            f"built-in tool {spec.name!r}: config.dsn_env is required",
            hint="name the environment variable holding the DSN, e.g. dsn_env: DATABASE_URL",
        )
    if not config.read_only:
        raise ConfigError(
            f"built-in tool {spec.name!r}: read_only: false is not supported",
            hint="sql_query only reads; write through an internal Python tool",
        )
    return SqlQueryTool(config, config.dsn_env, env.workdir)
