"""Small helpers for tests that hold raw UDP sockets (RTP peers, fake trunks)."""

from __future__ import annotations

import socket


def drain(sock: socket.socket, size: int = 65536) -> list[bytes]:
    """Every datagram waiting on non-blocking ``sock``, oldest first (none: ``[]``)."""
    out = []
    while True:
        try:
            out.append(sock.recv(size))
        except BlockingIOError:
            return out
