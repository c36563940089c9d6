"""Call records: one JSON object per finished call, newest first."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from engine.state.store.checks import MAX_LIMIT, check_count
from engine.state.store.connection import SqliteConnection
from engine.state.store.errors import InvalidValue

__all__ = ["SqliteCallRecords"]


class SqliteCallRecords(SqliteConnection):
    """The ``call_records`` table of :class:`~engine.state.store.SqliteStore`."""

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
        check_count("limit", limit, 1, MAX_LIMIT)
        check_count("offset", offset, 0, None)
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
