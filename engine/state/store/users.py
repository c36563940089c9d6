"""Users: accounts with a scrypt password hash, and SIP digest HA1 values for those with ``sip``.

HA1 values (see :mod:`engine.state.store.passwords`) are computed when the
password is set, for the store"s ``sip_realm`` -- only for users with ``sip``
enabled: an HA1 is a password-equivalent for SIP and MD5 is cheap to guess
against, so web-only users (and guests) keep nothing but the scrypt hash.
**Changing the realm invalidates every stored HA1**: users must have their
passwords reset (or log in once through :meth:`SqliteUsers.verify_password`,
which recomputes the HA1 values for the current realm); until then
:meth:`SqliteUsers.sip_ha1` returns ``None`` for them.
"""

from __future__ import annotations

import hmac
import sqlite3
from typing import Any

from engine.state.store.checks import (
    MAX_LIMIT,
    check_count,
    check_display_name,
    check_name,
    check_password,
)
from engine.state.store.connection import SqliteConnection
from engine.state.store.errors import InvalidValue, StoreError, UserExists, UserNotFound
from engine.state.store.passwords import (
    GUEST_HASH,
    HA1_ALGORITHMS,
    ScryptParams,
    digest_ha1,
    hash_password,
    parse_hash,
    scrypt,
)
from engine.state.store.records import User

__all__ = ["SqliteUsers"]

_USER_COLUMNS = "name, display_name, created_at, sip"


def _user(row: tuple[Any, ...]) -> User:
    return User(row[0], row[1], row[2], bool(row[3]))


class SqliteUsers(SqliteConnection):
    """The users table of :class:`~engine.state.store.SqliteStore`."""

    #: The realm SIP digest HA1 values are kept for.
    sip_realm: str
    _params: ScryptParams
    _dummy_hash: str | None

    def _secrets_for(self, name: str, password: str, sip: bool) -> tuple[str, str, str, str]:
        """Return (password_hash, realm, ha1_md5, ha1_sha256); slow (scrypt).
        The HA1 values are empty unless ``sip``."""
        realm = self.sip_realm
        if not sip:
            return hash_password(password, self._params), realm, "", ""
        return (
            hash_password(password, self._params),
            realm,
            digest_ha1("MD5", name, realm, password),
            digest_ha1("SHA-256", name, realm, password),
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
        check_name(name)
        check_password(password)
        display_name = check_display_name(display_name)
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
        check_name(name)
        display_name = check_display_name(display_name)
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
        check_count("offset", offset, 0, None)
        check_count("limit", limit, 1, MAX_LIMIT)
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
            check_password(password)
        if sip is not None and not isinstance(sip, bool):
            raise InvalidValue("sip", "must be a boolean")
        new_display = check_display_name(display_name)
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
            params, salt, expected = parse_hash(encoded)
        except (ValueError, KeyError, StoreError):
            self._burn(password)
            return False
        actual = scrypt(password, salt, params, len(expected))
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
            self._dummy_hash = hash_password("callbridge-dummy", self._params)
        params, salt, expected = parse_hash(self._dummy_hash)
        hmac.compare_digest(scrypt(password, salt, params, len(expected)), expected)

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
