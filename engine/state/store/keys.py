"""Management API keys: an id, scopes and a secret kept as one SHA-256."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from engine.state.store.checks import check_display_name
from engine.state.store.connection import SqliteConnection
from engine.state.store.errors import InvalidValue
from engine.state.store.records import API_SCOPES, ApiKey

__all__ = ["SqliteApiKeys"]

def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_scopes(scopes: object) -> tuple[str, ...]:
    if not isinstance(scopes, (list, tuple)) or not scopes:
        raise InvalidValue("scopes", f"must be a non-empty list of {', '.join(API_SCOPES)}")
    for scope in scopes:
        if scope not in API_SCOPES:
            raise InvalidValue("scopes", f"must be among {', '.join(API_SCOPES)} (got {scope!r})")
    return tuple(dict.fromkeys(scopes))


class SqliteApiKeys(SqliteConnection):
    """The ``api_keys`` table of :class:`~engine.state.store.SqliteStore`."""

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
        name = check_display_name(name)
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
