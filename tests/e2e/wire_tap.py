"""Every datagram the engine's RTP and RTCP sockets receive and send, stamped.

:class:`~engine.transport.rtp_socket.RtpPortAllocator` makes every RTP and
RTCP socket a call uses, so having it make them of a :class:`socket.socket`
subclass (its ``socket_class``) that stamps each ``recv``/``recvfrom``/``send``/``sendto`` records
the bytes a packet capture would show, without root, for an engine running
in the test's process. It taps the sockets, not the engine's classes: the
transport and the pacer are compiled (:mod:`engine.native`), and a method
patched on their classes is one the compiled code never calls; what a
compiled module calls on a socket is looked up on the socket, as ever.

Create the tap before the engine: only sockets bound after it are tapped.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from engine.transport.rtp_socket import RtpPortAllocator


class _TappedSocket(socket.socket):
    """A UDP socket that reports what crosses it to :attr:`tap`."""

    tap: RtpWireTap

    def _peer(self) -> Any:
        try:
            return self.getpeername()
        except OSError:
            return None

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        self.tap.packets.append((time.monotonic(), "in", data, self._peer()))
        return data

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, Any]:
        data, addr = super().recvfrom(bufsize, flags)
        self.tap.packets.append((time.monotonic(), "in", data, addr))
        return data, addr

    def send(self, data: Any, flags: int = 0) -> int:
        self.tap.packets.append((time.monotonic(), "out", bytes(data), self._peer()))
        return super().send(data, flags)

    def sendto(self, data: Any, *args: Any) -> int:  # (data, addr) or (data, flags, addr)
        self.tap.packets.append((time.monotonic(), "out", bytes(data), args[-1]))
        return super().sendto(data, *args)


class RtpWireTap:
    """``packets``: (``time.monotonic()``, ``"in"``/``"out"``, data, peer address), in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.packets: list[tuple[float, str, bytes, Any]] = []
        tapped = type("TappedSocket", (_TappedSocket,), {"tap": self})
        monkeypatch.setattr(RtpPortAllocator, "socket_class", tapped)

    def datagrams(self, direction: str) -> list[bytes]:
        """What went ``direction`` (``"in"`` or ``"out"``), in order."""
        return [data for _, way, data, _ in self.packets if way == direction]
