"""Named presets: permission sets an operator names once and join tokens
and invites refer to by name (``preset: "host"``).

The store keeps a name and a list of permission names; which permission
names exist, and which preset names are built in (and so never stored),
is the runtime's business (``engine.runtime.tokens``), checked before a
preset reaches the store.
"""

from __future__ import annotations

import json
import re
from typing import Any

from engine.state.store.connection import SqliteConnection
from engine.state.store.errors import InvalidValue, PresetExists
from engine.state.store.records import Preset

__all__ = ["PRESET_NAME_RE", "SqlitePresets"]

#: A preset's name: 1-32 characters of ``a-z 0-9 _ -``, starting with a letter.
PRESET_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")

#: Permissions one preset may list, at most.
_MAX_PERMISSIONS = 64


def check_preset_name(name: object) -> str:
    """A preset name (:data:`PRESET_NAME_RE`)."""
    if not isinstance(name, str) or not PRESET_NAME_RE.fullmatch(name):
        raise InvalidValue("name", "must be 1-32 characters of a-z 0-9 _ - starting with a letter")
    return name


def _preset(row: tuple[Any, ...]) -> Preset:
    return Preset(row[0], tuple(json.loads(row[1])), row[2])


class SqlitePresets(SqliteConnection):
    """The ``presets`` table of :class:`~engine.state.store.SqliteStore`."""

    def create_preset(self, name: str, permissions: tuple[str, ...] | list[str]) -> Preset:
        """Store a named permission set.

        :param permissions: permission names (checked by the caller), no duplicates kept.
        :raises PresetExists: the name is taken.
        """
        name = check_preset_name(name)
        if not isinstance(permissions, (list, tuple)) or len(permissions) > _MAX_PERMISSIONS or not all(
            isinstance(p, str) and 0 < len(p) <= 64 for p in permissions
        ):
            raise InvalidValue("permissions", f"must be a list of at most {_MAX_PERMISSIONS} names")
        perms = tuple(dict.fromkeys(permissions))
        created_at = self._clock()
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM presets WHERE name = ?", (name,)).fetchone():
                raise PresetExists(name)
            conn.execute("INSERT INTO presets (name, permissions, created_at) VALUES (?, ?, ?)",
                         (name, json.dumps(perms), created_at))
        return Preset(name, perms, created_at)

    def get_preset(self, name: str) -> Preset | None:
        """Return the preset, or ``None``."""
        if not isinstance(name, str):
            return None
        with self._read() as conn:
            row = conn.execute("SELECT name, permissions, created_at FROM presets WHERE name = ?",
                               (name,)).fetchone()
        return _preset(row) if row else None

    def list_presets(self) -> list[Preset]:
        """Every stored preset, by name."""
        with self._read() as conn:
            rows = conn.execute("SELECT name, permissions, created_at FROM presets ORDER BY name").fetchall()
        return [_preset(row) for row in rows]

    def delete_preset(self, name: str) -> bool:
        """Delete a preset (tokens and invites issued with it keep their
        permissions); ``False`` when there was none."""
        if not isinstance(name, str):
            return False
        with self._write() as conn:
            return conn.execute("DELETE FROM presets WHERE name = ?", (name,)).rowcount > 0
