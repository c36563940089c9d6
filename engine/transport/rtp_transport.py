"""An RTP socket attached to the event loop.

:class:`RtpTransport` reads the RTP socket of a reserved
:class:`~engine.transport.rtp_socket.RtpPortPair` and hands each datagram to
the callback it was given (the call's media session); :meth:`RtpTransport.sendto`
sends. It registers the socket with ``loop.add_reader`` rather than
``loop.create_datagram_endpoint(sock=...)``: attaching is then synchronous, so
the SIP code that negotiates media can attach without starting a task per
call, and one wake-up drains every datagram already queued (a burst costs one
callback, not one per packet). uvloop implements ``add_reader`` as well.

Until :meth:`RtpTransport.attach` runs, datagrams wait in the kernel's buffer,
so nothing sent just before attaching is lost.

After each wake-up the transport starts the media clock's tick if it is
due and the clock lets readers start it (with send workers:
:func:`engine.media.clock.run_due`): with a thousand sockets ready at once
the loop would otherwise reach the tick's timer only after all of them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from time import monotonic as _monotonic
from typing import Any, Callable, ClassVar, Protocol

from engine.media.clock import next_tick_at as _next_tick_at
from engine.media.clock import run_due as _run_due

__all__ = ["RtpTransport", "DatagramHandler"]

logger = logging.getLogger(__name__)

#: ``handler(data, addr)`` for each datagram received.
DatagramHandler = Callable[[bytes, Any], None]

#: Datagrams read per wake-up at most, so one flooded port cannot starve the loop.
MAX_READS_PER_WAKEUP = 64
#: Seconds: a datagram this soon after the previous one starts a drain.
BURST_GAP = 0.010
_MAX_DATAGRAM = 2048


class BatchSink(Protocol):
    """Takes datagrams to send later (:class:`~engine.transport.rtp_send.SendWorkers`)."""

    def add(self, transport: RtpTransport, data: bytes, addr: Any) -> bool:
        """Queue ``data``; ``False``: send it yourself."""
        ...


class RtpTransport:
    """Receive and send RTP on one UDP socket."""

    #: While the media clock prepares a tick for the send workers: where every
    #: transport's datagrams go instead of ``sendto`` (one event loop, so one
    #: tick at a time; ``None`` otherwise).
    batch: ClassVar[BatchSink | None] = None

    # Slots: read per packet of every leg (tests/unit/test_media_layout.py).
    __slots__ = ("sock", "_recvfrom", "handler", "_loop", "_last_read", "received", "sent", "batch_memo",
                 "send_errors", "__weakref__")

    def __init__(self, sock: socket.socket, handler: DatagramHandler) -> None:
        self.sock = sock
        self._recvfrom = sock.recvfrom
        self.handler = handler
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_read = 0.0
        self.received = 0
        self.sent = 0
        #: The batch sink's note of where this transport's datagrams go.
        self.batch_memo: Any = None
        self.send_errors = 0

    @property
    def attached(self) -> bool:
        return self._loop is not None

    def attach(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start delivering datagrams to the handler (idempotent)."""
        if self._loop is not None:
            return
        self._loop = loop or asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._on_readable)

    def detach(self) -> None:
        """Stop reading (the socket stays open and owned by its port pair)."""
        if self._loop is None:
            return
        try:
            if self.sock.fileno() >= 0:
                self._loop.remove_reader(self.sock.fileno())
        except (ValueError, OSError, RuntimeError):  # closed socket or loop
            pass
        self._loop = None

    def _on_readable(self) -> None:
        # One datagram per wake-up is the common case (each phone sends one
        # packet in 20 ms): read it without a loop, then drain only in a burst.
        now = _monotonic()
        burst = now - self._last_read < BURST_GAP
        self._last_read = now
        if self._read_one() and burst:
            for _ in range(MAX_READS_PER_WAKEUP - 1):  # what a burst left queued
                if not self._read_one():
                    break
        # The loop runs every ready reader before its timers: a media tick
        # due meanwhile starts here rather than after the rest of the run.
        if now >= _next_tick_at[0]:
            _run_due()

    def _read_one(self) -> bool:
        """Read one datagram and hand it over; ``False`` when none was read."""
        try:
            data, addr = self._recvfrom(_MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:  # ICMP port unreachable and the like
            logger.debug("RTP socket error: %s", exc)
            return False
        self.received += 1
        try:
            self.handler(data, addr)
        except Exception:
            logger.exception("RTP handler failed")
        return True

    def sendto(self, data: bytes, addr: Any) -> None:
        """Send one datagram; errors are counted, never raised (UDP is lossy anyway)."""
        batch = RtpTransport.batch
        if batch is not None and batch.add(self, data, addr):
            self.sent += 1
            return
        try:
            self.sock.sendto(data, addr)
            self.sent += 1
        except OSError:
            self.send_errors += 1
