"""Episodic log backends: ``SqliteEpisodicLog`` (one file, stdlib ``sqlite3``) and
``PostgresEpisodicLog`` (``asyncpg``).  Both store the same row (``_records.py``):
the episode's fields in columns and its ``data`` as JSON, ``id`` assigned by the log.

The backends are imported by name (``factory.py``), so a process that never uses
PostgreSQL never imports ``asyncpg``.
"""
