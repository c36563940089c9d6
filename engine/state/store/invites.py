"""Room invites: one-time codes and link tokens, kept hashed, that lock after wrong guesses."""

from __future__ import annotations

import json
import secrets
import sqlite3
from typing import Any

from engine.state.store.checks import (
    check_count,
    check_display_name,
    check_room_id,
    check_text,
    check_time,
)
from engine.state.store.connection import SqliteConnection
from engine.state.store.errors import InvalidValue, InviteRefused, StoreError
from engine.state.store.records import Invite

__all__ = ["SqliteInvites"]

_INVITE_COLUMNS = (
    "invite_id, room_id, invitee, display_name, role, permissions, created_at, expires_at,"
    " used_at, attempts, max_attempts"
)


def _invite(row: tuple[Any, ...]) -> Invite:
    values = list(row)
    values[5] = tuple(json.loads(values[5]))
    return Invite(*values)


class SqliteInvites(SqliteConnection):
    """The invites table of :class:`~engine.state.store.SqliteStore`."""

    def create_invite(
        self, room_id: str, invitee: str, *, display_name: str | None, role: str,
        permissions: tuple[str, ...] | list[str], code_hash: str, link_hash: str,
        expires_at: float, max_attempts: int, now: float,
    ) -> Invite:
        """Store an invite whose code and link token the caller drew and hashed.

        :raises InvalidValue: a malformed argument, or ``code_hash`` /
            ``link_hash`` already taken (draw another code and retry).
        """
        check_room_id(room_id)
        check_text("invitee", invitee, 1, 256)
        display_name = check_display_name(display_name)
        check_text("role", role, 1, 32)
        perms = tuple(check_text("permissions", p, 1, 64) for p in permissions)
        check_text("code_hash", code_hash, 16, 128)
        check_text("link_hash", link_hash, 16, 128)
        expires_at = check_time("expires_at", expires_at)
        check_count("max_attempts", max_attempts, 1, 1000)
        now = check_time("now", now)
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
        now = check_time("now", now)
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
