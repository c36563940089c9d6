"""RTP/RTCP port pairs from a configurable range.

:class:`RtpPortAllocator` hands out an even RTP port and the odd RTCP port
above it (RFC 3550 §11), each bound to a UDP socket so that no other process
can take it while the call lives. The media layer reads these sockets; until
it attaches, packets that arrive are left to the kernel's buffer and dropped.

With ``pool`` > 0 (the engine's setting) a released pair stays open and
bound in a first-in first-out pool, and is handed out again once it has
rested ``quarantine`` seconds, its receive queues emptied first: a socket
created, bound and closed for each of a call's two ports cost about 4% of a
call's CPU at hundreds of calls a second. Late packets of the old call that
arrive after its reuse meet the new call's latch, as they would on a port
the round-robin came back to.

:func:`disconnect` undoes a ``connect`` of such a socket (the transport
pins a steady source with one). It calls libc through :mod:`ctypes`, which
is why it lives here and not in :mod:`engine.transport.rtp_transport`:
that module is compiled (:mod:`engine.native`), and mypyc 2.4.1 emits a
bad C name for a module that imports :mod:`ctypes`.
"""

from __future__ import annotations

import ctypes
import os
import select
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

__all__ = ["RtpPortAllocator", "RtpPortPair", "NoPortsAvailable", "disconnect"]


class NoPortsAvailable(Exception):
    """Every port pair of the range is in use."""


@dataclass
class RtpPortPair:
    host: str
    rtp_port: int
    rtp: socket.socket
    rtcp: socket.socket

    def close(self) -> None:
        self.rtp.close()
        self.rtcp.close()


class RtpPortAllocator:
    """Allocate RTP/RTCP socket pairs on ``host`` within ``[start, end)``.

    Allocation walks the range round-robin from where it last stopped, so a
    port just released is not reused at once (late packets of the old call
    would land in the new one).
    """

    def __init__(self, host: str = "127.0.0.1", start: int = 20000, end: int = 30000, *,
                 pool: int = 0, quarantine: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if start % 2:
            start += 1
        if not 0 < start < end <= 65536:
            raise ValueError(f"bad RTP port range {start}-{end}")
        if pool < 0 or quarantine < 0:
            raise ValueError("pool and quarantine must not be negative")
        self.host = host
        self.start = start
        self.end = end
        self._next = start
        self.in_use: set[int] = set()
        #: Released pairs kept open for reuse (at most ``pool``), oldest first.
        self.pool = pool
        self.quarantine = quarantine
        self._clock = clock
        self._idle: deque[tuple[float, RtpPortPair]] = deque()

    #: The class of the sockets it binds: :class:`socket.socket`, or a
    #: subclass of it (the e2e tests' wire tap stamps what crosses them).
    socket_class: type[socket.socket] = socket.socket

    def _bind(self, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = self.socket_class(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((self.host, port))
        except OSError:
            sock.close()
            raise
        return sock

    def allocate(self) -> RtpPortPair:
        """Bind the next free pair.

        :raises NoPortsAvailable: when none of the range is free.
        """
        idle = self._idle
        if idle and self._clock() - idle[0][0] >= self.quarantine:
            pair = idle.popleft()[1]
            _drain_pair(pair)
            self.in_use.add(pair.rtp_port)
            return pair
        count = (self.end - self.start) // 2
        for _ in range(count):
            port = self._next
            self._next += 2
            if self._next + 1 >= self.end:
                self._next = self.start
            if port in self.in_use:
                continue
            try:
                rtp = self._bind(port)
            except OSError:
                continue
            try:
                rtcp = self._bind(port + 1)
            except OSError:
                rtp.close()
                continue
            self.in_use.add(port)
            return RtpPortPair(self.host, port, rtp, rtcp)
        raise NoPortsAvailable(f"no free RTP ports in {self.start}-{self.end}")

    def release(self, pair: RtpPortPair) -> None:
        """Give a pair back: kept open in the pool when there is room, else closed."""
        self.in_use.discard(pair.rtp_port)
        if len(self._idle) < self.pool and pair.rtp.fileno() >= 0 and pair.rtcp.fileno() >= 0:
            self._idle.append((self._clock(), pair))
        else:
            pair.close()

    @property
    def pooled(self) -> int:
        """Pairs resting in the pool."""
        return len(self._idle)

    def close(self) -> None:
        """Close the pooled pairs (the engine's stop); pairs in use are their calls'."""
        while self._idle:
            self._idle.popleft()[1].close()


def _drain_pair(pair: RtpPortPair) -> None:
    """Empty a pooled pair's receive queues. One ``poll`` first: usually
    nothing waits, and asking costs one system call where reading until
    the queue is empty costs an exception per socket."""
    poller = select.poll()
    poller.register(pair.rtp, select.POLLIN)
    poller.register(pair.rtcp, select.POLLIN)
    if poller.poll(0):  # a datagram or a queued ICMP error (POLLERR) on either
        _drain(pair.rtp)
        _drain(pair.rtcp)


def _drain(sock: socket.socket) -> None:
    """Discard what waits in a pooled socket's receive queue (the old call's last packets)."""
    for _ in range(10_000):
        try:
            sock.recv(2048)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # ICMP errors queued on the socket
            continue


class _SockaddrUnspec(ctypes.Structure):
    """A ``struct sockaddr`` of family ``AF_UNSPEC``: what dissolves a UDP
    socket's association (POSIX ``connect``)."""

    _fields_ = [("family", ctypes.c_ushort), ("data", ctypes.c_char * 26)]


_libc = ctypes.CDLL(None, use_errno=True)
_UNSPEC = _SockaddrUnspec(socket.AF_UNSPEC)


def disconnect(sock: socket.socket) -> None:
    """Undo ``sock.connect`` on a UDP socket: it receives from anyone again.

    Python's ``socket.connect`` takes only an address of the socket's own
    family, and the one call that disconnects takes ``AF_UNSPEC`` (a
    ``connect`` to ``0.0.0.0:0`` instead would leave a wildcard-bound
    socket tied to the local address the connection chose), so this calls
    libc's ``connect`` through :mod:`ctypes`.

    :raises OSError: when the system refuses.
    """
    if _libc.connect(sock.fileno(), ctypes.byref(_UNSPEC), ctypes.sizeof(_UNSPEC)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"cannot disconnect the RTP socket: {os.strerror(errno)}")
