"""What sessions leave behind: their log lines (in memory and in daily
files) and call records (in the store, and as ``call.started`` /
``call.ended`` events)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import IO, Any, Callable, Iterable

from engine.calls.call import Call
from engine.state.store import Store

__all__ = ["SessionLogs", "CallRecords"]

logger = logging.getLogger("engine.runtime.scenario")


class _FlushSoon:
    """Call ``flush`` once, ``delay`` seconds after the first of a run of
    calls (at once when no event loop runs): what the session logs and the
    call records use to write a burst in one go."""

    __slots__ = ("flush", "armed")

    def __init__(self, flush: Callable[[], None]) -> None:
        self.flush = flush
        self.armed = False

    def __call__(self, delay: float) -> None:
        if self.armed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self.armed = True
        loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self.armed = False
        self.flush()


class SessionLogs:
    """Session log lines: live sessions keep their own; this keeps those of
    recently ended sessions in memory and writes every line to today's
    ``sessions-YYYY-MM-DD.log`` under ``log_dir``.

    One file a day for all sessions (each line carries ``session=<id>``),
    not one file a session: at hundreds of calls a second, a file per
    session would fill a directory with millions of files.

    :param log_dir: where the daily files go (``None``: memory only).
    :param on_line: called with ``(session_id, line)`` for every line (the
        test harness's session log view).
    """

    #: Ended sessions whose log lines are kept in memory (for read without a log_dir).
    ENDED_LOGS_KEPT = 1000

    def __init__(self, log_dir: Path | None = None,
                 on_line: Callable[[str, str], None] | None = None) -> None:
        self.log_dir = log_dir
        self.on_line = on_line
        self._ended: OrderedDict[str, list[str]] = OrderedDict()
        self._file: IO[str] | None = None
        self._day = ""
        self._day_ends = 0.0
        self._flush_soon = _FlushSoon(self.flush)
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)

    def append(self, session_id: str, line: str) -> None:
        """Append a session's log line to today's file."""
        if session_id in self._ended:  # a line after the end (a late error)
            self._ended[session_id].append(line)
        if self.log_dir is not None:
            self._write(line)
        if self.on_line is not None:
            self.on_line(session_id, line)

    #: How long a line may wait in the file's buffer: lines are written a
    #: buffer at a time, not with a system call each (four a call).
    FLUSH_AFTER = 0.25

    def _write(self, line: str) -> None:
        assert self.log_dir is not None
        now = time.time()
        try:
            if now >= self._day_ends or self._file is None:
                day = time.strftime("%Y-%m-%d", time.gmtime(now))
                if self._file is not None:
                    self._file.close()
                # Session logs name callers and numbers: private (0600).
                fd = os.open(self.log_dir / f"sessions-{day}.log",
                             os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self._file = open(fd, "a", encoding="utf-8")
                self._day = day
                self._day_ends = (now // 86400 + 1) * 86400
            self._file.write(line + "\n")
        except OSError:
            logger.exception("cannot write session log")
            return
        self._flush_soon(self.FLUSH_AFTER)

    def flush(self) -> None:
        """Write the buffered lines to the file now."""
        if self._file is not None:
            try:
                self._file.flush()
            except OSError:
                logger.exception("cannot write session log")

    def ended(self, session_id: str, lines: Iterable[str]) -> None:
        """Keep an ended session's lines in memory (the oldest are dropped
        beyond :attr:`ENDED_LOGS_KEPT` sessions)."""
        self._ended[session_id] = list(lines)
        while len(self._ended) > self.ENDED_LOGS_KEPT:
            self._ended.popitem(last=False)

    def forget_ended(self) -> None:
        """Drop the in-memory lines of ended sessions: :meth:`read` then
        reads the daily files."""
        self._ended.clear()

    def read(self, session_id: str) -> list[str]:
        """An ended session's log lines: from memory when it ended recently,
        else from the daily log files (newest first).

        :raises KeyError: no line of ``session_id`` is known.
        """
        if session_id in self._ended:
            return list(self._ended[session_id])
        if self.log_dir is not None:
            self.flush()
            # The session field is the second one of a line: a ``session=``
            # further on is text a scenario or a caller wrote, never a match.
            marker = f"session={session_id}"
            for path in sorted(self.log_dir.glob("sessions-*.log"), reverse=True):
                with open(path, encoding="utf-8", errors="replace") as fh:
                    lines = [ln.rstrip("\n") for ln in fh if ln.split(" ", 2)[1:2] == [marker]]
                if lines:
                    return lines
        raise KeyError(session_id)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class CallRecords:
    """Call records: one per outside call leg a session holds, written to
    the store when the call ends, and ``call.started`` / ``call.ended``
    reported to the hooks.

    :param store: where records are written (``None``: nowhere).
    :param hooks: called with ``(event, data)``; a failing hook is logged
        and the others still run.
    """

    def __init__(self, store: Store | None = None,
                 hooks: Iterable[Callable[[str, dict[str, Any]], None]] = ()) -> None:
        self.store = store
        self.hooks: list[Callable[[str, dict[str, Any]], None]] = list(hooks)
        #: Called with each call as its record starts (once per call): the
        #: engine's metrics count it, and its end through ``call.on_ended``.
        self.on_track: list[Callable[[Call], None]] = []
        self._flush_soon = _FlushSoon(self._flush)

    def track(self, session_id: str, rule: str, call: Call) -> None:
        """Keep a record of ``call`` (written when it ends) and report
        ``call.started`` / ``call.ended``, once per call however many
        sessions adopt it."""
        if call.recorded:  # a flag on the call, not a weak set: no weakref and its callback a call
            return
        call.recorded = True
        started = time.time()
        base = {"call_id": call.id, "session_id": session_id, "rule": rule,
                "kind": call.kind, "direction": call.direction, "number": call.number,
                "callerid": call.callerid}
        if self.hooks:
            self.publish("call.started", {**base, "start": started})
        for hook in list(self.on_track):
            try:
                hook(call)
            except Exception:
                logger.exception("call tracking hook failed for %s", call.id)

        def ended(call: Call) -> None:
            end = time.time()
            answer = call.connected_at
            record = {
                **base, "start": started, "answer": answer, "end": end,
                "duration": round(end - answer, 3) if answer is not None else 0.0,
                "status": "answered" if answer is not None else "unanswered",
                "end_code": call.end_code, "end_reason": call.end_reason,
                # RTP/RTCP counts and SRTP drops (forged, replayed packets)
                "media": dict(vars(call.media_stats())),  # flat numbers: no asdict recursion
            }
            if self.store is not None:
                try:
                    self.store.add_call_record(record)
                except Exception:
                    logger.exception("cannot write the call record of %s", call.id)
                else:
                    self._flush_soon(self.FLUSH_AFTER)
            if self.hooks:
                self.publish("call.ended", record)

        call.on_ended.append(ended)

    #: How long a written record may wait in the store's queue (which
    #: writes records in batches: one transaction per call was the largest
    #: cost of ending a call at hundreds of calls a second).
    FLUSH_AFTER = 0.25

    def _flush(self) -> None:
        if self.store is None:
            return
        try:
            self.store.flush_call_records()
        except Exception:
            logger.exception("cannot write call records")

    def publish(self, event: str, data: dict[str, Any]) -> None:
        for hook in list(self.hooks):
            try:
                hook(event, data)
            except Exception:
                logger.exception("call event hook failed for %s", event)
