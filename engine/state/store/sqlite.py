"""The SQLite store: one database file, and the class that composes every kind of record.

:class:`SqliteStore` is :class:`~engine.state.store.Store` on the standard
library's :mod:`sqlite3` (one file under the data directory, or
``":memory:"`` for tests). Each kind of record is one base class, in its own
module, over :class:`~engine.state.store.connection.SqliteConnection`; this
module opens the connection, upgrades the schema and puts them together.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.state.store.call_records import SqliteCallRecords
from engine.state.store.checks import CONTROL_RE
from engine.state.store.connection import private_file
from engine.state.store.errors import InvalidValue, StoreError
from engine.state.store.invites import SqliteInvites
from engine.state.store.keys import SqliteApiKeys
from engine.state.store.migrations import migrate
from engine.state.store.passwords import ScryptParams
from engine.state.store.presets import SqlitePresets
from engine.state.store.rooms import SqliteRooms
from engine.state.store.storage import SqliteKeyValue
from engine.state.store.users import SqliteUsers
from engine.state.store.webhooks import SqliteWebhooks

__all__ = ["DEFAULT_FILENAME", "SqliteStore"]

#: File name of the database inside the data directory.
DEFAULT_FILENAME = "callbridge.sqlite3"


class SqliteStore(
    SqliteUsers,
    SqliteKeyValue,
    SqliteRooms,
    SqliteApiKeys,
    SqliteInvites,
    SqliteWebhooks,
    SqliteCallRecords,
    SqlitePresets,
):
    """:class:`Store` on one SQLite database.

    :param path: the database file (its directory is created when missing),
        or ``":memory:"`` for a private in-memory database.
    :param sip_realm: the realm for which SIP digest HA1 values are kept; see
        :mod:`engine.state.store.users` before changing it.
    :param password_params: scrypt cost for new hashes.
    :param clock: returns seconds since the epoch, for ``created_at``.
    :param pin_key: the key room PINs are hashed with (``Keys.pin_key``);
        without one a random key is drawn, and PINs set through this object
        are not found again after the database is reopened.
    :raises StoreError: the database cannot be opened or has a newer schema.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        sip_realm: str = "callbridge",
        password_params: ScryptParams | None = None,
        clock: Callable[[], float] = time.time,
        pin_key: bytes | None = None,
    ) -> None:
        if pin_key is not None and (not isinstance(pin_key, bytes) or len(pin_key) < 16):
            raise InvalidValue("pin_key", "must be at least 16 bytes")
        self._pin_key = pin_key if pin_key is not None else secrets.token_bytes(32)
        if not isinstance(sip_realm, str) or not sip_realm or '"' in sip_realm or (
            CONTROL_RE.search(sip_realm)
        ):
            raise InvalidValue("sip_realm", "must be non-empty text without quotes")
        self.sip_realm = sip_realm
        self.path = path if path == ":memory:" else Path(path)
        self._params = password_params or ScryptParams()
        self._clock = clock
        self._lock = threading.Lock()
        self._pending_records = []
        self._dummy_hash = None
        self._conn = None
        try:
            if isinstance(self.path, Path):
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                private_file(self.path)
            conn = sqlite3.connect(
                os.fspath(self.path), check_same_thread=False, isolation_level=None
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{self.path}: cannot open the database: {exc}") from exc
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            if isinstance(self.path, Path):
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
            migrate(conn, self.path)
            if pin_key is not None:
                self._hash_clear_pins(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"{self.path}: cannot open the database: {exc}") from exc
        except StoreError:
            conn.close()
            raise
        self._conn = conn

    @classmethod
    def in_directory(cls, data_dir: Path | str, **kwargs: Any) -> SqliteStore:
        """Open ``DATA_DIR/callbridge.sqlite3`` (see :data:`DEFAULT_FILENAME`).

        :param data_dir: the data directory (``--data-dir``), created if needed.
        :param kwargs: as for the constructor.
        """
        return cls(Path(data_dir) / DEFAULT_FILENAME, **kwargs)

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
