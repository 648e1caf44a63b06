"""The rows of a ``sql_query`` result: database values as JSON, counted against the
tool's ``max_rows`` and ``max_result_bytes`` as they arrive, and the errors a result
or a refused query becomes."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import uuid
from collections.abc import Sequence
from typing import Any

from astromesh_ray.errors import ToolError

Rows = tuple[list[str], list[list[Any]], str | None]  # columns, rows, truncated_by


def cell(value: Any) -> Any:
    """A database value as JSON (exact decimals and binary as text)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (dt.date, dt.time, dt.datetime)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "base64:" + base64.b64encode(bytes(value)).decode()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [cell(v) for v in value]
    if isinstance(value, dict):
        return {str(k): cell(v) for k, v in value.items()}
    return str(value)


def value_bytes(value: Any) -> int:
    """A cheap lower bound of ``value``'s JSON size (checked before the exact one)."""
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        return len(value)
    if isinstance(value, (list, tuple)):
        return sum(value_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(value_bytes(k) + value_bytes(v) for k, v in value.items())
    return 1


class RowCollector:
    """Rows converted and counted against ``max_rows`` and ``max_bytes`` (the JSON
    of the rows, as the model reads it)."""

    def __init__(self, max_rows: int, max_bytes: int) -> None:
        self.max_rows, self.max_bytes = max_rows, max_bytes
        self.rows: list[list[Any]] = []
        self.used = 0
        self.truncated_by: str | None = None

    @property
    def full(self) -> bool:
        return len(self.rows) >= self.max_rows

    def add(self, values: Sequence[Any]) -> bool:
        """Keep one row; ``False`` (and ``truncated_by`` set) once it does not fit."""
        left = self.max_bytes - self.used
        if sum(value_bytes(v) for v in values) > left:
            self.truncated_by = "max_result_bytes"
            return False
        cells = [cell(v) for v in values]
        size = len(json.dumps(cells, ensure_ascii=False, default=str).encode()) + 1
        if size > left:
            self.truncated_by = "max_result_bytes"
            return False
        self.used += size
        self.rows.append(cells)
        return True


def too_big(max_bytes: int) -> ToolError:
    return ToolError(
        f"a value of the result is larger than {max_bytes} bytes (config max_result_bytes)",
        hint="select less: fewer or shorter columns (e.g. substr(), length())",
    )


def database_error(exc: BaseException) -> ToolError:
    return ToolError(
        f"the database refused the query: {type(exc).__name__}: {exc}",
        hint="fix the query (sql_query is read-only: SELECT and the like)",
    )
