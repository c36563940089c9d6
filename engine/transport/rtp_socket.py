"""RTP/RTCP port pairs from a configurable range.

:class:`RtpPortAllocator` hands out an even RTP port and the odd RTCP port
above it (RFC 3550 §11), each bound to a UDP socket so that no other process
can take it while the call lives. The media layer reads these sockets; until
it attaches, packets that arrive are left to the kernel's buffer and dropped.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

__all__ = ["RtpPortAllocator", "RtpPortPair", "NoPortsAvailable"]


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

    def __init__(self, host: str = "127.0.0.1", start: int = 20000, end: int = 30000) -> None:
        if start % 2:
            start += 1
        if not 0 < start < end <= 65536:
            raise ValueError(f"bad RTP port range {start}-{end}")
        self.host = host
        self.start = start
        self.end = end
        self._next = start
        self.in_use: set[int] = set()

    def _bind(self, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
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
        pair.close()
        self.in_use.discard(pair.rtp_port)
