"""Call records: one JSON object per finished call, newest first.

Records are written in batches: :meth:`SqliteCallRecords.add_call_record`
checks and serialises a record at once and queues it; the queue is written
in one transaction when it holds :attr:`SqliteCallRecords.RECORD_BATCH`
records, when :meth:`~SqliteCallRecords.flush_call_records` is called (the
runtime does, a fraction of a second after a call ends), before every read,
and on close. At hundreds of calls a second, one transaction per call was
the largest single cost of ending a call.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from itertools import repeat
from typing import Any

from engine.state.store.checks import MAX_LIMIT, check_count
from engine.state.store.connection import SqliteConnection
from engine.state.store.errors import InvalidValue, StoreError

__all__ = ["SqliteCallRecords"]

#: One encoder for every record (``json.dumps`` with options builds one per call).
_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


class SqliteCallRecords(SqliteConnection):
    """The ``call_records`` table of :class:`~engine.state.store.SqliteStore`."""

    #: Queued records that trigger a write at once.
    RECORD_BATCH = 256
    _pending_records: list[tuple[str | None, str]]

    def flush_call_records(self) -> None:
        """Write the queued records in one transaction (nothing when none)."""
        with self._lock:
            pending, self._pending_records = self._pending_records, []
        if not pending:
            return
        try:
            with self._write() as conn:
                conn.executemany("INSERT INTO call_records (call_id, data) VALUES (?, ?)", pending)
        except BaseException:
            with self._lock:  # not lost: they go first in the next attempt
                self._pending_records[:0] = pending
            raise

    def close(self) -> None:
        """Write the queued records, then close the connection."""
        if self._conn is not None:
            self.flush_call_records()
        super().close()

    def add_call_record(self, record: Mapping[str, Any]) -> None:
        """Append a call record (queued: see the module's docstring).

        The record is stored as a JSON object as given; its ``call_id`` (when a
        string) is also indexed. Typical fields: ``call_id``, ``session_id``,
        ``direction``, ``number``, ``caller``, ``start``, ``answer``, ``end``,
        ``status``, ``reason``.

        :param record: a mapping with string keys and JSON values (no NaN).
        :raises InvalidValue: ``record`` is not such a mapping.
        """
        # A dict (the runtime's records) is taken as it is: the mapping
        # check is an ABC's, in Python, and the encoder needs a dict anyway.
        plain = type(record) is dict
        if not plain and not isinstance(record, Mapping):
            raise InvalidValue("record", "must be a mapping")
        if not all(map(isinstance, record, repeat(str))):  # in C: no generator step a key
            raise InvalidValue("record", "keys must be strings")
        try:
            data = _ENCODER.encode(record if plain else dict(record))
        except (TypeError, ValueError) as exc:
            raise InvalidValue("record", f"must be JSON-serialisable: {exc}") from None
        call_id = record.get("call_id")
        with self._lock:
            if self._conn is None:
                raise StoreError("the store is closed")
            self._pending_records.append((call_id if isinstance(call_id, str) else None, data))
            full = len(self._pending_records) >= self.RECORD_BATCH
        if full:
            self.flush_call_records()

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
        self.flush_call_records()
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
        self.flush_call_records()
        with self._read() as conn:
            if session_id is None:
                row = conn.execute("SELECT count(*) FROM call_records").fetchone()
            else:
                row = conn.execute(
                    "SELECT count(*) FROM call_records WHERE json_extract(data, '$.session_id') = ?",
                    (session_id,),
                ).fetchone()
        return int(row[0])
