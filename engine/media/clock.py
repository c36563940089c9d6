"""The media clock: one task for the whole engine ticks every 20 ms.

Each tick calls :meth:`ClockSink.tick` of every registered sink (a call's
media session with audio to move). A sink returns ``False`` when it has
nothing left to do and is then dropped, so a call that receives no audio
costs nothing per tick; it registers again with :meth:`MediaClock.add` when
audio arrives. The task starts with the first sink and ends when none is
left, so an idle engine has no timer running.

Ticks are drift-free: tick *n* is due at ``start + n * interval`` on
``loop.time()``, not 20 ms after the previous one finished. When the loop
was blocked for longer than ``max_catch_up`` ticks the clock skips ahead
instead of firing a burst (counted in :attr:`MediaClock.skipped`).

With a :class:`TickDispatch` (the engine's RTP send workers,
:mod:`engine.transport.rtp_send`) a tick starts :attr:`TickDispatch.lead`
seconds before it is due: the sinks prepare their frames then, the
dispatch collects the datagrams, and they leave at the due time from the
workers. The grid is kept on ``time.monotonic`` (the workers' clock; uvloop's
``loop.time()`` counts whole milliseconds); sinks are still given
``loop.time()``.

For measuring (``bench/media.py``): :attr:`MediaClock.origin` is the
``time.monotonic`` of tick 0 of the running grid, and setting :attr:`MediaClock.lateness`
to a list makes every tick append how late it fired (seconds); ``None``, the
default, records nothing.
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic
from typing import Protocol

from engine.media.pcm import FRAME_SECONDS

__all__ = ["ClockSink", "MediaClock", "TICK", "TickDispatch"]

logger = logging.getLogger(__name__)

#: The clock's period: one frame (:data:`engine.media.pcm.FRAME_SECONDS`).
TICK = FRAME_SECONDS


class ClockSink(Protocol):
    def tick(self, now: float) -> bool:
        """Move one frame; return ``False`` to be dropped from the clock."""
        ...


class TickDispatch(Protocol):
    """Where a tick's datagrams go to leave at its due time."""

    #: Seconds ahead of its due time a tick starts.
    lead: float

    def begin(self, planned: float) -> None:
        """A tick starts (``planned``: when it was meant to, ``time.monotonic``)."""
        ...

    def end(self, due: float) -> None:
        """The tick's frames are ready: send them at ``due`` (``time.monotonic``)."""
        ...


class MediaClock:
    """One periodic task driving all sinks."""

    def __init__(self, interval: float = TICK, max_catch_up: int = 5) -> None:
        self.interval = interval
        self.max_catch_up = max_catch_up
        self._sinks: dict[ClockSink, None] = {}  # insertion-ordered set
        self._task: asyncio.Task[None] | None = None
        self.ticks = 0
        self.skipped = 0
        self.max_lateness = 0.0
        #: Seconds of lateness summed over every tick (with :attr:`ticks`,
        #: the mean lateness; the engine's metrics read both).
        self.lateness_sum = 0.0
        #: ``time.monotonic`` of tick 0 of the current grid (tick n is due at origin + n * interval).
        self.origin: float | None = None
        #: When a list: each tick appends its lateness in seconds (a recorder for benches).
        self.lateness: list[float] | None = None
        #: Where ticks' datagrams go to leave at their due time (``None``: sent as made).
        self.dispatch: TickDispatch | None = None

    def __len__(self) -> int:
        return len(self._sinks)

    def __contains__(self, sink: object) -> bool:
        return sink in self._sinks

    def add(self, sink: ClockSink) -> None:
        """Tick ``sink`` from the next tick on (idempotent)."""
        if sink in self._sinks:
            return
        self._sinks[sink] = None
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="media-clock")

    def discard(self, sink: ClockSink) -> None:
        self._sinks.pop(sink, None)

    async def stop(self) -> None:
        """Drop every sink and end the task."""
        self._sinks.clear()
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.interval
        start = self.origin = monotonic()
        n = 0
        while self._sinks:
            n += 1
            due = start + n * interval
            dispatch = self.dispatch
            planned = due - dispatch.lead if dispatch is not None else due
            delay = planned - monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            late = monotonic() - planned
            if late > self.max_lateness:
                self.max_lateness = late
            if late > 0.0:
                self.lateness_sum += late
            if self.lateness is not None:
                self.lateness.append(late)
            if late > self.max_catch_up * interval:
                skip = int(late / interval)
                n += skip
                self.skipped += skip
                due += skip * interval
            self.ticks += 1
            now = loop.time()
            dispatch = self.dispatch
            if dispatch is not None:
                dispatch.begin(planned)
            try:
                for sink in list(self._sinks):
                    try:
                        keep = sink.tick(now)
                    except Exception:
                        logger.exception("media clock sink %r failed; dropped", sink)
                        keep = False
                    if not keep:
                        self._sinks.pop(sink, None)
            finally:
                if dispatch is not None:
                    dispatch.end(due)
        self._task = None
