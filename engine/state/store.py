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
``sip_realm`` -- only for users with ``sip`` enabled: an HA1 is a
password-equivalent for SIP and MD5 is cheap to guess against, so web-only
users (and guests) keep nothing but the scrypt hash. **Changing the realm invalidates every stored HA1**: users must
have their passwords reset (or log in once through :meth:`SqliteStore.verify_password`,
which recomputes the HA1 values for the current realm); until then
:meth:`Store.sip_ha1` returns ``None`` for them.

.. rubric:: Room PINs

A room's phone PINs are stored as ``h1:`` and HMAC-SHA256 under
``pin_key`` (the engine derives it from its master key, which is not in the
database): deterministic, so :meth:`SqliteStore.find_room_by_pin` is one
index lookup, and a copy of the database does not reveal them, nor can
they be tried against it offline without the key. :class:`Room` carries
only the hashes; a PIN is shown once, by whoever created it. PINs stored
in clear by an older version are hashed when the database is opened with
a key.

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
    "API_SCOPES",
    "ApiKey",
    "DEFAULT_FILENAME",
    "Delivery",
    "Invite",
    "InviteRefused",
    "Webhook",
    "GUEST_HASH",
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

#: The password hash of a user made by :meth:`SqliteStore.create_guest`: no
#: scrypt string (it has no ``$``), so no password ever matches it.
GUEST_HASH = "!guest"

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
    :param sip: whether the user may REGISTER (digest HA1 values are kept).
    """

    name: str
    display_name: str | None
    created_at: float
    sip: bool = False


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
    max_participants: int | None = None
    record_on_start: bool = False
    #: Keyed hashes of the PINs (never the PINs): see the module documentation.
    pin_hash: str | None = None
    moderator_pin_hash: str | None = None
    end_when_empty_after: float | None = None
    starts_at: float | None = None
    duration: float | None = None
    ended_at: float | None = None
    locked: bool = False

    @property
    def has_pin(self) -> bool:
        """Whether phone callers need a PIN (else they join by the room's id)."""
        return self.pin_hash is not None

    @property
    def ends_at(self) -> float | None:
        """When the schedule ends the room (``None``: no end time)."""
        if self.duration is None:
            return None
        return (self.starts_at if self.starts_at is not None else self.created_at) + self.duration

    def state(self, now: float) -> str:
        """``"scheduled"`` before its start, ``"ended"`` once ended (by a
        call to :meth:`Store.end_room` or because its time is up), else ``"open"``."""
        if self.ended_at is not None:
            return "ended"
        ends_at = self.ends_at
        if ends_at is not None and now >= ends_at:
            return "ended"
        if self.starts_at is not None and now < self.starts_at:
            return "scheduled"
        return "open"


@dataclass(frozen=True)
class ApiKey:
    """A management API key (its secret is only kept hashed).

    :param key_id: the public half, ``cbk_`` and 16 hex digits.
    :param scopes: what it may do (``admin``, ``calls``, ``users``).
    :param name: a label, or ``None``.
    :param created_at: creation time.
    """

    key_id: str
    scopes: tuple[str, ...]
    name: str | None
    created_at: float


@dataclass(frozen=True)
class Invite:
    """A one-time invitation into a room; its code and link token are kept hashed.

    :param permissions: what the join token it redeems to may do.
    :param used_at: when it was redeemed, or ``None``.
    :param attempts: wrong codes tried against it (it locks at ``max_attempts``).
    """

    invite_id: str
    room_id: str
    invitee: str
    display_name: str | None
    role: str
    permissions: tuple[str, ...]
    created_at: float
    expires_at: float
    used_at: float | None
    attempts: int
    max_attempts: int

    def state(self, now: float) -> str:
        """``used``, ``locked``, ``expired`` or ``pending``."""
        if self.used_at is not None:
            return "used"
        if self.attempts >= self.max_attempts:
            return "locked"
        if now >= self.expires_at:
            return "expired"
        return "pending"


class InviteRefused(StoreError):
    """An invite cannot be redeemed: ``code`` is ``invalid_code``,
    ``invite_used``, ``invite_expired`` or ``invite_locked``."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class Webhook:
    """A URL subscribed to events; ``secret`` signs its deliveries."""

    webhook_id: str
    url: str
    events: tuple[str, ...]
    secret: str
    created_at: float


@dataclass(frozen=True)
class Delivery:
    """One event POSTed (or to be POSTed) to one webhook.

    :param status: ``pending``, ``delivered`` or ``failed`` (attempts used up).
    :param seq: the order in which deliveries were queued.
    """

    delivery_id: str
    seq: int
    webhook_id: str
    event: str
    payload: str
    created_at: float
    status: str
    attempts: int
    next_attempt_at: float | None
    last_code: int | None
    last_error: str | None
    delivered_at: float | None


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

    def create_user(self, name: str, password: str, display_name: str | None = None, *,
                    sip: bool = False) -> User:
        """Create a user (``sip``: may REGISTER). :raises UserExists: the name is taken (any case)."""
        ...

    def create_guest(self, name: str, display_name: str | None = None) -> User:
        """Create a user that has no password (a web guest): no login by
        password or SIP digest. :raises UserExists: the name is taken."""
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
        self, name: str, *, password: str | None = None, display_name: str | None = None,
        sip: bool | None = None,
    ) -> User:
        """Change what is given (``display_name=""`` clears it; enabling
        ``sip`` needs the ``password``).

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

    def create_room(
        self, room_id: str, *, display_name: str | None = None,
        max_participants: int | None = None, record_on_start: bool = False,
        pin: str | None = None, moderator_pin: str | None = None,
        end_when_empty_after: float | None = None, starts_at: float | None = None,
        duration: float | None = None,
    ) -> Room:
        """Create a room. :raises RoomExists: the id is taken."""
        ...

    def get_room(self, room_id: str) -> Room | None:
        """Return the room, or ``None``."""
        ...

    def list_rooms(self, offset: int = 0, limit: int = 1000) -> list[Room]:
        """Return rooms ordered by id, ``limit`` (1-1000) from ``offset``."""
        ...

    def count_rooms(self) -> int:
        """Return the number of rooms."""
        ...

    def end_room(self, room_id: str, now: float) -> Room | None:
        """Mark a room ended at ``now`` (kept if it was already); ``None``: no such room."""
        ...

    def set_room_locked(self, room_id: str, locked: bool) -> Room | None:
        """Lock (no one new joins) or unlock a room; ``None``: no such room."""
        ...

    def find_room_by_pin(self, pin: str) -> tuple[Room, str] | None:
        """The room a phone PIN opens and the role it gives (``guest`` or ``moderator``)."""
        ...

    def room_pin_role(self, room_id: str, pin: str) -> str | None:
        """The role ``pin`` gives in room ``room_id`` (constant-time), or ``None``."""
        ...

    def delete_room(self, room_id: str) -> bool:
        """Delete a room and its invites; ``False`` when there was none."""
        ...

    # management API keys

    def create_api_key(self, scopes: tuple[str, ...] | list[str], name: str | None = None) -> tuple[ApiKey, str]:
        """Create a key; return it and its secret (shown once, kept hashed)."""
        ...

    def verify_api_key(self, key_id: str, secret: str) -> ApiKey | None:
        """The key when ``secret`` is its secret, else ``None`` (constant time)."""
        ...

    def list_api_keys(self) -> list[ApiKey]:
        """Every key, oldest first."""
        ...

    def delete_api_key(self, key_id: str) -> bool:
        """Revoke a key; ``False`` when there was none."""
        ...

    # invites

    def create_invite(
        self, room_id: str, invitee: str, *, display_name: str | None, role: str,
        permissions: tuple[str, ...] | list[str], code_hash: str, link_hash: str,
        expires_at: float, max_attempts: int, now: float,
    ) -> Invite:
        """Store an invite (its code and link token already hashed by the caller).

        :raises InvalidValue: ``code_hash`` or ``link_hash`` is taken (draw another code).
        """
        ...

    def get_invite(self, invite_id: str) -> Invite | None:
        """Return the invite, or ``None``."""
        ...

    def list_invites(self, room_id: str) -> list[Invite]:
        """A room's invites, oldest first."""
        ...

    def delete_invite(self, invite_id: str) -> bool:
        """Revoke an invite; ``False`` when there was none."""
        ...

    def redeem_invite(
        self, *, code_hash: str | None = None, link_hash: str | None = None,
        room_id: str | None = None, now: float,
    ) -> Invite:
        """Use an invite up. A wrong code for ``room_id`` counts as one failed
        attempt against each of the room's pending invites.

        :raises InviteRefused: with ``code`` saying why.
        """
        ...

    # webhooks

    def create_webhook(self, url: str, events: tuple[str, ...] | list[str]) -> Webhook:
        """Subscribe ``url`` to ``events`` (``*``: all) with a new signing secret."""
        ...

    def get_webhook(self, webhook_id: str) -> Webhook | None:
        """Return the webhook, or ``None``."""
        ...

    def list_webhooks(self) -> list[Webhook]:
        """Every webhook, oldest first."""
        ...

    def delete_webhook(self, webhook_id: str) -> bool:
        """Unsubscribe (its deliveries go too); ``False`` when there was none."""
        ...

    def enqueue_event(self, event: str, payload: str, now: float) -> list[Delivery]:
        """Queue one pending delivery of ``payload`` (JSON text) per subscribed webhook."""
        ...

    def pending_deliveries(self, limit: int = 100) -> list[Delivery]:
        """Pending deliveries in the order they were queued."""
        ...

    def get_delivery(self, delivery_id: str) -> Delivery | None:
        """Return the delivery, or ``None``."""
        ...

    def list_deliveries(self, webhook_id: str, limit: int = 100) -> list[Delivery]:
        """A webhook's deliveries, newest first."""
        ...

    def record_delivery_attempt(
        self, delivery_id: str, *, delivered: bool, code: int | None, error: str | None,
        next_attempt_at: float | None, now: float,
    ) -> Delivery | None:
        """Count one attempt: delivered, pending again at ``next_attempt_at``, or
        failed for good (``next_attempt_at=None``)."""
        ...

    def replay_delivery(self, delivery_id: str, now: float) -> Delivery | None:
        """Make a delivery pending again, due at ``now``, with its attempts reset."""
        ...

    # call records

    def add_call_record(self, record: Mapping[str, Any]) -> None:
        """Append a call record (a JSON object: call_id, session_id, direction,
        number, caller, start, answer, end, status, reason, ...)."""
        ...

    def list_call_records(
        self, limit: int = 100, *, offset: int = 0, session_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Return the newest ``limit`` (1-1000) records from ``offset``, newest
        first, only those of ``session_id`` when given."""
        ...

    def count_call_records(self, *, session_id: str | None = None) -> int:
        """Return the number of call records (of ``session_id`` when given)."""
        ...


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


#: What a management API key may be allowed to do: ``admin`` everything,
#: ``calls`` rooms, invites, sessions, rules and call records, ``users`` users.
API_SCOPES = ("admin", "calls", "users")

_PIN_RE = re.compile(r"[0-9]{4,16}")

_USER_COLUMNS = "name, display_name, created_at, sip"


def _user(row: tuple[Any, ...]) -> User:
    return User(row[0], row[1], row[2], bool(row[3]))


_ROOM_COLUMNS = (
    "room_id, display_name, created_at, max_participants, record_on_start, pin, moderator_pin,"
    " end_when_empty_after, starts_at, duration, ended_at, locked"
)
_INVITE_COLUMNS = (
    "invite_id, room_id, invitee, display_name, role, permissions, created_at, expires_at,"
    " used_at, attempts, max_attempts"
)
_DELIVERY_COLUMNS = (
    "delivery_id, seq, webhook_id, event, payload, created_at, status, attempts,"
    " next_attempt_at, last_code, last_error, delivered_at"
)


def _room(row: tuple[Any, ...]) -> Room:
    values = list(row)
    values[4] = bool(values[4])
    values[11] = bool(values[11])
    return Room(*values)


def _invite(row: tuple[Any, ...]) -> Invite:
    values = list(row)
    values[5] = tuple(json.loads(values[5]))
    return Invite(*values)


def _webhook(row: tuple[Any, ...]) -> Webhook:
    return Webhook(row[0], row[1], tuple(json.loads(row[2])), row[3], row[4])


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _private_file(path: Path) -> None:
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


def _check_scopes(scopes: object) -> tuple[str, ...]:
    if not isinstance(scopes, (list, tuple)) or not scopes:
        raise InvalidValue("scopes", f"must be a non-empty list of {', '.join(API_SCOPES)}")
    for scope in scopes:
        if scope not in API_SCOPES:
            raise InvalidValue("scopes", f"must be among {', '.join(API_SCOPES)} (got {scope!r})")
    return tuple(dict.fromkeys(scopes))


# -- SQLite -------------------------------------------------------------------


class SqliteStore:
    """:class:`Store` on one SQLite database.

    :param path: the database file (its directory is created when missing),
        or ``":memory:"`` for a private in-memory database.
    :param sip_realm: the realm for which SIP digest HA1 values are kept; see
        the module documentation before changing it.
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
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                _private_file(self.path)
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

    def _hash_clear_pins(self, conn: sqlite3.Connection) -> None:
        """Replace PINs an older version stored in clear by their hashes."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute(
                "SELECT room_id, pin, moderator_pin FROM rooms WHERE pin NOT LIKE 'h1:%'"
                " OR moderator_pin NOT LIKE 'h1:%'"
            ).fetchall()
            for room_id, pin, moderator_pin in rows:
                conn.execute(
                    "UPDATE rooms SET pin = ?, moderator_pin = ? WHERE room_id = ?",
                    (self._stored_pin(pin), self._stored_pin(moderator_pin), room_id),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _stored_pin(self, value: str | None) -> str | None:
        if value is None or value.startswith("h1:"):
            return value
        return self.pin_hash(value)

    def pin_hash(self, pin: str) -> str:
        """What is stored of a room PIN: ``h1:`` and HMAC-SHA256 under ``pin_key``."""
        return "h1:" + hmac.new(self._pin_key, pin.encode("utf-8"), hashlib.sha256).hexdigest()

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

    def _secrets_for(self, name: str, password: str, sip: bool) -> tuple[str, str, str, str]:
        """Return (password_hash, realm, ha1_md5, ha1_sha256); slow (scrypt).
        The HA1 values are empty unless ``sip``."""
        realm = self.sip_realm
        if not sip:
            return _hash_password(password, self._params), realm, "", ""
        return (
            _hash_password(password, self._params),
            realm,
            _ha1("MD5", name, realm, password),
            _ha1("SHA-256", name, realm, password),
        )

    def create_user(self, name: str, password: str, display_name: str | None = None, *,
                    sip: bool = False) -> User:
        """Create a user with a password and an optional display name.

        :param name: 1-64 characters of ``A-Z a-z 0-9 . _ -``.
        :param password: 1-1024 characters.
        :param display_name: up to 128 characters without control characters;
            ``""`` is stored as ``None``.
        :param sip: whether the user may REGISTER; only then are SIP digest
            HA1 values kept.
        :raises UserExists: a user of that name exists (compared case-insensitively).
        :raises InvalidValue: a malformed argument.
        """
        _check_name(name)
        _check_password(password)
        display_name = _check_display_name(display_name)
        if not isinstance(sip, bool):
            raise InvalidValue("sip", "must be a boolean")
        if self._find_nocase(name):  # fail fast, before the slow hash
            raise UserExists(name)
        password_hash, realm, md5, sha256 = self._secrets_for(name, password, sip)
        created_at = self._clock()
        try:
            with self._write() as conn:
                conn.execute(
                    "INSERT INTO users (name, display_name, created_at, password_hash,"
                    " ha1_realm, ha1_md5, ha1_sha256, sip) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (name, display_name, created_at, password_hash, realm, md5, sha256, int(sip)),
                )
        except StoreError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise UserExists(name) from None
            raise
        return User(name, display_name, created_at, sip)

    def create_guest(self, name: str, display_name: str | None = None) -> User:
        """Create a user without a password: a web guest's profile.

        Nothing is hashed (a guest login must cost no scrypt work): the
        password hash is the marker :data:`GUEST_HASH`, which is no scrypt
        string, so :meth:`verify_password` refuses every password, and the
        HA1 values are empty for no realm, so :meth:`sip_ha1` finds none.
        :meth:`update_user` with a password makes it an ordinary user.

        :param name: as for :meth:`create_user`.
        :param display_name: as for :meth:`create_user`.
        :raises UserExists: a user of that name exists (any case).
        :raises InvalidValue: a malformed argument.
        """
        _check_name(name)
        display_name = _check_display_name(display_name)
        created_at = self._clock()
        try:
            with self._write() as conn:
                conn.execute(
                    "INSERT INTO users (name, display_name, created_at, password_hash,"
                    " ha1_realm, ha1_md5, ha1_sha256, sip) VALUES (?, ?, ?, ?, '', '', '', 0)",
                    (name, display_name, created_at, GUEST_HASH),
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
                f"SELECT {_USER_COLUMNS} FROM users WHERE name = ?", (name,)
            ).fetchone()
        return _user(row) if row else None

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
                f"SELECT {_USER_COLUMNS} FROM users ORDER BY name LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        return [_user(row) for row in rows]

    def count_users(self) -> int:
        """Return the number of users."""
        with self._read() as conn:
            return int(conn.execute("SELECT count(*) FROM users").fetchone()[0])

    def update_user(
        self, name: str, *, password: str | None = None, display_name: str | None = None,
        sip: bool | None = None,
    ) -> User:
        """Change a user's password, display name and/or SIP access; ``None``
        leaves a field as it is.

        A new password also recomputes the SIP HA1 values for the current
        realm (for a SIP user). Disabling SIP erases the HA1 values; enabling
        it needs the password, since they are computed from it.

        :param name: the user, exactly.
        :param password: the new password (1-1024 characters).
        :param display_name: the new display name; ``""`` clears it.
        :param sip: whether the user may REGISTER.
        :raises UserNotFound: no user of that name.
        :raises InvalidValue: a malformed argument, or ``sip=True`` without ``password``.
        """
        if not isinstance(name, str):
            raise InvalidValue("name", "must be a string")
        if password is not None:
            _check_password(password)
        if sip is not None and not isinstance(sip, bool):
            raise InvalidValue("sip", "must be a boolean")
        new_display = _check_display_name(display_name)
        user = self.get_user(name)
        if user is None:  # fail fast, before the slow hash
            raise UserNotFound(name)
        if sip and not user.sip and password is None:
            raise InvalidValue("sip", "enabling SIP needs the password (the digest hashes are made from it)")
        sip_after = user.sip if sip is None else sip
        secrets_ = self._secrets_for(name, password, sip_after) if password is not None else None
        with self._write() as conn:
            if display_name is not None:
                conn.execute(
                    "UPDATE users SET display_name = ? WHERE name = ?", (new_display, name)
                )
            if secrets_ is not None:
                conn.execute(
                    "UPDATE users SET password_hash = ?, ha1_realm = ?, ha1_md5 = ?,"
                    " ha1_sha256 = ?, sip = ? WHERE name = ?",
                    (*secrets_, int(sip_after), name),
                )
            elif sip is False:
                conn.execute(
                    "UPDATE users SET ha1_md5 = '', ha1_sha256 = '', sip = 0 WHERE name = ?", (name,)
                )
            row = conn.execute(
                f"SELECT {_USER_COLUMNS} FROM users WHERE name = ?", (name,)
            ).fetchone()
            if row is None:  # deleted meanwhile by another thread
                raise UserNotFound(name)
        return _user(row)

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
                    "SELECT password_hash, ha1_realm, sip FROM users WHERE name = ?", (name,)
                ).fetchone()
        if row is None:
            self._burn(password)
            return False
        encoded, realm, sip = row
        try:
            params, salt, expected = _parse_hash(encoded)
        except (ValueError, KeyError, StoreError):
            self._burn(password)
            return False
        actual = _scrypt(password, salt, params, len(expected))
        if not hmac.compare_digest(actual, expected):
            return False
        if params != self._params or (sip and realm != self.sip_realm):
            new = self._secrets_for(name, password, bool(sip))
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
        :returns: ``None`` for an unknown user, a user without SIP access,
            another realm, or a user whose HA1 values were made for a former realm.
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
                f"SELECT {column} FROM users WHERE name = ? AND ha1_realm = ? AND sip = 1"
                f" AND {column} != ''", (name, realm)
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

    def create_room(
        self, room_id: str, *, display_name: str | None = None,
        max_participants: int | None = None, record_on_start: bool = False,
        pin: str | None = None, moderator_pin: str | None = None,
        end_when_empty_after: float | None = None, starts_at: float | None = None,
        duration: float | None = None,
    ) -> Room:
        """Create a room.

        :param room_id: 1-32 characters of ``A-Z a-z 0-9`` (case-sensitive).
        :param display_name: as for users.
        :param max_participants: at most this many in at once (1-10000), ``None``: no cap.
        :param record_on_start: whether the conference records from its start.
        :param pin: 4-16 digits phone callers enter to join (``None``: the room
            id, when it is all digits, as before rooms had PINs). Only its
            keyed hash is kept; a PIN is unique among rooms (PINs, moderator
            PINs and the ids of rooms without a PIN).
        :param moderator_pin: 4-16 digits that join as a moderator.
        :param end_when_empty_after: seconds after the last participant left
            when the room ends (``None``: it stays open).
        :param starts_at: when joins are first allowed (``None``: at once).
        :param duration: seconds from ``starts_at`` (or creation) when the room ends.
        :raises RoomExists: the id is taken.
        :raises InvalidValue: a malformed argument, or a PIN in use by another room.
        """
        _check_room_id(room_id)
        display_name = _check_display_name(display_name)
        if max_participants is not None:
            _check_count("max_participants", max_participants, 1, 10000)
        if not isinstance(record_on_start, bool):
            raise InvalidValue("record_on_start", "must be a boolean")
        for field, value in (("pin", pin), ("moderator_pin", moderator_pin)):
            if value is not None and (not isinstance(value, str) or _PIN_RE.fullmatch(value) is None):
                raise InvalidValue(field, "must be 4 to 16 digits")
        if pin is not None and pin == moderator_pin:
            raise InvalidValue("moderator_pin", "must differ from pin")
        if end_when_empty_after is not None:
            end_when_empty_after = _check_time("end_when_empty_after", end_when_empty_after)
            if end_when_empty_after < 0:
                raise InvalidValue("end_when_empty_after", "must be 0 or more seconds")
        if starts_at is not None:
            starts_at = _check_time("starts_at", starts_at)
        if duration is not None:
            duration = _check_time("duration", duration)
            if duration <= 0:
                raise InvalidValue("duration", "must be more than 0 seconds")
        created_at = self._clock()
        pin_hash = self.pin_hash(pin) if pin is not None else None
        moderator_hash = self.pin_hash(moderator_pin) if moderator_pin is not None else None
        try:
            with self._write() as conn:
                if conn.execute("SELECT 1 FROM rooms WHERE room_id = ?", (room_id,)).fetchone():
                    raise RoomExists(room_id)
                for field, value, hashed in (("pin", pin, pin_hash),
                                             ("moderator_pin", moderator_pin, moderator_hash)):
                    if value is not None and conn.execute(
                        "SELECT 1 FROM rooms WHERE pin = ? OR moderator_pin = ?"
                        " OR (room_id = ? AND pin IS NULL)", (hashed, hashed, value),
                    ).fetchone():
                        raise InvalidValue(field, "is in use by another room")
                if pin is None and conn.execute(
                    "SELECT 1 FROM rooms WHERE pin = ? OR moderator_pin = ?",
                    (self.pin_hash(room_id), self.pin_hash(room_id)),
                ).fetchone():
                    # Joined by its id, it would collide with another room's PIN.
                    raise InvalidValue("pin", f"is needed: room id {room_id!r} is another room's PIN")
                conn.execute(
                    f"INSERT INTO rooms ({_ROOM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, 0)",
                    (room_id, display_name, created_at, max_participants, int(record_on_start),
                     pin_hash, moderator_hash, end_when_empty_after, starts_at, duration),
                )
        except StoreError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise RoomExists(room_id) from None
            raise
        return Room(room_id, display_name, created_at, max_participants, record_on_start, pin_hash,
                    moderator_hash, end_when_empty_after, starts_at, duration, None, False)

    def get_room(self, room_id: str) -> Room | None:
        """Return the room, or ``None``.

        :param room_id: the id, exactly.
        """
        if not isinstance(room_id, str):
            return None
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_ROOM_COLUMNS} FROM rooms WHERE room_id = ?", (room_id,)
            ).fetchone()
        return _room(row) if row else None

    def list_rooms(self, offset: int = 0, limit: int = 1000) -> list[Room]:
        """Return rooms ordered by id.

        :param offset: how many to skip (0 or more).
        :param limit: how many at most (1-1000).
        """
        _check_count("offset", offset, 0, None)
        _check_count("limit", limit, 1, _MAX_LIMIT)
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_ROOM_COLUMNS} FROM rooms ORDER BY room_id LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        return [_room(row) for row in rows]

    def count_rooms(self) -> int:
        """Return the number of rooms."""
        with self._read() as conn:
            return int(conn.execute("SELECT count(*) FROM rooms").fetchone()[0])

    def end_room(self, room_id: str, now: float) -> Room | None:
        """Mark a room ended at ``now``; an ended room keeps its first end time.

        :returns: the room, or ``None`` when there is no such room.
        """
        now = _check_time("now", now)
        if not isinstance(room_id, str):
            return None
        with self._write() as conn:
            conn.execute(
                "UPDATE rooms SET ended_at = ? WHERE room_id = ? AND ended_at IS NULL",
                (now, room_id),
            )
        return self.get_room(room_id)

    def set_room_locked(self, room_id: str, locked: bool) -> Room | None:
        """Lock or unlock a room.

        :returns: the room, or ``None`` when there is no such room.
        """
        if not isinstance(locked, bool):
            raise InvalidValue("locked", "must be a boolean")
        if not isinstance(room_id, str):
            return None
        with self._write() as conn:
            conn.execute("UPDATE rooms SET locked = ? WHERE room_id = ?", (int(locked), room_id))
        return self.get_room(room_id)

    def find_room_by_pin(self, pin: str) -> tuple[Room, str] | None:
        """The room a phone PIN opens, and the role it gives.

        A room's ``pin`` gives ``guest``, its ``moderator_pin`` gives
        ``moderator``; a room without a ``pin`` is opened by its id.

        :returns: ``(room, role)``, or ``None``.
        """
        if not isinstance(pin, str) or not pin or len(pin) > 64:
            return None
        hashed = self.pin_hash(pin)
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_ROOM_COLUMNS} FROM rooms WHERE pin = ? OR moderator_pin = ?"
                " OR (room_id = ? AND pin IS NULL) ORDER BY pin = ? DESC LIMIT 1",
                (hashed, hashed, pin, hashed),
            ).fetchone()
        if row is None:
            return None
        room = _room(row)
        moderator = room.moderator_pin_hash is not None and hmac.compare_digest(
            room.moderator_pin_hash, hashed)
        return room, "moderator" if moderator else "guest"

    def room_pin_role(self, room_id: str, pin: str) -> str | None:
        """The role ``pin`` gives in room ``room_id``: ``guest`` for its PIN
        (or its id, when it has no PIN), ``moderator`` for its moderator
        PIN, else ``None``. Compared in constant time.
        """
        room = self.get_room(room_id)
        if room is None or not isinstance(pin, str) or not pin or len(pin) > 64:
            return None
        hashed = self.pin_hash(pin)
        is_moderator = hmac.compare_digest(room.moderator_pin_hash or "", hashed)
        if room.pin_hash is None:
            is_guest = hmac.compare_digest(room.room_id.encode(), pin.encode("utf-8"))
        else:
            is_guest = hmac.compare_digest(room.pin_hash, hashed)
        return "moderator" if is_moderator else "guest" if is_guest else None

    def delete_room(self, room_id: str) -> bool:
        """Delete a room and its invites.

        :returns: ``False`` when there was no such room.
        """
        if not isinstance(room_id, str):
            return False
        with self._write() as conn:
            conn.execute("DELETE FROM invites WHERE room_id = ?", (room_id,))
            return conn.execute("DELETE FROM rooms WHERE room_id = ?", (room_id,)).rowcount > 0

    # -- API keys -------------------------------------------------------------

    def create_api_key(
        self, scopes: tuple[str, ...] | list[str], name: str | None = None
    ) -> tuple[ApiKey, str]:
        """Create a management API key.

        The secret is 256 random bits, so one SHA-256 of it is a safe record
        (a slow hash guards guessable passwords, not random keys).

        :param scopes: one or more of :data:`API_SCOPES`.
        :param name: a label (as a display name).
        :returns: the key and its secret, which is not kept and cannot be shown again.
        """
        scopes = _check_scopes(scopes)
        name = _check_display_name(name)
        key_id = "cbk_" + secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        created_at = self._clock()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO api_keys (key_id, secret_hash, scopes, name, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (key_id, _sha256(secret), ",".join(scopes), name, created_at),
            )
        return ApiKey(key_id, scopes, name, created_at), secret

    def verify_api_key(self, key_id: str, secret: str) -> ApiKey | None:
        """The key when ``secret`` is its secret (compared in constant time), else ``None``."""
        if not isinstance(key_id, str) or not isinstance(secret, str):
            return None
        with self._read() as conn:
            row = conn.execute(
                "SELECT key_id, scopes, name, created_at, secret_hash FROM api_keys WHERE key_id = ?",
                (key_id,),
            ).fetchone()
        expected = row[4] if row else _sha256("")
        if not hmac.compare_digest(_sha256(secret), expected) or row is None:
            return None
        return ApiKey(row[0], tuple(row[1].split(",")), row[2], row[3])

    def list_api_keys(self) -> list[ApiKey]:
        """Every key, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT key_id, scopes, name, created_at FROM api_keys ORDER BY rowid"
            ).fetchall()
        return [ApiKey(r[0], tuple(r[1].split(",")), r[2], r[3]) for r in rows]

    def delete_api_key(self, key_id: str) -> bool:
        """Revoke a key; ``False`` when there was none."""
        if not isinstance(key_id, str):
            return False
        with self._write() as conn:
            return conn.execute("DELETE FROM api_keys WHERE key_id = ?", (key_id,)).rowcount > 0

    # -- invites --------------------------------------------------------------

    def create_invite(
        self, room_id: str, invitee: str, *, display_name: str | None, role: str,
        permissions: tuple[str, ...] | list[str], code_hash: str, link_hash: str,
        expires_at: float, max_attempts: int, now: float,
    ) -> Invite:
        """Store an invite whose code and link token the caller drew and hashed.

        :raises InvalidValue: a malformed argument, or ``code_hash`` /
            ``link_hash`` already taken (draw another code and retry).
        """
        _check_room_id(room_id)
        _check_text("invitee", invitee, 1, 256)
        display_name = _check_display_name(display_name)
        _check_text("role", role, 1, 32)
        perms = tuple(_check_text("permissions", p, 1, 64) for p in permissions)
        _check_text("code_hash", code_hash, 16, 128)
        _check_text("link_hash", link_hash, 16, 128)
        expires_at = _check_time("expires_at", expires_at)
        _check_count("max_attempts", max_attempts, 1, 1000)
        now = _check_time("now", now)
        invite_id = "inv_" + secrets.token_hex(8)
        try:
            with self._write() as conn:
                conn.execute(
                    f"INSERT INTO invites ({_INVITE_COLUMNS}, code_hash, link_hash)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, 0, ?, ?, ?)",
                    (invite_id, room_id, invitee, display_name, role, json.dumps(perms), now,
                     expires_at, max_attempts, code_hash, link_hash),
                )
        except StoreError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise InvalidValue("code_hash", "is taken") from None
            raise
        return Invite(invite_id, room_id, invitee, display_name, role, perms, now, expires_at,
                      None, 0, max_attempts)

    def get_invite(self, invite_id: str) -> Invite | None:
        """Return the invite, or ``None``."""
        if not isinstance(invite_id, str):
            return None
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_INVITE_COLUMNS} FROM invites WHERE invite_id = ?", (invite_id,)
            ).fetchone()
        return _invite(row) if row else None

    def list_invites(self, room_id: str) -> list[Invite]:
        """A room's invites, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_INVITE_COLUMNS} FROM invites WHERE room_id = ?"
                " ORDER BY rowid", (room_id,),
            ).fetchall()
        return [_invite(row) for row in rows]

    def delete_invite(self, invite_id: str) -> bool:
        """Revoke an invite; ``False`` when there was none."""
        if not isinstance(invite_id, str):
            return False
        with self._write() as conn:
            return conn.execute(
                "DELETE FROM invites WHERE invite_id = ?", (invite_id,)
            ).rowcount > 0

    def redeem_invite(
        self, *, code_hash: str | None = None, link_hash: str | None = None,
        room_id: str | None = None, now: float,
    ) -> Invite:
        """Use an invite up, found by its code's or its link token's hash.

        A code that matches nothing (or an invite of another room) while
        ``room_id`` is given counts one failed attempt against every
        pending invite of that room: a guesser locks the room's invites
        after their ``max_attempts``, long before 10**8 codes are tried.

        :raises InviteRefused: ``invalid_code``, ``invite_used``,
            ``invite_expired`` or ``invite_locked``.
        """
        now = _check_time("now", now)
        if (code_hash is None) == (link_hash is None):
            raise InvalidValue("code", "give a code or a link token")
        refused: InviteRefused | None = None
        invite: Invite | None = None
        with self._write() as conn:
            column, value = ("code_hash", code_hash) if code_hash is not None else ("link_hash", link_hash)
            row = conn.execute(
                f"SELECT {_INVITE_COLUMNS} FROM invites WHERE {column} = ?", (value,)
            ).fetchone()
            found = _invite(row) if row else None
            if found is None or (room_id is not None and found.room_id != room_id):
                if room_id is not None:
                    conn.execute(
                        "UPDATE invites SET attempts = attempts + 1 WHERE room_id = ?"
                        " AND used_at IS NULL", (room_id,),
                    )
                refused = InviteRefused("invalid_code", "no invite has this code")
            else:
                state = found.state(now)
                if state == "pending":
                    conn.execute(
                        "UPDATE invites SET used_at = ? WHERE invite_id = ?", (now, found.invite_id)
                    )
                    invite = Invite(**{**found.__dict__, "used_at": now})
                else:
                    messages = {
                        "used": "this invite was already used",
                        "locked": "this invite is locked after too many wrong codes",
                        "expired": "this invite has expired",
                    }
                    refused = InviteRefused(f"invite_{state}", messages[state])
        if refused is not None:
            raise refused
        assert invite is not None
        return invite

    # -- webhooks -------------------------------------------------------------

    def create_webhook(self, url: str, events: tuple[str, ...] | list[str]) -> Webhook:
        """Subscribe ``url`` to ``events`` with a new signing secret.

        :param url: up to 2048 characters (the API checks it is http or https).
        :param events: event names, ``*`` for every event.
        """
        _check_text("url", url, 1, 2048)
        if not isinstance(events, (list, tuple)) or not events:
            raise InvalidValue("events", "must be a non-empty list of event names")
        names = tuple(_check_text("events", e, 1, 64) for e in events)
        webhook_id = "wh_" + secrets.token_hex(8)
        secret = "whsec_" + secrets.token_urlsafe(32)
        created_at = self._clock()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO webhooks (webhook_id, url, events, secret, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (webhook_id, url, json.dumps(names), secret, created_at),
            )
        return Webhook(webhook_id, url, names, secret, created_at)

    def get_webhook(self, webhook_id: str) -> Webhook | None:
        """Return the webhook, or ``None``."""
        if not isinstance(webhook_id, str):
            return None
        with self._read() as conn:
            row = conn.execute(
                "SELECT webhook_id, url, events, secret, created_at FROM webhooks"
                " WHERE webhook_id = ?", (webhook_id,),
            ).fetchone()
        return _webhook(row) if row else None

    def list_webhooks(self) -> list[Webhook]:
        """Every webhook, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT webhook_id, url, events, secret, created_at FROM webhooks"
                " ORDER BY rowid"
            ).fetchall()
        return [_webhook(row) for row in rows]

    def delete_webhook(self, webhook_id: str) -> bool:
        """Unsubscribe a webhook and drop its deliveries."""
        if not isinstance(webhook_id, str):
            return False
        with self._write() as conn:
            conn.execute("DELETE FROM webhook_deliveries WHERE webhook_id = ?", (webhook_id,))
            return conn.execute(
                "DELETE FROM webhooks WHERE webhook_id = ?", (webhook_id,)
            ).rowcount > 0

    def enqueue_event(self, event: str, payload: str, now: float) -> list[Delivery]:
        """Queue a pending delivery, due at ``now``, per webhook subscribed to
        ``event`` (or to ``*``).

        :param payload: the JSON text to POST.
        """
        _check_text("event", event, 1, 64)
        _check_text("payload", payload, 2, _MAX_VALUE)
        now = _check_time("now", now)
        queued: list[str] = []
        with self._write() as conn:
            for (webhook_id, events) in conn.execute(
                "SELECT webhook_id, events FROM webhooks ORDER BY rowid"
            ).fetchall():
                names = json.loads(events)
                if event in names or "*" in names:
                    delivery_id = "dlv_" + secrets.token_hex(8)
                    conn.execute(
                        "INSERT INTO webhook_deliveries (delivery_id, webhook_id, event, payload,"
                        " created_at, status, next_attempt_at) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                        (delivery_id, webhook_id, event, payload, now, now),
                    )
                    queued.append(delivery_id)
        return [d for d in (self.get_delivery(i) for i in queued) if d is not None]

    def pending_deliveries(self, limit: int = 100) -> list[Delivery]:
        """Pending deliveries, in the order they were queued."""
        _check_count("limit", limit, 1, _MAX_LIMIT)
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE status = 'pending'"
                " ORDER BY seq LIMIT ?", (limit,),
            ).fetchall()
        return [Delivery(*row) for row in rows]

    def get_delivery(self, delivery_id: str) -> Delivery | None:
        """Return the delivery, or ``None``."""
        if not isinstance(delivery_id, str):
            return None
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE delivery_id = ?",
                (delivery_id,),
            ).fetchone()
        return Delivery(*row) if row else None

    def list_deliveries(self, webhook_id: str, limit: int = 100) -> list[Delivery]:
        """A webhook's deliveries, newest first."""
        _check_count("limit", limit, 1, _MAX_LIMIT)
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = ?"
                " ORDER BY seq DESC LIMIT ?", (webhook_id, limit),
            ).fetchall()
        return [Delivery(*row) for row in rows]

    def record_delivery_attempt(
        self, delivery_id: str, *, delivered: bool, code: int | None, error: str | None,
        next_attempt_at: float | None, now: float,
    ) -> Delivery | None:
        """Count one attempt of a delivery.

        :param delivered: it succeeded (``status`` becomes ``delivered``).
        :param next_attempt_at: when to try again after a failure; ``None``
            gives up (``status`` becomes ``failed``).
        """
        now = _check_time("now", now)
        status = "delivered" if delivered else ("pending" if next_attempt_at is not None else "failed")
        with self._write() as conn:
            conn.execute(
                "UPDATE webhook_deliveries SET attempts = attempts + 1, status = ?,"
                " next_attempt_at = ?, last_code = ?, last_error = ?, delivered_at = ?"
                " WHERE delivery_id = ?",
                (status, None if delivered else next_attempt_at, code, error,
                 now if delivered else None, delivery_id),
            )
        return self.get_delivery(delivery_id)

    def replay_delivery(self, delivery_id: str, now: float) -> Delivery | None:
        """Make a delivery pending again, due at ``now``, attempts reset."""
        now = _check_time("now", now)
        if not isinstance(delivery_id, str):
            return None
        with self._write() as conn:
            conn.execute(
                "UPDATE webhook_deliveries SET status = 'pending', attempts = 0,"
                " next_attempt_at = ?, delivered_at = NULL WHERE delivery_id = ?",
                (now, delivery_id),
            )
        return self.get_delivery(delivery_id)

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

    def list_call_records(
        self, limit: int = 100, *, offset: int = 0, session_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Return the newest call records, newest first.

        :param limit: how many at most (1-1000).
        :param offset: how many to skip (0 or more).
        :param session_id: only the records whose ``session_id`` is this.
        """
        _check_count("limit", limit, 1, _MAX_LIMIT)
        _check_count("offset", offset, 0, None)
        where, args = "", ()  # type: tuple[str, tuple[Any, ...]]
        if session_id is not None:
            where, args = "WHERE json_extract(data, '$.session_id') = ?", (session_id,)
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT data FROM call_records {where} ORDER BY id DESC LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
        result: list[dict[str, Any]] = [json.loads(row[0]) for row in rows]
        return result

    def count_call_records(self, *, session_id: str | None = None) -> int:
        """Return the number of call records (of ``session_id`` when given)."""
        with self._read() as conn:
            if session_id is None:
                row = conn.execute("SELECT count(*) FROM call_records").fetchone()
            else:
                row = conn.execute(
                    "SELECT count(*) FROM call_records WHERE json_extract(data, '$.session_id') = ?",
                    (session_id,),
                ).fetchone()
        return int(row[0])
