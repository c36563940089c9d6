"""Conference rooms: lifetime, capacity, lock, and the phone PINs that open them.

.. rubric:: Room PINs

A room"s phone PINs are stored as ``h1:`` and HMAC-SHA256 under
``pin_key`` (the engine derives it from its master key, which is not in the
database): deterministic, so :meth:`SqliteRooms.find_room_by_pin` is one
index lookup, and a copy of the database does not reveal them, nor can
they be tried against it offline without the key.
:class:`~engine.state.store.records.Room` carries only the hashes; a PIN is
shown once, by whoever created it. PINs stored in clear by an older version
are hashed when the database is opened with a key
(:meth:`SqliteRooms._hash_clear_pins`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import sqlite3
from typing import Any

from engine.state.store.checks import (
    MAX_LIMIT,
    check_count,
    check_display_name,
    check_room_id,
    check_time,
)
from engine.state.store.connection import SqliteConnection
from engine.state.store.errors import InvalidValue, RoomExists, StoreError
from engine.state.store.records import Room

__all__ = ["SqliteRooms"]

_PIN_RE = re.compile(r"[0-9]{4,16}")

_ROOM_COLUMNS = (
    "room_id, display_name, created_at, max_participants, record_on_start, pin, moderator_pin,"
    " end_when_empty_after, starts_at, duration, ended_at, locked"
)


def _room(row: tuple[Any, ...]) -> Room:
    values = list(row)
    values[4] = bool(values[4])
    values[11] = bool(values[11])
    return Room(*values)


class SqliteRooms(SqliteConnection):
    """The rooms table of :class:`~engine.state.store.SqliteStore`."""

    _pin_key: bytes

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
        check_room_id(room_id)
        display_name = check_display_name(display_name)
        if max_participants is not None:
            check_count("max_participants", max_participants, 1, 10000)
        if not isinstance(record_on_start, bool):
            raise InvalidValue("record_on_start", "must be a boolean")
        for field, value in (("pin", pin), ("moderator_pin", moderator_pin)):
            if value is not None and (not isinstance(value, str) or _PIN_RE.fullmatch(value) is None):
                raise InvalidValue(field, "must be 4 to 16 digits")
        if pin is not None and pin == moderator_pin:
            raise InvalidValue("moderator_pin", "must differ from pin")
        if end_when_empty_after is not None:
            end_when_empty_after = check_time("end_when_empty_after", end_when_empty_after)
            if end_when_empty_after < 0:
                raise InvalidValue("end_when_empty_after", "must be 0 or more seconds")
        if starts_at is not None:
            starts_at = check_time("starts_at", starts_at)
        if duration is not None:
            duration = check_time("duration", duration)
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
        check_count("offset", offset, 0, None)
        check_count("limit", limit, 1, MAX_LIMIT)
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
        now = check_time("now", now)
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

    def update_room(self, room_id: str, changes: dict[str, Any]) -> Room | None:
        """Change a room's settings: ``changes`` maps some of
        ``display_name``, ``max_participants``, ``record_on_start``,
        ``end_when_empty_after``, ``starts_at``, ``duration`` and ``locked``
        to their new values (``None`` clears one that may be unset).

        :returns: the room, or ``None`` when there is no such room.
        :raises InvalidValue: naming the field at fault.
        """
        columns: dict[str, Any] = {}
        for name, value in changes.items():
            if name == "display_name":
                columns[name] = check_display_name(value)
            elif name == "max_participants":
                if value is not None:
                    check_count(name, value, 1, 10000)
                columns[name] = value
            elif name in ("record_on_start", "locked"):
                if not isinstance(value, bool):
                    raise InvalidValue(name, "must be a boolean")
                columns[name] = int(value)
            elif name in ("end_when_empty_after", "starts_at", "duration"):
                if value is not None:
                    value = check_time(name, value)
                    if name == "end_when_empty_after" and value < 0:
                        raise InvalidValue(name, "must be 0 or more seconds")
                    if name == "duration" and value <= 0:
                        raise InvalidValue(name, "must be more than 0 seconds")
                columns[name] = value
            else:
                raise InvalidValue(name, "cannot be changed")
        if not isinstance(room_id, str):
            return None
        if columns:
            assignments = ", ".join(f"{name} = ?" for name in columns)  # names from the list above
            with self._write() as conn:
                conn.execute(f"UPDATE rooms SET {assignments} WHERE room_id = ?", (*columns.values(), room_id))
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
