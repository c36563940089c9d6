"""Persistent data behind one small interface: users, rooms, key-value, call records.

:class:`Store` is the interface the rest of the engine sees; :class:`SqliteStore`
implements it on the standard library's :mod:`sqlite3` (one file under the data
directory, or ``":memory:"`` for tests). A server database (PostgreSQL) will
implement the same interface when one machine is outgrown (design.md, "Beyond
one machine"); no other module opens the database file.

This package is a leaf: it imports nothing from ``engine`` outside itself. It
is created at start-up and handed to the parts that need it.

What lives where:

* :mod:`~engine.state.store.interface`: :class:`Store`, the protocol;
* :mod:`~engine.state.store.records`: the dataclasses it returns
  (:class:`User`, :class:`Room`, :class:`ApiKey`, :class:`Invite`,
  :class:`Webhook`, :class:`Delivery`, :class:`Preset`) and :data:`API_SCOPES`;
* :mod:`~engine.state.store.errors`: :class:`StoreError` and its kinds;
* :mod:`~engine.state.store.checks`: argument checks, limits, and the rules
  for user names and room ids;
* :mod:`~engine.state.store.passwords`: scrypt hashing (:class:`ScryptParams`)
  and SIP digest HA1 values;
* :mod:`~engine.state.store.migrations`: the schema steps and
  :data:`SCHEMA_VERSION`;
* :mod:`~engine.state.store.connection`: the shared connection, its lock and
  transactions (and the threading rules);
* one module per kind of record, each a part of :class:`SqliteStore`:
  :mod:`~engine.state.store.users`, :mod:`~engine.state.store.storage`
  (key-value), :mod:`~engine.state.store.rooms` (and room PINs),
  :mod:`~engine.state.store.keys` (API keys), :mod:`~engine.state.store.invites`,
  :mod:`~engine.state.store.webhooks`, :mod:`~engine.state.store.call_records`,
  :mod:`~engine.state.store.presets`;
* :mod:`~engine.state.store.sqlite`: :class:`SqliteStore`, which opens the
  database and composes them.
"""

from __future__ import annotations

from engine.state.store.errors import (
    InvalidValue,
    InviteRefused,
    PresetExists,
    RoomExists,
    StoreError,
    UserExists,
    UserNotFound,
)
from engine.state.store.interface import Store
from engine.state.store.migrations import SCHEMA_VERSION
from engine.state.store.passwords import GUEST_HASH, HA1_ALGORITHMS, ScryptParams
from engine.state.store.records import API_SCOPES, ApiKey, Delivery, Invite, Preset, Room, User, Webhook
from engine.state.store.sqlite import DEFAULT_FILENAME, SqliteStore

__all__ = [
    "API_SCOPES",
    "ApiKey",
    "DEFAULT_FILENAME",
    "Delivery",
    "Invite",
    "InviteRefused",
    "Preset",
    "PresetExists",
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
