"""Key-value storage with expiry: what scenarios see as ``ApplicationStorage``."""

from __future__ import annotations

from engine.state.store.checks import (
    MAX_KEY,
    MAX_NAMESPACE,
    MAX_VALUE,
    check_text,
    check_time,
)
from engine.state.store.connection import SqliteConnection
from engine.state.store.errors import InvalidValue

__all__ = ["SqliteKeyValue"]


class SqliteKeyValue(SqliteConnection):
    """The ``kv`` table of :class:`~engine.state.store.SqliteStore`, one namespace per application."""

    def kv_put(
        self, namespace: str, key: str, value: str, ttl: float | None, now: float
    ) -> None:
        """Set ``key`` in ``namespace``, replacing any previous value.

        :param namespace: 1-128 characters (e.g. the application's name).
        :param key: 1-256 characters.
        :param value: up to 1 MiB characters.
        :param ttl: seconds to live from ``now`` (more than 0), ``None`` for ever.
        :param now: the current time.
        """
        check_text("namespace", namespace, 1, MAX_NAMESPACE)
        check_text("key", key, 1, MAX_KEY)
        check_text("value", value, 0, MAX_VALUE)
        now = check_time("now", now)
        expires_at = None
        if ttl is not None:
            ttl = check_time("ttl", ttl)
            if ttl <= 0:
                raise InvalidValue("ttl", "must be more than 0 seconds, or None")
            expires_at = now + ttl
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO kv (namespace, key, value, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (namespace, key, value, expires_at),
            )

    def kv_get(self, namespace: str, key: str, now: float) -> str | None:
        """Return the value of ``key``, or ``None`` when absent or expired at ``now``.

        :param namespace: as for :meth:`kv_put`.
        :param key: as for :meth:`kv_put`.
        :param now: the current time.
        """
        check_text("namespace", namespace, 1, MAX_NAMESPACE)
        check_text("key", key, 1, MAX_KEY)
        now = check_time("now", now)
        with self._read() as conn:
            row = conn.execute(
                "SELECT value FROM kv WHERE namespace = ? AND key = ?"
                " AND (expires_at IS NULL OR expires_at > ?)",
                (namespace, key, now),
            ).fetchone()
        return str(row[0]) if row else None

    def kv_keys(self, namespace: str, prefix: str = "", *, now: float) -> list[str]:
        """Return the keys of ``namespace`` alive at ``now`` that start with ``prefix``, sorted.

        :param namespace: as for :meth:`kv_put`.
        :param prefix: compared exactly (case-sensitive, no wildcards).
        :param now: the current time.
        """
        check_text("namespace", namespace, 1, MAX_NAMESPACE)
        check_text("prefix", prefix, 0, MAX_KEY)
        now = check_time("now", now)
        with self._read() as conn:
            rows = conn.execute(
                "SELECT key FROM kv WHERE namespace = ? AND key >= ?"
                " AND substr(key, 1, ?) = ? AND (expires_at IS NULL OR expires_at > ?)"
                " ORDER BY key",
                (namespace, prefix, len(prefix), prefix, now),
            ).fetchall()
        return [str(row[0]) for row in rows]

    def kv_delete(self, namespace: str, key: str) -> bool:
        """Delete ``key``.

        :returns: whether a row was deleted (an expired, not yet purged row counts).
        """
        check_text("namespace", namespace, 1, MAX_NAMESPACE)
        check_text("key", key, 1, MAX_KEY)
        with self._write() as conn:
            cursor = conn.execute(
                "DELETE FROM kv WHERE namespace = ? AND key = ?", (namespace, key)
            )
            return cursor.rowcount > 0

    def kv_purge_expired(self, now: float) -> int:
        """Delete every key expired at ``now`` (in every namespace).

        :returns: how many were deleted.
        """
        now = check_time("now", now)
        with self._write() as conn:
            cursor = conn.execute(
                "DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
            )
            return cursor.rowcount
