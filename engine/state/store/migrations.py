"""The schema, as the list of steps that built it, and the upgrade that applies them.

The ``schema_version`` table holds one row with the version number.
Opening a database applies the missing steps of :data:`MIGRATIONS` in one
transaction (:func:`migrate`); a database written by a newer callbridge is
refused.
"""

from __future__ import annotations

import sqlite3

from engine.state.store.errors import StoreError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate"]

#: Step ``i`` migrates schema version ``i`` to ``i + 1``; never edit a shipped
#: step, append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE users (
            name TEXT PRIMARY KEY,
            display_name TEXT,
            created_at REAL NOT NULL,
            password_hash TEXT NOT NULL,
            ha1_realm TEXT NOT NULL,
            ha1_md5 TEXT NOT NULL,
            ha1_sha256 TEXT NOT NULL
        )""",
        "CREATE UNIQUE INDEX users_name_nocase ON users (name COLLATE NOCASE)",
        """CREATE TABLE rooms (
            room_id TEXT PRIMARY KEY,
            display_name TEXT,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE kv (
            namespace TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            expires_at REAL,
            PRIMARY KEY (namespace, key)
        ) WITHOUT ROWID""",
        "CREATE INDEX kv_expires ON kv (expires_at) WHERE expires_at IS NOT NULL",
        """CREATE TABLE call_records (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            call_id TEXT,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX call_records_call_id ON call_records (call_id)",
    ),
    (
        # Rooms with a lifetime, API keys, invites, webhooks (the management API).
        "ALTER TABLE rooms ADD COLUMN max_participants INTEGER",
        "ALTER TABLE rooms ADD COLUMN record_on_start INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE rooms ADD COLUMN pin TEXT",
        "ALTER TABLE rooms ADD COLUMN moderator_pin TEXT",
        "ALTER TABLE rooms ADD COLUMN end_when_empty_after REAL",
        "ALTER TABLE rooms ADD COLUMN starts_at REAL",
        "ALTER TABLE rooms ADD COLUMN duration REAL",
        "ALTER TABLE rooms ADD COLUMN ended_at REAL",
        "ALTER TABLE rooms ADD COLUMN locked INTEGER NOT NULL DEFAULT 0",
        "CREATE UNIQUE INDEX rooms_pin ON rooms (pin) WHERE pin IS NOT NULL",
        "CREATE UNIQUE INDEX rooms_moderator_pin ON rooms (moderator_pin)"
        " WHERE moderator_pin IS NOT NULL",
        """CREATE TABLE api_keys (
            key_id TEXT PRIMARY KEY,
            secret_hash TEXT NOT NULL,
            scopes TEXT NOT NULL,
            name TEXT,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE invites (
            invite_id TEXT PRIMARY KEY,
            room_id TEXT NOT NULL,
            invitee TEXT NOT NULL,
            display_name TEXT,
            role TEXT NOT NULL,
            permissions TEXT NOT NULL,
            code_hash TEXT NOT NULL UNIQUE,
            link_hash TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            used_at REAL,
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL
        )""",
        "CREATE INDEX invites_room ON invites (room_id)",
        """CREATE TABLE webhooks (
            webhook_id TEXT PRIMARY KEY,
            url TEXT NOT NULL,
            events TEXT NOT NULL,
            secret TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE webhook_deliveries (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            delivery_id TEXT NOT NULL UNIQUE,
            webhook_id TEXT NOT NULL,
            event TEXT NOT NULL,
            payload TEXT NOT NULL,
            created_at REAL NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL,
            last_code INTEGER,
            last_error TEXT,
            delivered_at REAL
        )""",
        "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at)",
        "CREATE INDEX webhook_deliveries_hook ON webhook_deliveries (webhook_id, seq)",
    ),
    (
        # Digest HA1 values only for SIP users. Existing users have them and
        # may already REGISTER: they stay SIP users; new ones are not unless asked.
        "ALTER TABLE users ADD COLUMN sip INTEGER NOT NULL DEFAULT 1",
    ),
    (
        # Named presets (permission sets) for join tokens and invites.
        """CREATE TABLE presets (
            name TEXT PRIMARY KEY,
            permissions TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
    ),
)

#: The schema version this code writes.
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, label: object) -> None:
    """Bring the database on ``conn`` to :data:`SCHEMA_VERSION` in one transaction.

    :param conn: a connection in autocommit mode (``isolation_level=None``).
    :param label: what the errors name the database by (its path).
    :raises StoreError: the database's schema is newer than this code's.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        version = row[0] if row[0] is not None else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{label}: database schema version {version} is newer than this "
                f"callbridge supports ({SCHEMA_VERSION})"
            )
        for step in MIGRATIONS[version:]:
            for statement in step:
                conn.execute(statement)
        if version != SCHEMA_VERSION:
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
