"""The media clock: one timer for the whole engine ticks every 20 ms.

Each tick calls :meth:`ClockSink.tick` of every registered sink (a call's
media session with audio to move). A sink returns ``False`` when it has
nothing left to do and is then dropped, so a call that receives no audio
costs nothing per tick; it registers again with :meth:`MediaClock.add` when
audio arrives. The timer starts with the first sink and stops when none is
left, so an idle engine has no timer running.

Ticks are drift-free: tick *n* is due at ``origin + n * interval`` on
``time.monotonic``, not 20 ms after the previous one finished. When the loop
was blocked for longer than ``max_catch_up`` ticks the clock skips ahead
instead of firing a burst (counted in :attr:`MediaClock.skipped`).

Shorter stalls are caught up one tick at a time, none without the loop
reading its sockets first: a tick a whole interval late when it fires,
or overdue when it is armed, waits :data:`CATCH_UP_GAP`, a timer the
loop reaches only after polling, and readers do not start a tick that
is a whole interval late (:func:`run_due`). The phones kept sending during the stall, so each
socket holds one frame per overdue tick; tick *j* of the catch-up plays
frame *j*, which must have been read by then. Started back to back from
one read-out, the ticks ran ahead of the frames, each found late (the
jitter buffers grew) and concealed: ``bench/media.py --legs 800`` with a
90 ms stall injected concealed 9,200-13,200 frames in each of 5 runs,
and none in 5 runs once the catch-up waited for the reads.

With a :class:`TickDispatch` (the engine's paced sending,
:mod:`engine.transport.rtp_pace`, or its RTP send workers,
:mod:`engine.transport.rtp_send`) a tick starts :attr:`TickDispatch.lead`
seconds before it is due: the sinks prepare their frames then, the
dispatch collects the datagrams, and they leave at the due time, from the
event loop or from the workers. The grid is kept on ``time.monotonic`` (the workers' clock; uvloop's
``loop.time()`` counts whole milliseconds); sinks are still given
``loop.time()``.

A tick starts from its timer or, with a dispatch and the loop busy reading
RTP, from the reader that notices it is due (:func:`run_due`), whichever
comes first; datagrams the dispatch holds in this process
(:attr:`TickDispatch.held_until`) leave the same way.

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

__all__ = ["ClockSink", "MediaClock", "TICK", "TickDispatch", "next_tick_at", "refresh_due", "run_due"]

logger = logging.getLogger(__name__)

#: The clock's period: one frame (:data:`engine.media.pcm.FRAME_SECONDS`).
TICK = FRAME_SECONDS
#: Seconds an overdue tick waits, so that the loop polls its sockets first.
CATCH_UP_GAP = 0.001


class ClockSink(Protocol):
    def tick(self, now: float) -> bool:
        """Move one frame; return ``False`` to be dropped from the clock."""
        ...


class TickDispatch(Protocol):
    """Where a tick's datagrams go to leave at its due time."""

    #: Seconds ahead of its due time a tick starts.
    lead: float
    #: ``time.monotonic`` when datagrams it holds in this process are due
    #: (``inf``: none held; then :meth:`release` is never called).
    held_until: float

    def begin(self, planned: float) -> None:
        """A tick starts (``planned``: when it was meant to, ``time.monotonic``)."""
        ...

    def end(self, due: float) -> None:
        """The tick's frames are ready: send them at ``due`` (``time.monotonic``)."""
        ...

    def release(self) -> None:
        """Send the datagrams held until :attr:`held_until` now."""
        ...


class MediaClock:
    """One periodic timer driving all sinks."""

    def __init__(self, interval: float = TICK, max_catch_up: int = 5) -> None:
        self.interval = interval
        self.max_catch_up = max_catch_up
        self._sinks: dict[ClockSink, None] = {}  # insertion-ordered set
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._active = False
        self._n = 0
        self._due = 0.0
        #: The loop has polled its sockets since the stall that made the armed tick overdue.
        self._polled = False
        #: ``time.monotonic`` when the next tick starts (``inf`` while stopped).
        self.next_at = _INF
        self.ticks = 0
        self.skipped = 0
        #: Ticks started from a reader's callback (:func:`run_due`), not the timer.
        self.ticks_inline = 0
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

    @property
    def running(self) -> bool:
        """Whether ticks are scheduled (there are sinks, or were at the last tick)."""
        return self._active

    def add(self, sink: ClockSink) -> None:
        """Tick ``sink`` from the next tick on (idempotent)."""
        if sink in self._sinks:
            return
        self._sinks[sink] = None
        if not self._active:
            self._active = True
            self._loop = asyncio.get_running_loop()
            self.origin = monotonic()
            self._n = 0
            self._arm()

    def discard(self, sink: ClockSink) -> None:
        self._sinks.pop(sink, None)

    async def stop(self) -> None:
        """Drop every sink and cancel the next tick."""
        self._sinks.clear()
        self._halt()

    def _halt(self) -> None:
        self._active = False
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self.next_at = _INF
        _running.discard(self)
        _refresh_next()

    def _arm(self) -> None:
        """Schedule tick ``n + 1`` on the grid."""
        assert self._loop is not None and self.origin is not None
        self._n += 1
        due = self._due = self.origin + self._n * self.interval
        dispatch = self.dispatch
        planned = self.next_at = due - dispatch.lead if dispatch is not None else due
        delay = planned - monotonic()
        # overdue (catching up): a timer, not call_soon, whose callbacks run
        # before the poll (uvloop's in the same turn); see the module's docstring
        self._polled = delay <= 0.0
        self._timer = self._loop.call_later(delay if delay > 0.0 else CATCH_UP_GAP, self._fire)
        _running.add(self)
        _refresh_next()

    def _fire(self) -> None:
        """Run the tick that is due (from its timer or from :func:`run_due`)."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()  # a no-op when the timer itself is running
        if not self._polled and monotonic() - self.next_at >= self.interval:
            # the loop stalled past this tick, maybe in a reader: let it poll first
            assert self._loop is not None
            self._polled = True
            self._timer = self._loop.call_later(CATCH_UP_GAP, self._fire)
            return
        planned, self.next_at = self.next_at, _INF  # no second start while this one runs
        due = self._due
        late = monotonic() - planned
        if late > self.max_lateness:
            self.max_lateness = late
        if late > 0.0:
            self.lateness_sum += late
        if self.lateness is not None:
            self.lateness.append(late)
        if late > self.max_catch_up * self.interval:
            skip = int(late / self.interval)
            self._n += skip
            self.skipped += skip
            due += skip * self.interval
        self.ticks += 1
        assert self._loop is not None
        now = self._loop.time()
        dispatch = self.dispatch
        try:
            if dispatch is not None:
                dispatch.begin(planned)
            sinks = self._sinks
            for sink in list(sinks):
                try:
                    keep = sink.tick(now)
                except Exception:
                    logger.exception("media clock sink %r failed; dropped", sink)
                    keep = False
                if not keep:
                    sinks.pop(sink, None)
        finally:
            try:
                if dispatch is not None:
                    dispatch.end(due)
            finally:
                # The next tick, unless a sink stopped and restarted the clock meanwhile.
                if not self._sinks:
                    self._halt()
                elif self._timer is None:
                    self._arm()


_INF = float("inf")
#: Clocks with a tick scheduled.
_running: set[MediaClock] = set()
#: ``[t]``: the earliest :attr:`MediaClock.next_at` of the running clocks
#: (a one-element list, so that readers test it without a call).
next_tick_at = [_INF]


def _eager(clock: MediaClock) -> bool:
    """Whether readers start ``clock``'s due ticks: while its dispatch sends
    later (a lead; send workers given up have none, and the tick sends)."""
    dispatch = clock.dispatch
    return dispatch is not None and dispatch.lead > 0.0


def _refresh_next() -> None:
    due = _INF
    for c in _running:
        dispatch = c.dispatch
        if dispatch is not None and dispatch.lead > 0.0:  # _eager(c), inlined
            due = min(due, c.next_at, dispatch.held_until)
    next_tick_at[0] = due


def refresh_due() -> None:
    """A dispatch's :attr:`TickDispatch.held_until` changed: readers look at the new time."""
    _refresh_next()


def run_due() -> None:
    """Start every running clock's tick that is due, now, from the caller.

    The event loop runs all the ready readers' callbacks before it gets to
    the timers; with 1,000 RTP sockets read once each per 20 ms, that run
    is a few ms long, and the tick's timer waits behind it. Readers on the
    media path check :data:`next_tick_at` after each datagram and call this
    when it has passed, so a tick starts at most one callback late.

    Only clocks whose :attr:`MediaClock.dispatch` has a lead start this way
    (the pacer, or send workers that run: given up, their lead is 0): their
    tick only prepares a batch, which is sent at the due time, so a tick on
    time is worth a reader's wait. Datagrams a dispatch holds past their
    due time (:attr:`TickDispatch.held_until`) are released here first. A clock that sends as it
    ticks keeps to its timer, which runs after the ready readers: on a loop
    near saturation a tick started ahead of them would delay the rest of
    the read past the next pull (measured with ``bench/media.py --legs
    1000``: 22% of inbound frames concealed against 2.5%). Nor does a
    reader start a tick a whole interval late: that is a catch-up after a
    stall, and the frames its successors play are still unread on the
    other sockets (see the module's docstring). Only the
    clocks of the running loop are started; those whose loop was closed
    without :meth:`MediaClock.stop` are forgotten.
    """
    loop = asyncio.get_running_loop()
    now = monotonic()
    for clock in list(_running):
        if clock._loop is not loop:
            if clock._loop is None or clock._loop.is_closed():
                clock._halt()
            continue
        dispatch = clock.dispatch
        if dispatch is not None and dispatch.held_until <= now:
            dispatch.release()
        if clock.next_at <= now < clock.next_at + clock.interval and _eager(clock):
            clock.ticks_inline += 1
            clock._fire()
