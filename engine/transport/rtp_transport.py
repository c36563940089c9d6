"""An RTP socket attached to the event loop.

:class:`RtpTransport` reads the RTP socket of a reserved
:class:`~engine.transport.rtp_socket.RtpPortPair` and hands each datagram to
the callback it was given (the call's media session); :meth:`RtpTransport.sendto`
sends. Its socket joins one ``epoll`` of the loop's RTP sockets
(:class:`MediaPoll`), which is one reader of the loop, rather than being
read through ``loop.create_datagram_endpoint(sock=...)``: attaching is then
synchronous, so the SIP code that negotiates media can attach without
starting a task per call, and one wake-up drains every datagram already
queued (a burst costs one callback, not one per packet).

One reader for all the RTP sockets, not one each (``loop.add_reader``, as
until 2026-12-06), so that the loop's timers run however many calls there
are. libuv, under uvloop, polls again at once, without running timers,
while ``epoll_wait`` fills its whole batch of 1,024 events, up to 48 times
in a row: an engine with more than 1,024 legs, their sockets ready
together once it is busy, ran its timers about once a second
(``bench/media.py --legs 1550``: a 50 ms timer ran 8 times in 10 s), and
with them SIP retransmissions, scenario timers and the overload probe.
With the one reader, alternated runs: 103-157 times against 3-85. The
media poll hands over :data:`POLL_BATCH` ready sockets a wake-up at most,
and costs no more CPU a packet (``bench/media.py --legs 1000``, three
alternated pairs: 13.2-14.4 us against 12.9-14.0 us a packet). What the
timers' turns cost a saturated engine's audio: at 1,550 legs and a whole
core, 6.6-20% of inbound frames concealed and 1.0-1.4% of the outbound
dropped (the clock skipped 5-7 ticks), against 6.2% and none in the one
run of the old way whose window was measured right (its timers ran 20
times in 10 s, so even the bench's own clock was late). An engine that
saturated should refuse calls, and now its overload probe runs to do so.

Until :meth:`RtpTransport.attach` runs, datagrams wait in the kernel's buffer,
so nothing sent just before attaching is lost.

One datagram per wake-up is the common case (a phone sends one packet in
20 ms), so a wake-up reads one without a loop. It drains the socket when
more may wait: in a burst (readable again within :data:`BURST_GAP` of the
last read), and after an absence (not read for :data:`AWAY_GAP`, a frame
and a half). The second matters on a loaded engine. Its loop takes longer
than a burst gap to come round every socket, so a queue that built up in
a stall (a collector's pass, a slow handler, the host taking the core)
was read one datagram a turn, as fast as the phone refilled it: it never
drained, and every frame stayed as late as the stall had made it, the
jitter buffers concealing most of them for good. After an absence only
the newest :data:`FRESH_KEEP` datagrams (200 ms at 20 ms, the jitter
buffers' deepest) go to the handler; the older audio frames (of
:attr:`RtpTransport.stale_pt`) could no longer be played, and are read and
dropped (:attr:`RtpTransport.stale`, and :attr:`RtpTransport.on_stale`,
which the media session tells its jitter buffer with, so the overload
detector counts the leg late). Other datagrams are always handed over: a
DTMF digit's event packets come in a burst and must all be heard.

Measured with ``bench/media.py``, alternated runs on 2026-12-06, the
inbound frames concealed reading one a turn against with the drain:

- 1,400 legs, the machine slow, 91-106% of a core either way: 82% and 49%
  against 0.2% and 7.6%; after a 300 ms stall (``--stall 300``), 72%
  against 15%;
- 1,550 legs, the machine fast, 100% of a core reading one a turn, 83-100%
  with the drain: 75% and 98% against 0.8%, 6.7% and 0.04%;
- below saturation (1,000-1,400 legs at 63-93%), no difference past the
  noise, in CPU a packet or in frames concealed.

After each wake-up the transport starts the media clock's tick if it is
due and the clock lets readers start it (with send workers:
:func:`engine.media.clock.run_due`): with a thousand sockets ready at once
the loop would otherwise reach the tick's timer only after all of them.

Pinning (:meth:`RtpTransport.pin`): once the media session has latched a
steady source, the socket is ``connect``-ed to it. The kernel then delivers
only that source's datagrams (a stranger spraying the port costs no Python
at all), and ``recv``/``send`` replace ``recvfrom``/``sendto``, which build
and parse no address and skip the route lookup (``bench/media_paths.py
--pinned``, 1,000 legs: a bare read 1.6 to 1.1 us, a send 3.7 to 3.1 us).
Datagrams queued before the ``connect`` may come from anyone, so they are
read with their addresses first; only once the queue was found empty are
datagrams taken to be the peer's (a flood queued before is read over
several turns of the loop; the kernel queues no more of it). A pinned
socket that has read nothing for :data:`UNPIN_AFTER` seconds is
disconnected again (``connect`` with ``AF_UNSPEC``), so a NAT rebinding,
whose packets the kernel now drops, is seen after that silence and latched
as before. :meth:`RtpTransport.detach` disconnects too: the socket goes
back to the port pool unconnected.

Backlog (:func:`rtp_backlog`): the transports of media streams (not RTCP)
are watched while attached, and a sample of them tells how far the loop's
readers are behind the phones: the median of the bytes their kernel
receive queues hold (Linux ``SO_MEMINFO``). A loop that keeps up leaves a
datagram or two queued on a socket (about 830 bytes each on loopback); a
loop saturated by media falls behind on every socket at once, the queues
grow to hundreds of datagrams and the jitter buffers conceal, while the
loop's own lag stays small (``bench/media.py`` prints the signal). The
overload detector refuses new calls on it (:mod:`engine.transport.overload`).
The median, not the fullest: a sender flooding one port it is not pinned
to fills that socket's queue alone. The kernel's count also holds the
datagrams already read from a batch until that batch is read to the end
(Linux's UDP forward deficit, which made the SIP queue read a quarter of
its buffer fuller than it was: :func:`engine.transport.sip_endpoint.udp_queue_fill`).
Here that needs no correction: a wake-up that finds the socket readable
again within :data:`BURST_GAP` reads it empty, which releases the lot
(30 queued and drained: 0), and one read of a few queued counts that
one datagram more (832 bytes on loopback). To push the count past the
8 KiB bound (:class:`~engine.transport.overload.OverloadBounds`) with
less than that queued, about ten datagrams must be read one a wake-up,
each more than :data:`BURST_GAP` after the last, from a batch the socket
still holds: a reader already that far behind.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import select
import socket
import statistics
import struct
import sys
from time import monotonic as _monotonic
from typing import Any, Callable, ClassVar, Protocol

from engine.media.clock import next_tick_at as _next_tick_at
from engine.media.clock import run_due as _run_due
from engine.transport.rtp_socket import disconnect

__all__ = ["RtpTransport", "DatagramHandler", "MediaPoll", "SO_MEMINFO", "media_poll", "rtp_backlog",
           "watched_transports"]

logger = logging.getLogger(__name__)

#: ``handler(data, addr)`` for each datagram received.
DatagramHandler = Callable[[bytes, Any], None]

#: Datagrams read per wake-up at most, so one flooded port cannot starve the loop.
MAX_READS_PER_WAKEUP = 64
#: Seconds: a datagram this soon after the previous one starts a drain.
BURST_GAP = 0.010
#: Seconds: a socket not read for this long may hold more than one datagram; drain it.
AWAY_GAP = 0.030
#: Datagrams of a drain after an absence handed to the handler: the newest.
FRESH_KEEP = 10
_MAX_DATAGRAM = 2048
#: Seconds without a datagram after which a pinned socket is disconnected.
UNPIN_AFTER = 0.5
#: Linux ``SO_MEMINFO`` (not in :mod:`socket`): the socket's memory, whose
#: first fields are the bytes queued for reading and the buffer's size, and
#: the ninth the datagrams dropped on a full buffer.
SO_MEMINFO = 55
#: Media transports sampled for :func:`rtp_backlog` at most.
BACKLOG_SAMPLE = 16

#: The attached media transports (insertion-ordered set), for :func:`rtp_backlog`.
_watched: dict[RtpTransport, None] = {}
_meminfo = [sys.platform.startswith("linux")]


#: Ready sockets a wake-up of the media poll reads at most.
POLL_BATCH = 1024


class MediaPoll:
    """One ``epoll`` of the attached RTP sockets, registered with the loop as
    one reader (see the module docstring): a wake-up runs
    :meth:`RtpTransport._on_readable` of each socket ready, then gives the
    loop back. The poll closes once its last socket leaves."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._epoll = select.epoll()
        self._by_fd: dict[int, RtpTransport] = {}
        loop.add_reader(self._epoll.fileno(), self._ready)

    def __len__(self) -> int:
        return len(self._by_fd)

    def add(self, fd: int, transport: RtpTransport) -> None:
        """Read ``fd`` for ``transport`` (again: nothing)."""
        known = self._by_fd.get(fd)
        if known is transport:
            return
        if known is not None:  # a closed socket's number, taken by a new one
            self._unregister(fd)
        self._epoll.register(fd, select.EPOLLIN)
        self._by_fd[fd] = transport

    def remove(self, fd: int, transport: RtpTransport) -> None:
        """Stop reading ``fd`` for ``transport`` (not its: nothing); the last
        one closes the poll."""
        if self._by_fd.get(fd) is not transport:
            return
        del self._by_fd[fd]
        self._unregister(fd)
        if not self._by_fd:
            self.close()

    def _unregister(self, fd: int) -> None:
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):  # the socket was closed: the kernel dropped it
            pass

    def close(self) -> None:
        if _polls[0] is self:
            _polls[0] = None
        self._by_fd.clear()
        try:
            self.loop.remove_reader(self._epoll.fileno())
        except (ValueError, OSError, RuntimeError):  # the loop is closed
            pass
        self._epoll.close()

    def _ready(self) -> None:
        by_fd = self._by_fd
        for fd, _ in self._epoll.poll(0, POLL_BATCH):
            transport = by_fd.get(fd)
            if transport is not None:  # (removed by an earlier one's handler)
                transport._on_readable()


#: ``[poll]``: the media poll of the loop the transports are attached to.
_polls: list[MediaPoll | None] = [None]


def media_poll(loop: asyncio.AbstractEventLoop) -> MediaPoll:
    """The media poll of ``loop``, made on first use (one loop at a time:
    one left by a loop before, as tests leave them, is closed)."""
    poll = _polls[0]
    if poll is None or poll.loop is not loop:
        if poll is not None:
            poll.close()
        poll = _polls[0] = MediaPoll(loop)
    return poll


def watched_transports() -> list[RtpTransport]:
    """The media transports the running loop reads (:func:`rtp_backlog`'s pool)."""
    loop = asyncio.get_running_loop()
    return [t for t in _watched if t._loop is loop]


def rtp_backlog(pool: list[RtpTransport] | None = None, sample: int = BACKLOG_SAMPLE) -> int | None:
    """Bytes queued in the kernel for the readers, the median over up to
    ``sample`` of ``pool`` (by default :func:`watched_transports`) picked at
    random (see the module's docstring); ``None`` when the pool is empty
    or the system cannot tell (not Linux)."""
    if not _meminfo[0] or not _watched:
        return None
    if pool is None:
        pool = watched_transports()
    if len(pool) > sample:
        pool = random.sample(pool, sample)
    queued = []
    for transport in pool:
        try:
            raw = transport.sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4)
        except OSError as exc:
            if exc.errno in (errno.ENOPROTOOPT, errno.EINVAL):
                _meminfo[0] = False  # an old kernel: no such option
                return None
            continue  # closed meanwhile
        queued.append(struct.unpack("I", raw[:4])[0])
    return int(statistics.median_low(queued)) if queued else None


class BatchSink(Protocol):
    """Takes datagrams to send later (:class:`~engine.transport.rtp_send.SendWorkers`)."""

    def add(self, transport: RtpTransport, data: bytes, addr: Any) -> bool:
        """Queue ``data``; ``False``: send it yourself."""
        ...


class RtpTransport:
    """Receive and send RTP on one UDP socket (non-blocking, as
    :class:`~engine.transport.rtp_socket.RtpPortAllocator` makes them)."""

    #: While the media clock prepares a tick for the send workers: where every
    #: transport's datagrams go instead of ``sendto`` (one event loop, so one
    #: tick at a time; ``None`` otherwise).
    batch: ClassVar[BatchSink | None] = None

    # Slots: read per packet of every leg (tests/unit/test_media_layout.py).
    __slots__ = ("sock", "_recvfrom", "peer", "_recv", "_send", "handler", "_loop", "_last_read", "received", "sent",
                 "batch_memo", "send_errors", "stale", "stale_pt", "on_stale", "_pin_to", "_connecting",
                 "_unpin_timer", "pins", "watched", "_fd", "loop_time", "__weakref__")

    def __init__(self, sock: socket.socket, handler: DatagramHandler, *, watched: bool = True) -> None:
        self.sock = sock
        self._recvfrom = sock.recvfrom
        self._recv = sock.recv
        self._send = sock.send
        #: The address the socket is connected to (:meth:`pin`), else ``None``.
        self.peer: Any = None
        self._pin_to: Any = None
        #: Connected to this address, its queue not yet read empty (:meth:`_settle`).
        self._connecting: Any = None
        self._unpin_timer: asyncio.TimerHandle | None = None
        #: Times the socket was pinned (a re-pin after a silence counts again).
        self.pins = 0
        self.handler = handler
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_read = 0.0
        self.received = 0
        self.sent = 0
        #: The batch sink's note of where this transport's datagrams go.
        self.batch_memo: Any = None
        self.send_errors = 0
        #: Datagrams read and dropped as too old to play (a drain after an absence).
        self.stale = 0
        #: The RTP payload type that may be dropped so (the stream's audio);
        #: ``None``: nothing is (RTCP, a stream not yet negotiated).
        self.stale_pt: int | None = None
        #: Told how many were dropped, each time some are (the media session's jitter buffer).
        self.on_stale: Callable[[int], None] | None = None
        #: Sampled by :func:`rtp_backlog` while attached (media streams, not RTCP).
        self.watched = watched
        self._fd = -1
        #: The time of the loop that reads the socket (``loop.time``, bound
        #: at :meth:`attach`; kept after :meth:`detach`), for the handler: a
        #: packet's arrival without ``asyncio.get_running_loop()``, which
        #: costs a ``getpid`` system call on Python 3.11.
        self.loop_time: Callable[[], float] = _monotonic

    @property
    def attached(self) -> bool:
        return self._loop is not None

    def attach(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start delivering datagrams to the handler (idempotent)."""
        if self._loop is not None:
            return
        self._loop = loop = loop or asyncio.get_running_loop()
        self.loop_time = loop.time
        # what was queued before is no absence: read as a burst, nothing dropped
        self._last_read = _monotonic()
        self._fd = self.sock.fileno()  # kept: the socket may be closed before detach
        media_poll(loop).add(self._fd, self)
        if self.watched:
            _watched[self] = None

    def detach(self) -> None:
        """Stop reading (the socket stays open and owned by its port pair,
        disconnected if it was pinned)."""
        self.unpin()
        if self._loop is None:
            return
        _watched.pop(self, None)
        self.pause_reading()
        self._loop = None

    def pause_reading(self) -> None:
        """Stop reading while attached, datagrams left queued (as a loop too
        busy to come round would leave them); :meth:`resume_reading` undoes it."""
        poll = _polls[0]
        if poll is not None and poll.loop is self._loop and self._loop is not None:
            poll.remove(self._fd, self)

    def resume_reading(self) -> None:
        """Read again after :meth:`pause_reading` (nothing if detached)."""
        if self._loop is not None and self.sock.fileno() >= 0:
            media_poll(self._loop).add(self._fd, self)

    def _on_readable(self) -> None:
        # One datagram per wake-up is the common case (each phone sends one
        # packet in 20 ms): read it without a loop, then drain only in a burst
        # or after an absence (see the module docstring).
        now = _monotonic()
        gap = now - self._last_read
        self._last_read = now
        if gap > AWAY_GAP:
            self._drain_fresh()
        elif self._read_one() and gap < BURST_GAP:
            for _ in range(MAX_READS_PER_WAKEUP - 1):  # what a burst left queued
                if not self._read_one():
                    break
        # The loop runs every ready reader before its timers: a media tick
        # due meanwhile starts here rather than after the rest of the run.
        if now >= _next_tick_at[0]:
            _run_due()

    def _drain_fresh(self) -> None:
        """Read what is queued (:data:`MAX_READS_PER_WAKEUP` at most) and hand
        over the newest :data:`FRESH_KEEP`; the older ones are dropped as stale."""
        queued: list[tuple[bytes, Any]] = []
        peer = self.peer
        try:
            for _ in range(MAX_READS_PER_WAKEUP):
                if peer is None:
                    queued.append(self._recvfrom(_MAX_DATAGRAM))
                else:
                    queued.append((self._recv(_MAX_DATAGRAM), peer))
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:  # ICMP port unreachable and the like
            logger.debug("RTP socket error: %s", exc)
        count = len(queued)
        self.received += count
        pt = self.stale_pt
        if count > FRESH_KEEP and pt is not None:
            # older than the newest FRESH_KEEP: audio frames of the stream's
            # payload type go; anything else (a DTMF event, comfort noise,
            # what is not RTP) is handed over as ever
            old = count - FRESH_KEEP
            kept = [item for item in queued[:old]
                    if len(item[0]) < 12 or item[0][0] & 0xC0 != 0x80 or item[0][1] & 0x7F != pt]
            dropped = old - len(kept)
            if dropped:
                queued[:old] = kept
                self.stale += dropped
                if self.on_stale is not None:
                    self.on_stale(dropped)
        for data, addr in queued:
            try:
                self.handler(data, addr)  # read each time: a session that closes swaps it
            except Exception:
                logger.exception("RTP handler failed")

    def _read_one(self) -> bool | None:
        """Read one datagram and hand it over; ``False`` when none was
        waiting, ``None`` when the read failed (both falsy)."""
        try:
            addr = self.peer
            if addr is None:
                data, addr = self._recvfrom(_MAX_DATAGRAM)
            else:
                data = self._recv(_MAX_DATAGRAM)  # connected: the kernel let only the peer's through
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:  # ICMP port unreachable and the like
            logger.debug("RTP socket error: %s", exc)
            return None
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
            if addr is self.peer:
                self._send(data)
            else:
                self.sock.sendto(data, addr)
            self.sent += 1
        except OSError:
            self.send_errors += 1

    # -- pinning -----------------------------------------------------------------

    @property
    def pinned(self) -> bool:
        """Whether the socket is connected to :attr:`peer`."""
        return self.peer is not None

    def pin(self, addr: Any) -> None:
        """Connect the socket to ``addr`` (the latched source) soon: after
        the current callback, never inside the handler. Pass the very
        address object the handler's caller sends to, so that
        :meth:`sendto` recognises it by identity. Nothing happens while
        detached, pinned, or already about to pin."""
        if self._loop is None or self.peer is not None or self._pin_to is not None or self._connecting is not None:
            return  # (_pin_to is False after a connect failed, until unpin())
        self._pin_to = addr
        self._loop.call_soon(self._connect)

    def _connect(self) -> None:
        addr, self._pin_to = self._pin_to, None
        if addr is None or addr is False or self._loop is None or self.peer is not None:
            return
        try:
            self.sock.connect(addr)
        except OSError as exc:
            logger.debug("cannot pin the RTP socket to %s: %s", addr, exc)
            self._pin_to = False  # not again, until detached: pin() is asked on every packet meanwhile
            return
        self._connecting = addr
        self._settle()

    def _settle(self) -> None:
        """Read what was queued before the ``connect`` with its source
        address (it may come from anyone); once the queue was found empty,
        every datagram is the peer's. At most one wake-up's worth a turn:
        a flood queued before the ``connect`` is read over several turns
        (the kernel queues no more of it)."""
        addr, loop = self._connecting, self._loop
        if addr is None or loop is None:
            return
        for _ in range(MAX_READS_PER_WAKEUP):
            got = self._read_one()  # peer is still None: recvfrom, the real source
            if got is False:  # the queue is empty
                self._connecting = None
                self.peer = addr
                self.batch_memo = None  # the send workers learn that the socket is connected
                self.pins += 1
                self._last_read = _monotonic()
                self._unpin_timer = loop.call_later(UNPIN_AFTER, self._check_silence)
                return
            if got and self._connecting is not addr:  # the handler detached or unpinned
                return
        loop.call_soon(self._settle)

    def _check_silence(self) -> None:
        self._unpin_timer = None
        if self.peer is None or self._loop is None:
            return
        quiet = _monotonic() - self._last_read
        if quiet >= UNPIN_AFTER:
            self.unpin()
        else:
            self._unpin_timer = self._loop.call_later(UNPIN_AFTER - quiet, self._check_silence)

    def unpin(self) -> None:
        """Disconnect the socket: datagrams from anyone reach the handler
        again (and a later :meth:`pin` is tried even if one failed)."""
        self._pin_to = None
        if self._unpin_timer is not None:
            self._unpin_timer.cancel()
            self._unpin_timer = None
        if self.peer is not None or self._connecting is not None:
            self.peer = self._connecting = None
            self.batch_memo = None
            self._disconnect()

    def _disconnect(self) -> None:
        if self.sock.fileno() < 0:
            return
        try:
            disconnect(self.sock)
        except OSError as exc:
            logger.warning("%s", exc)
