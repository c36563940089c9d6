"""Every datagram the engine's RTP sockets receive and send, stamped.

:class:`~engine.transport.rtp_transport.RtpTransport` is the one place those
sockets are read (straight out of ``recvfrom``) and written (into
``sendto``), so wrapping it records the bytes a packet capture would show,
without root, for an engine running in the test's process.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from engine.transport.rtp_transport import RtpTransport


class RtpWireTap:
    """``packets``: (``time.monotonic()``, ``"in"``/``"out"``, data, peer address), in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.packets: list[tuple[float, str, bytes, Any]] = []
        original_init, original_sendto = RtpTransport.__init__, RtpTransport.sendto
        tap = self

        def init(transport: RtpTransport, sock: Any, handler: Any, *, watched: bool = True) -> None:
            def received(data: bytes, addr: Any) -> None:
                tap.packets.append((time.monotonic(), "in", data, addr))
                handler(data, addr)
            original_init(transport, sock, received, watched=watched)

        def sendto(transport: RtpTransport, data: bytes, addr: Any) -> None:
            tap.packets.append((time.monotonic(), "out", data, addr))
            original_sendto(transport, data, addr)

        monkeypatch.setattr(RtpTransport, "__init__", init)
        monkeypatch.setattr(RtpTransport, "sendto", sendto)

    def datagrams(self, direction: str) -> list[bytes]:
        """What went ``direction`` (``"in"`` or ``"out"``), in order."""
        return [data for _, way, data, _ in self.packets if way == direction]
