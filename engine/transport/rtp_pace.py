"""Paced sending: the media clock's datagrams held until their tick is due, sent by the event loop.

A tick pulls, mixes, encodes and sends; at 1,000 conference legs that is
5-6 ms of work, and the frames left while it ran, from 2 ms after the
tick was due (pulling and mixing came first) to its end (``bench/media.py``,
2026-12-05: p99 6.3-6.6 ms against the 20 ms grid). With a
:class:`TickPacer` as the clock's dispatch the tick starts :attr:`TickPacer.lead`
early (how long preparing recently took at worst, plus a millisecond),
every RTP datagram it makes is held here instead of sent
(:attr:`RtpTransport.batch <engine.transport.rtp_transport.RtpTransport.batch>`),
and at the due time they all leave in one tight loop of ``send`` calls:
the frames keep the grid however long mixing took, and what the tick's
length still costs is the loop's own sending time, not pulling and mixing.

The send workers (:mod:`engine.transport.rtp_send`) do the same from other
processes, which also takes the system calls off the loop; the pacer costs
no process and no copy, only holding each datagram for a few milliseconds.
A reader that finds the held datagrams due sends them
(:func:`engine.media.clock.run_due`), as it starts a due tick: the loop runs
every ready reader before its timers.

A leg whose transport detached while its datagram was held is skipped
(its socket may already serve another call). Errors are counted on the
transport, as :meth:`RtpTransport.sendto <engine.transport.rtp_transport.RtpTransport.sendto>`
counts them.
"""

from __future__ import annotations

import asyncio
from time import monotonic, sleep
from typing import Any

from engine.media.clock import refresh_due
from engine.transport.rtp_transport import RtpTransport

__all__ = ["TickPacer"]

_INF = float("inf")
#: Seconds: a timer that fires at most this early sleeps the rest instead of waiting again.
EARLY_SLEEP = 0.0015


class TickPacer:
    """A :class:`~engine.media.clock.TickDispatch` that holds a tick's
    datagrams in this process and sends them at the tick's due time.

    :param max_lead: the most the clock prepares a tick ahead of its due time.
    """

    def __init__(self, *, max_lead: float = 0.010) -> None:
        self.max_lead = max_lead
        #: How far ahead of its due time the clock starts a tick (seconds).
        self.lead = 0.002
        #: ``time.monotonic`` when the held datagrams leave (``inf``: none held).
        self.held_until = _INF
        self._peak = 0.0
        self._begun = 0.0
        self._held: list[tuple[RtpTransport, bytes, Any]] = []
        self._timer: asyncio.TimerHandle | None = None
        self.ticks = 0
        self.packets = 0
        #: Ticks whose datagrams were ready only after their due time (sent at once).
        self.overruns = 0

    def begin(self, planned: float) -> None:
        """A tick starts; ``planned`` is when it was meant to (its due time
        minus :attr:`lead`). Datagrams still held from the tick before leave first."""
        if self._held:
            self.release()
        RtpTransport.batch = self
        self._begun = planned

    def add(self, transport: RtpTransport, data: bytes, addr: Any) -> bool:
        """Hold ``data`` for ``addr`` until the tick is due (always taken)."""
        self._held.append((transport, data, addr))
        return True

    def end(self, due: float) -> None:
        """The tick's datagrams are made: send them at ``due`` (``time.monotonic``)."""
        RtpTransport.batch = None
        now = monotonic()
        took = now - self._begun
        self._peak = max(took, self._peak * 0.98)  # its recent worst, decaying 2% a tick
        self.lead = min(self.max_lead, self._peak + 0.001)
        self.ticks += 1
        if not self._held:
            return
        if now >= due:
            self.overruns += 1
            self.release()
            return
        self.held_until = due
        refresh_due()
        self._timer = asyncio.get_running_loop().call_later(due - now, self._on_timer)

    def _on_timer(self) -> None:
        # uvloop's timers count whole milliseconds and may fire up to one
        # early: the rest is slept (it is less than a millisecond), so no
        # frame leaves before its due time.
        self._timer = None
        early = self.held_until - monotonic()
        if early > 0.0:
            if early > EARLY_SLEEP:
                self._timer = asyncio.get_running_loop().call_later(early, self._on_timer)
                return
            sleep(early)
        self.release()

    def release(self) -> None:
        """Send every held datagram now."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        held, self._held = self._held, []
        if self.held_until != _INF:
            self.held_until = _INF
            refresh_due()
        self.packets += len(held)
        for transport, data, addr in held:
            if transport._loop is None:  # detached meanwhile: its socket may serve another call now
                continue
            try:
                if addr is transport.peer:
                    transport._send(data)
                else:
                    transport.sock.sendto(data, addr)
            except OSError:
                transport.send_errors += 1

    def stop(self) -> None:
        """Send what is held and hold nothing more."""
        self.release()
        if RtpTransport.batch is self:
            RtpTransport.batch = None
