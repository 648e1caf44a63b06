"""WAL mode for the SQLite files of the embedded stores, shared by the conversation
store and the episodic log (one file holds both)."""

from __future__ import annotations

import logging
import sqlite3
import time

log = logging.getLogger("astromesh.memory")

BUSY = ("SQLITE_BUSY", "SQLITE_LOCKED")
"""SQLite's names for "another connection holds the lock"."""


def use_wal(conn: sqlite3.Connection, path: str, busy_timeout_s: float) -> None:
    """Put ``conn``'s file in WAL mode, so readers never wait for the writer.

    Switching a file to WAL needs it to ourselves, and SQLite answers "locked" at
    once instead of waiting (no busy handler applies), e.g. while another process
    creates its tables in a new file: try again until the busy timeout.
    """
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorname", "") in BUSY
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
            continue
        if mode != "wal" and path != ":memory:":
            log.warning("SQLite file %s is not in WAL mode (%s): readers wait", path, mode)
        return
