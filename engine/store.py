"""Persistent data behind one small interface: users, rooms, key-value, call records.

:class:`Store` is the interface the rest of the engine sees; :class:`SqliteStore`
implements it on the standard library's :mod:`sqlite3` (one file under the data
directory, or ``":memory:"`` for tests). A server database (PostgreSQL) will
implement the same interface when one machine is outgrown (design.md, "Beyond
one machine"); no other module opens the database file.

This module is a leaf: it imports nothing from ``engine``. It is created at
start-up and handed to the parts that need it.

.. rubric:: Threading

The methods are synchronous and short. :class:`SqliteStore` holds ONE
connection opened with ``check_same_thread=False`` and serialises every
statement with one lock, so it may be called from the event loop thread and
from worker threads (``asyncio.to_thread``) alike. File databases run in WAL
mode (readers never wait for the writer; ``synchronous=NORMAL`` is safe there).
Password hashing (scrypt, tens of milliseconds by design) runs *outside* the
lock; callers on the event loop should run :meth:`Store.create_user`,
:meth:`Store.update_user` with a password and :meth:`Store.verify_password`
in a thread.

.. rubric:: Passwords

A password is stored as a salted scrypt hash (:func:`hashlib.scrypt`, a random
16-byte salt per user) in the PHC string form
``$scrypt$ln=14,r=8,p=1$<salt>$<hash>``: the cost parameters travel with the
hash, so they can be raised later. :meth:`SqliteStore.verify_password`
compares in constant time, spends the same work on unknown users, and rehashes
with the store's current parameters after a successful check when the stored
ones differ.

For the SIP registrar's digest authentication (RFC 7616 section 3.4.2;
RFC 3261 section 22.4), ``HA1 = H(username ":" realm ":" password)`` is kept
for MD5 and SHA-256, computed when the password is set, for the store's
``sip_realm``. **Changing the realm invalidates every stored HA1**: users must
have their passwords reset (or log in once through :meth:`SqliteStore.verify_password`,
which recomputes the HA1 values for the current realm); until then
:meth:`Store.sip_ha1` returns ``None`` for them.

.. rubric:: Names

User names are 1-64 characters of ``A-Z a-z 0-9 . _ -`` (not ``.`` or
``..``). Lookups are exact (a SIP digest username is case-sensitive), but
uniqueness is case-insensitive: ``Alice`` cannot be created next to ``alice``.
Room ids are 1-32 characters of ``A-Z a-z 0-9``, exact and case-sensitive
(room ``ID`` is conference ``conf_<ID>``).

.. rubric:: Schema

The ``schema_version`` table holds one row with the version number.
Opening a database applies the missing steps of ``_MIGRATIONS`` in one
transaction; a database written by a newer callbridge is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "DEFAULT_FILENAME",
    "HA1_ALGORITHMS",
    "InvalidValue",
    "Room",
    "RoomExists",
    "SCHEMA_VERSION",
    "ScryptParams",
    "SqliteStore",
    "Store",
    "StoreError",
    "User",
    "UserExists",
    "UserNotFound",
]

#: File name of the database inside the data directory.
DEFAULT_FILENAME = "callbridge.sqlite3"

#: Digest algorithms :meth:`Store.sip_ha1` answers for (RFC 7616 section 3.4.2).
HA1_ALGORITHMS = ("MD5", "SHA-256")

_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ROOM_RE = re.compile(r"[A-Za-z0-9]{1,32}")
_MAX_PASSWORD = 1024
_MAX_DISPLAY_NAME = 128
_MAX_NAMESPACE = 128
_MAX_KEY = 256
_MAX_VALUE = 1024 * 1024
_MAX_LIMIT = 1000
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


# -- errors -------------------------------------------------------------------


class StoreError(Exception):
    """Base class of every error raised by a store."""


class InvalidValue(StoreError):
    """An argument is not acceptable.

    ``str()`` reads ``invalid FIELD: REASON``.

    :param field: the name of the argument (or record field) at fault.
    :param reason: what is wrong with it.
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"invalid {field}: {reason}")


class UserExists(StoreError):
    """A user of that name (compared case-insensitively) exists already.

    :param name: the name asked for.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"user {name!r} already exists")


class UserNotFound(StoreError):
    """No user has that name.

    :param name: the name asked for.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"user {name!r} does not exist")


class RoomExists(StoreError):
    """A room with that id exists already.

    :param room_id: the id asked for.
    """

    def __init__(self, room_id: str) -> None:
        self.room_id = room_id
        super().__init__(f"room {room_id!r} already exists")


# -- records ------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    """A user account, without any secret.

    :param name: the login and SIP digest username.
    :param display_name: free text shown to others, or ``None``.
    :param created_at: creation time, seconds since the epoch.
    """

    name: str
    display_name: str | None
    created_at: float


@dataclass(frozen=True)
class Room:
    """A conference room; room ``ID`` is conference ``conf_<ID>``.

    :param room_id: 1-32 characters of ``A-Z a-z 0-9``.
    :param display_name: free text, or ``None``.
    :param created_at: creation time, seconds since the epoch.
    """

    room_id: str
    display_name: str | None
    created_at: float


@dataclass(frozen=True)
class ScryptParams:
    """Cost parameters of :func:`hashlib.scrypt` for new password hashes.

    The defaults (N = 2**14, r = 8, p = 1, 32-byte key; 16 MiB, about 50 ms)
    follow Django's scrypt hasher. Raise them here; old hashes are upgraded
    at the user's next successful :meth:`SqliteStore.verify_password`.

    :param log2_n: base-2 logarithm of the CPU/memory cost N (1-24).
    :param r: block size (1-64).
    :param p: parallelism (1-16).
    """

    log2_n: int = 14
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        for field, value, low, high in (
            ("log2_n", self.log2_n, 1, 24),
            ("r", self.r, 1, 64),
            ("p", self.p, 1, 16),
        ):
            if type(value) is not int or not low <= value <= high:
                raise InvalidValue(f"scrypt {field}", f"must be an integer from {low} to {high}")


# -- the interface ------------------------------------------------------------


@runtime_checkable
class Store(Protocol):
    """Everything the engine keeps on disk, behind one small interface.

    Implementations: :class:`SqliteStore` (now), a PostgreSQL store (later).
    Every method raises :class:`InvalidValue` for a malformed argument and
    :class:`StoreError` when the database fails or the store is closed.
    Times are seconds since the epoch; ``now`` arguments are supplied by the
    caller so that expiry is testable without a clock.
    """

    sip_realm: str

    def close(self) -> None:
        """Release the database; later calls raise :class:`StoreError`."""
        ...

    # users

    def create_user(self, name: str, password: str, display_name: str | None = None) -> User:
        """Create a user. :raises UserExists: the name is taken (any case)."""
        ...

    def get_user(self, name: str) -> User | None:
        """Return the user of exactly that name, or ``None``."""
        ...

    def list_users(self, offset: int = 0, limit: int = 100) -> list[User]:
        """Return users ordered by name, ``limit`` (1-1000) from ``offset``."""
        ...

    def count_users(self) -> int:
        """Return the number of users."""
        ...

    def update_user(
        self, name: str, *, password: str | None = None, display_name: str | None = None
    ) -> User:
        """Change what is given (``display_name=""`` clears it).

        :raises UserNotFound: no such user.
        """
        ...

    def delete_user(self, name: str) -> bool:
        """Delete a user; ``False`` when there was none."""
        ...

    def verify_password(self, name: str, password: str) -> bool:
        """Check a password in constant time; ``False`` for unknown users."""
        ...

    def sip_ha1(self, name: str, realm: str, algorithm: str) -> str | None:
        """Return hex ``H(name:realm:password)`` or ``None`` (unknown user or realm)."""
        ...

    # key-value (scenarios' ApplicationStorage)

    def kv_put(
        self, namespace: str, key: str, value: str, ttl: float | None, now: float
    ) -> None:
        """Set a value that lives ``ttl`` seconds from ``now`` (``None``: forever)."""
        ...

    def kv_get(self, namespace: str, key: str, now: float) -> str | None:
        """Return the value, or ``None`` when absent or expired at ``now``."""
        ...

    def kv_keys(self, namespace: str, prefix: str = "", *, now: float) -> list[str]:
        """Return the sorted keys alive at ``now`` that start with ``prefix``."""
        ...

    def kv_delete(self, namespace: str, key: str) -> bool:
        """Delete a key; ``False`` when there was no row (live or expired)."""
        ...

    def kv_purge_expired(self, now: float) -> int:
        """Delete every row expired at ``now``; return how many."""
        ...

    # rooms

    def create_room(self, room_id: str, *, display_name: str | None = None) -> Room:
        """Create a room. :raises RoomExists: the id is taken."""
        ...

    def get_room(self, room_id: str) -> Room | None:
        """Return the room, or ``None``."""
        ...

    def list_rooms(self) -> list[Room]:
        """Return every room ordered by id."""
        ...

    def delete_room(self, room_id: str) -> bool:
        """Delete a room; ``False`` when there was none."""
        ...

    # call records

    def add_call_record(self, record: Mapping[str, Any]) -> None:
        """Append a call record (a JSON object: call_id, session_id, direction,
        number, caller, start, answer, end, status, reason, ...)."""
        ...

    def list_call_records(self, limit: int = 100) -> list[dict[str, Any]]:
        """Return the newest ``limit`` (1-1000) records, newest first."""
        ...

    # invites, webhooks: to come with the management API.


# -- schema -------------------------------------------------------------------

#: Step ``i`` migrates schema version ``i`` to ``i + 1``; never edit a shipped
#: step, append a new one.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
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
)

#: The schema version this code writes.
SCHEMA_VERSION = len(_MIGRATIONS)


# -- password hashing ---------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password: str, salt: bytes, params: ScryptParams, dklen: int) -> bytes:
    n = 1 << params.log2_n
    # scrypt needs 128 * r * (N + p) bytes; leave headroom over OpenSSL's 32 MiB default.
    maxmem = 128 * params.r * (n + params.p) + (16 << 20)
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=params.r, p=params.p, dklen=dklen,
        maxmem=maxmem,
    )


def _hash_password(password: str, params: ScryptParams) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, params, 32)
    return f"$scrypt$ln={params.log2_n},r={params.r},p={params.p}${_b64(salt)}${_b64(digest)}"


def _parse_hash(encoded: str) -> tuple[ScryptParams, bytes, bytes]:
    """Split a PHC scrypt string; :raises ValueError: when it is malformed."""
    empty, scheme, settings, salt, digest = encoded.split("$")
    if empty or scheme != "scrypt":
        raise ValueError(f"unknown password hash scheme {scheme!r}")
    fields = dict(item.split("=", 1) for item in settings.split(","))
    params = ScryptParams(int(fields["ln"]), int(fields["r"]), int(fields["p"]))
    return params, _unb64(salt), _unb64(digest)


def _ha1(algorithm: str, name: str, realm: str, password: str) -> str:
    hash_name = "md5" if algorithm == "MD5" else "sha256"
    data = f"{name}:{realm}:{password}".encode("utf-8")
    return hashlib.new(hash_name, data, usedforsecurity=False).hexdigest()


# -- validation ---------------------------------------------------------------


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise InvalidValue("name", "must be a string")
    if _NAME_RE.fullmatch(name) is None:
        raise InvalidValue(
            "name", f"must be 1 to 64 characters of A-Z a-z 0-9 . _ - (got {name!r})"
        )
    if name in (".", ".."):
        raise InvalidValue("name", f"must not be {name!r}")
    return name


def _check_password(password: object) -> str:
    if not isinstance(password, str):
        raise InvalidValue("password", "must be a string")
    if not 1 <= len(password) <= _MAX_PASSWORD:
        raise InvalidValue("password", f"must be 1 to {_MAX_PASSWORD} characters")
    return password


def _check_display_name(display_name: object) -> str | None:
    """Validate a display name; ``""`` becomes ``None``."""
    if display_name is None:
        return None
    if not isinstance(display_name, str):
        raise InvalidValue("display_name", "must be a string or None")
    if len(display_name) > _MAX_DISPLAY_NAME:
        raise InvalidValue("display_name", f"must be at most {_MAX_DISPLAY_NAME} characters")
    if _CONTROL_RE.search(display_name):
        raise InvalidValue("display_name", "must not contain control characters")
    return display_name or None


def _check_room_id(room_id: object) -> str:
    if not isinstance(room_id, str):
        raise InvalidValue("room_id", "must be a string")
    if _ROOM_RE.fullmatch(room_id) is None:
        raise InvalidValue(
            "room_id", f"must be 1 to 32 characters of A-Z a-z 0-9 (got {room_id!r})"
        )
    return room_id


def _check_text(field: str, value: object, low: int, high: int) -> str:
    if not isinstance(value, str):
        raise InvalidValue(field, "must be a string")
    if not low <= len(value) <= high:
        raise InvalidValue(field, f"must be {low} to {high} characters")
    if "\x00" in value:
        raise InvalidValue(field, "must not contain NUL characters")
    return value


def _check_time(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidValue(field, "must be a finite number")
    return float(value)


def _check_count(field: str, value: object, low: int, high: int | None) -> int:
    if type(value) is not int or value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise InvalidValue(field, f"must be an integer {span}")
    return value


# -- SQLite -------------------------------------------------------------------


class SqliteStore:
    """:class:`Store` on one SQLite database.

    :param path: the database file (its directory is created when missing),
        or ``":memory:"`` for a private in-memory database.
    :param sip_realm: the realm for which SIP digest HA1 values are kept; see
        the module documentation before changing it.
    :param password_params: scrypt cost for new hashes.
    :param clock: returns seconds since the epoch, for ``created_at``.
    :raises StoreError: the database cannot be opened or has a newer schema.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        sip_realm: str = "callbridge",
        password_params: ScryptParams | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(sip_realm, str) or not sip_realm or '"' in sip_realm or (
            _CONTROL_RE.search(sip_realm)
        ):
            raise InvalidValue("sip_realm", "must be non-empty text without quotes")
        self.sip_realm = sip_realm
        self.path = path if path == ":memory:" else Path(path)
        self._params = password_params or ScryptParams()
        self._clock = clock
        self._lock = threading.Lock()
        self._dummy_hash: str | None = None
        self._conn: sqlite3.Connection | None = None
        try:
            if isinstance(self.path, Path):
                self.path.parent.mkdir(parents=True, exist_ok=True)
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
            self._migrate(conn)
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

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            version = row[0] if row[0] is not None else 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: database schema version {version} is newer than this "
                    f"callbridge supports ({SCHEMA_VERSION})"
                )
            for step in _MIGRATIONS[version:]:
                for statement in step:
                    conn.execute(statement)
            if version != SCHEMA_VERSION:
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

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

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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

    # -- users ----------------------------------------------------------------

    def _secrets_for(self, name: str, password: str) -> tuple[str, str, str, str]:
        """Return (password_hash, realm, ha1_md5, ha1_sha256); slow (scrypt)."""
        realm = self.sip_realm
        return (
            _hash_password(password, self._params),
            realm,
            _ha1("MD5", name, realm, password),
            _ha1("SHA-256", name, realm, password),
        )

    def create_user(self, name: str, password: str, display_name: str | None = None) -> User:
        """Create a user with a password and an optional display name.

        :param name: 1-64 characters of ``A-Z a-z 0-9 . _ -``.
        :param password: 1-1024 characters.
        :param display_name: up to 128 characters without control characters;
            ``""`` is stored as ``None``.
        :raises UserExists: a user of that name exists (compared case-insensitively).
        :raises InvalidValue: a malformed argument.
        """
        _check_name(name)
        _check_password(password)
        display_name = _check_display_name(display_name)
        if self._find_nocase(name):  # fail fast, before the slow hash
            raise UserExists(name)
        password_hash, realm, md5, sha256 = self._secrets_for(name, password)
        created_at = self._clock()
        try:
            with self._write() as conn:
                conn.execute(
                    "INSERT INTO users (name, display_name, created_at, password_hash,"
                    " ha1_realm, ha1_md5, ha1_sha256) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (name, display_name, created_at, password_hash, realm, md5, sha256),
                )
        except StoreError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise UserExists(name) from None
            raise
        return User(name, display_name, created_at)

    def get_user(self, name: str) -> User | None:
        """Return the user of exactly that name (case-sensitive), or ``None``.

        :param name: the user name; a malformed name simply finds nothing.
        """
        if not isinstance(name, str):
            return None
        with self._read() as conn:
            row = conn.execute(
                "SELECT name, display_name, created_at FROM users WHERE name = ?", (name,)
            ).fetchone()
        return User(*row) if row else None

    def _find_nocase(self, name: str) -> bool:
        """Whether a user's name equals ``name`` ignoring ASCII case."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT 1 FROM users WHERE name = ? COLLATE NOCASE", (name,)
            ).fetchone()
        return row is not None

    def list_users(self, offset: int = 0, limit: int = 100) -> list[User]:
        """Return users ordered by name.

        :param offset: how many to skip (0 or more).
        :param limit: how many at most (1-1000).
        """
        _check_count("offset", offset, 0, None)
        _check_count("limit", limit, 1, _MAX_LIMIT)
        with self._read() as conn:
            rows = conn.execute(
                "SELECT name, display_name, created_at FROM users ORDER BY name"
                " LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        return [User(*row) for row in rows]

    def count_users(self) -> int:
        """Return the number of users."""
        with self._read() as conn:
            return int(conn.execute("SELECT count(*) FROM users").fetchone()[0])

    def update_user(
        self, name: str, *, password: str | None = None, display_name: str | None = None
    ) -> User:
        """Change a user's password and/or display name; ``None`` leaves a field as it is.

        A new password also recomputes the SIP HA1 values for the current realm.

        :param name: the user, exactly.
        :param password: the new password (1-1024 characters).
        :param display_name: the new display name; ``""`` clears it.
        :raises UserNotFound: no user of that name.
        :raises InvalidValue: a malformed argument.
        """
        if not isinstance(name, str):
            raise InvalidValue("name", "must be a string")
        if password is not None:
            _check_password(password)
        new_display = _check_display_name(display_name)
        if self.get_user(name) is None:  # fail fast, before the slow hash
            raise UserNotFound(name)
        secrets_ = self._secrets_for(name, password) if password is not None else None
        with self._write() as conn:
            if display_name is not None:
                conn.execute(
                    "UPDATE users SET display_name = ? WHERE name = ?", (new_display, name)
                )
            if secrets_ is not None:
                conn.execute(
                    "UPDATE users SET password_hash = ?, ha1_realm = ?, ha1_md5 = ?,"
                    " ha1_sha256 = ? WHERE name = ?",
                    (*secrets_, name),
                )
            row = conn.execute(
                "SELECT name, display_name, created_at FROM users WHERE name = ?", (name,)
            ).fetchone()
            if row is None:  # deleted meanwhile by another thread
                raise UserNotFound(name)
        return User(*row)

    def delete_user(self, name: str) -> bool:
        """Delete a user.

        :param name: the user, exactly.
        :returns: ``False`` when there was no such user.
        """
        if not isinstance(name, str):
            return False
        with self._write() as conn:
            return conn.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount > 0

    def verify_password(self, name: str, password: str) -> bool:
        """Check a password.

        The comparison is constant-time and an unknown user costs the same
        scrypt work as a known one. After a successful check, a hash made with
        other parameters than the store's, or HA1 values for another realm,
        are recomputed.

        :param name: the user, exactly.
        :param password: the password to check.
        :returns: ``True`` only for an existing user and the right password.
        """
        if not isinstance(password, str):
            return False
        row = None
        if isinstance(name, str):
            with self._read() as conn:
                row = conn.execute(
                    "SELECT password_hash, ha1_realm FROM users WHERE name = ?", (name,)
                ).fetchone()
        if row is None:
            self._burn(password)
            return False
        encoded, realm = row
        try:
            params, salt, expected = _parse_hash(encoded)
        except (ValueError, KeyError, StoreError):
            self._burn(password)
            return False
        actual = _scrypt(password, salt, params, len(expected))
        if not hmac.compare_digest(actual, expected):
            return False
        if params != self._params or realm != self.sip_realm:
            new = self._secrets_for(name, password)
            with self._write() as conn:
                conn.execute(
                    "UPDATE users SET password_hash = ?, ha1_realm = ?, ha1_md5 = ?,"
                    " ha1_sha256 = ? WHERE name = ? AND password_hash = ?",
                    (*new, name, encoded),
                )
        return True

    def _burn(self, password: str) -> None:
        """Spend the work of one verification, so unknown names are not revealed by timing."""
        if self._dummy_hash is None:
            self._dummy_hash = _hash_password("callbridge-dummy", self._params)
        params, salt, expected = _parse_hash(self._dummy_hash)
        hmac.compare_digest(_scrypt(password, salt, params, len(expected)), expected)

    def sip_ha1(self, name: str, realm: str, algorithm: str) -> str | None:
        """Return ``H(name ":" realm ":" password)`` in lower-case hex, for digest auth.

        For the ``-sess`` variants (RFC 7616 section 3.4.2) ask for the base
        algorithm and hash in the nonce and cnonce yourself.

        :param name: the digest username, exactly.
        :param realm: the realm of the challenge; only :attr:`sip_realm` is kept.
        :param algorithm: ``"MD5"`` or ``"SHA-256"`` (any case).
        :returns: ``None`` for an unknown user, another realm, or a user whose
            HA1 values were made for a former realm.
        :raises InvalidValue: an algorithm other than MD5 or SHA-256.
        """
        algo = algorithm.upper() if isinstance(algorithm, str) else algorithm
        if algo not in HA1_ALGORITHMS:
            raise InvalidValue("algorithm", f"must be MD5 or SHA-256 (got {algorithm!r})")
        if not isinstance(name, str) or realm != self.sip_realm:
            return None
        column = "ha1_md5" if algo == "MD5" else "ha1_sha256"
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {column} FROM users WHERE name = ? AND ha1_realm = ?", (name, realm)
            ).fetchone()
        return str(row[0]) if row else None

    # -- key-value ------------------------------------------------------------

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
        _check_text("namespace", namespace, 1, _MAX_NAMESPACE)
        _check_text("key", key, 1, _MAX_KEY)
        _check_text("value", value, 0, _MAX_VALUE)
        now = _check_time("now", now)
        expires_at = None
        if ttl is not None:
            ttl = _check_time("ttl", ttl)
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
        _check_text("namespace", namespace, 1, _MAX_NAMESPACE)
        _check_text("key", key, 1, _MAX_KEY)
        now = _check_time("now", now)
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
        _check_text("namespace", namespace, 1, _MAX_NAMESPACE)
        _check_text("prefix", prefix, 0, _MAX_KEY)
        now = _check_time("now", now)
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
        _check_text("namespace", namespace, 1, _MAX_NAMESPACE)
        _check_text("key", key, 1, _MAX_KEY)
        with self._write() as conn:
            cursor = conn.execute(
                "DELETE FROM kv WHERE namespace = ? AND key = ?", (namespace, key)
            )
            return cursor.rowcount > 0

    def kv_purge_expired(self, now: float) -> int:
        """Delete every key expired at ``now`` (in every namespace).

        :returns: how many were deleted.
        """
        now = _check_time("now", now)
        with self._write() as conn:
            cursor = conn.execute(
                "DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
            )
            return cursor.rowcount

    # -- rooms ----------------------------------------------------------------

    def create_room(self, room_id: str, *, display_name: str | None = None) -> Room:
        """Create a room.

        :param room_id: 1-32 characters of ``A-Z a-z 0-9`` (case-sensitive).
        :param display_name: as for users.
        :raises RoomExists: the id is taken.
        :raises InvalidValue: a malformed argument.
        """
        _check_room_id(room_id)
        display_name = _check_display_name(display_name)
        created_at = self._clock()
        try:
            with self._write() as conn:
                conn.execute(
                    "INSERT INTO rooms (room_id, display_name, created_at) VALUES (?, ?, ?)",
                    (room_id, display_name, created_at),
                )
        except StoreError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise RoomExists(room_id) from None
            raise
        return Room(room_id, display_name, created_at)

    def get_room(self, room_id: str) -> Room | None:
        """Return the room, or ``None``.

        :param room_id: the id, exactly.
        """
        if not isinstance(room_id, str):
            return None
        with self._read() as conn:
            row = conn.execute(
                "SELECT room_id, display_name, created_at FROM rooms WHERE room_id = ?",
                (room_id,),
            ).fetchone()
        return Room(*row) if row else None

    def list_rooms(self) -> list[Room]:
        """Return every room, ordered by id."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT room_id, display_name, created_at FROM rooms ORDER BY room_id"
            ).fetchall()
        return [Room(*row) for row in rows]

    def delete_room(self, room_id: str) -> bool:
        """Delete a room.

        :returns: ``False`` when there was no such room.
        """
        if not isinstance(room_id, str):
            return False
        with self._write() as conn:
            return conn.execute("DELETE FROM rooms WHERE room_id = ?", (room_id,)).rowcount > 0

    # -- call records ---------------------------------------------------------

    def add_call_record(self, record: Mapping[str, Any]) -> None:
        """Append a call record.

        The record is stored as a JSON object as given; its ``call_id`` (when a
        string) is also indexed. Typical fields: ``call_id``, ``session_id``,
        ``direction``, ``number``, ``caller``, ``start``, ``answer``, ``end``,
        ``status``, ``reason``.

        :param record: a mapping with string keys and JSON values (no NaN).
        :raises InvalidValue: ``record`` is not such a mapping.
        """
        if not isinstance(record, Mapping):
            raise InvalidValue("record", "must be a mapping")
        if not all(isinstance(k, str) for k in record):
            raise InvalidValue("record", "keys must be strings")
        try:
            data = json.dumps(dict(record), allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise InvalidValue("record", f"must be JSON-serialisable: {exc}") from None
        call_id = record.get("call_id")
        with self._write() as conn:
            conn.execute(
                "INSERT INTO call_records (call_id, data) VALUES (?, ?)",
                (call_id if isinstance(call_id, str) else None, data),
            )

    def list_call_records(self, limit: int = 100) -> list[dict[str, Any]]:
        """Return the newest call records, newest first.

        :param limit: how many at most (1-1000).
        """
        _check_count("limit", limit, 1, _MAX_LIMIT)
        with self._read() as conn:
            rows = conn.execute(
                "SELECT data FROM call_records ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        result: list[dict[str, Any]] = [json.loads(row[0]) for row in rows]
        return result
