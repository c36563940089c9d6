"""Databases of an older schema, built the way that version's store built
them, for the upgrade tests of engine.state.store."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def database_at_version(path: Path, version: int) -> sqlite3.Connection:
    """A new SQLite file at ``path`` holding the schema of ``version`` (the
    first ``version`` migration steps); the caller fills it and closes it."""
    from engine.state.store.migrations import MIGRATIONS

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (?)", (version,))
    for step in MIGRATIONS[:version]:
        for statement in step:
            conn.execute(statement)
    return conn
