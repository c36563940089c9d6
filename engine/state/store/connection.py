"""The one SQLite connection every kind of record shares, and its transactions.

.. rubric:: Threading

The methods are synchronous and short. :class:`~engine.state.store.SqliteStore`
holds ONE connection opened with ``check_same_thread=False`` and serialises
every statement with one lock (:meth:`SqliteConnection._read`,
:meth:`SqliteConnection._write`), so it may be called from the event loop
thread and from worker threads (``asyncio.to_thread``) alike. File databases
run in WAL mode (readers never wait for the writer; ``synchronous=NORMAL`` is
safe there). Password hashing (scrypt, tens of milliseconds by design) runs
*outside* the lock; callers on the event loop should run
:meth:`~engine.state.store.Store.create_user`,
:meth:`~engine.state.store.Store.update_user` with a password and
:meth:`~engine.state.store.Store.verify_password` in a thread.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.state.store.errors import StoreError

__all__ = ["SqliteConnection", "private_file"]


def private_file(path: Path) -> None:
    """Create ``path`` with mode 0600, or take group and other access away
    from it and its WAL files; SQLite gives the ``-wal`` and ``-shm`` files
    it creates later the database file's mode."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm", "-journal"):
        extra = Path(f"{path}{suffix}")
        try:
            if extra.stat().st_mode & 0o077:
                extra.chmod(0o600)
        except FileNotFoundError:
            pass


class SqliteConnection:
    """The connection, its lock and its transactions: the base of each kind's
    part of :class:`~engine.state.store.SqliteStore` (users, rooms, ...), which
    sets these attributes when it opens the database."""

    #: The database file, or ``":memory:"``.
    path: Path | str
    _clock: Callable[[], float]
    _lock: threading.Lock
    _conn: sqlite3.Connection | None

    @property
    def schema_version(self) -> int:
        """The version recorded in the database."""
        with self._read() as conn:
            return int(conn.execute("SELECT version FROM schema_version").fetchone()[0])

    def close(self) -> None:
        """Close the connection (idempotent); later calls raise :class:`StoreError`."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """Run statements under the lock without a transaction."""
        with self._lock:
            if self._conn is None:
                raise StoreError("the store is closed")
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StoreError(f"database error: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """Run statements under the lock in one ``BEGIN IMMEDIATE`` transaction."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreError("the store is closed")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"database error: {exc}") from exc
