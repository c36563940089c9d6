"""Pinning a leg's RTP socket to its latched source, on real loopback UDP.

:meth:`engine.transport.rtp_transport.RtpTransport.pin` connects the socket
once the media session has accepted ``pin_after`` packets from its latched
source (:class:`engine.media.rtp.RtpSourcePolicy`). Checks that a pinned
socket hears only its peer (a stranger's datagrams never reach Python),
that datagrams queued before the ``connect`` keep their real source, that
a silent peer is unpinned so that a NAT rebinding still latches, that a
renegotiation or a close unpins (the port pool gets an unconnected socket
back), and that a disconnect restores a wildcard socket's local address.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any, AsyncIterator

import pytest

from engine.calls.rtp_stream import MediaSession
from engine.media.clock import MediaClock
from engine.media.rtp import RtpPacket, RtpSourcePolicy
from engine.sip.offer_answer import PCMU, NegotiatedMedia
from engine.transport import rtp_transport
from engine.transport.rtp_socket import RtpPortAllocator
from engine.transport.rtp_socket import disconnect
from engine.transport.rtp_transport import MAX_READS_PER_WAKEUP, RtpTransport

PIN_AFTER = 5


def negotiated(port: int) -> NegotiatedMedia:
    return NegotiatedMedia(
        index=0, remote_address="127.0.0.1", remote_port=port, remote_rtcp_port=port + 1,
        codec=PCMU, telephone_event_pt=101, ptime=20, send=True, recv=True, on_hold=False,
    )


def udp(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


def connected_to(sock: socket.socket) -> Any:
    """The address ``sock`` is connected to, ``None`` when it is not."""
    try:
        return sock.getpeername()
    except OSError as exc:
        assert exc.errno == errno.ENOTCONN
        return None


class Rig:
    def __init__(self, pin_after: int = PIN_AFTER) -> None:
        self.ports = RtpPortAllocator("127.0.0.1", 41200, 41300)
        self.pair = self.ports.allocate()
        self.peer = udp()
        self.stranger = udp()
        self.clock = MediaClock()
        self.session = MediaSession(self.pair.rtp, self.clock, policy=RtpSourcePolicy(pin_after=pin_after))
        self.session.configure(negotiated(self.peer.getsockname()[1]))
        self.session.set_tone_listener(lambda digit, mode: None)  # read the socket
        self.target = ("127.0.0.1", self.pair.rtp_port)
        self.seq = 100

    def send(self, sock: socket.socket | None = None, count: int = 1, ssrc: int = 0x1234) -> None:
        for _ in range(count):
            packet = RtpPacket(0, self.seq, self.seq * 160, ssrc, bytes(160))
            self.seq = (self.seq + 1) & 0xFFFF
            (sock or self.peer).sendto(packet.serialize(), self.target)

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        self.session.close()
        await self.clock.stop()
        self.ports.release(self.pair)
        self.ports.close()
        self.peer.close()
        self.stranger.close()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    yield r
    await r.close()


async def test_a_steady_source_pins_the_socket_and_strangers_never_reach_python(rig: Rig) -> None:
    """Check the socket is connected to the peer after ``pin_after``
    packets, and that a stranger's datagrams are then dropped by the kernel:
    not read, not counted, while the peer's go on being accepted."""
    transport, latch = rig.session.transport, rig.session.latch
    assert latch is not None
    rig.send(count=PIN_AFTER - 1)
    rig.send(rig.stranger)  # refused by the latch (read and counted) while unpinned
    await rig.settle()
    assert not transport.pinned and latch.dropped_stranger == 1
    rig.send()
    await rig.settle()
    assert transport.pinned and transport.pins == 1
    assert connected_to(rig.pair.rtp) == rig.peer.getsockname()
    received = transport.received
    rig.send(rig.stranger, count=20, ssrc=0x9999)
    rig.send(count=3)
    await rig.settle()
    assert transport.received == received + 3  # the stranger's 20 never reached the transport
    assert latch.dropped_stranger == 1 and latch.accepted == PIN_AFTER + 3


async def test_the_pinned_socket_sends_to_its_peer_and_still_to_others(rig: Rig) -> None:
    """Check a pinned transport's datagrams reach the peer (``send`` on the
    connected socket) and that one addressed elsewhere still goes there."""
    rig.send(count=PIN_AFTER)
    await rig.settle()
    transport = rig.session.transport
    assert transport.pinned
    rig.session.push_payload(bytes(160))
    other = udp()
    try:
        transport.sendto(b"elsewhere", other.getsockname())
        await rig.settle()
        data, addr = rig.peer.recvfrom(2048)
        assert RtpPacket.parse(data).payload == bytes(160)
        assert addr == rig.target
        assert other.recvfrom(2048) == (b"elsewhere", rig.target)
        assert transport.send_errors == 0
    finally:
        other.close()


async def test_datagrams_queued_before_the_connect_keep_their_source() -> None:
    """Check that a stranger's datagram waiting in the queue when the socket
    is connected reaches the handler with the stranger's address, not as
    the peer's: only an emptied queue makes datagrams the peer's."""
    sock, peer, stranger = udp(), udp(), udp()
    seen: list[tuple[bytes, Any]] = []
    transport = RtpTransport(sock, lambda data, addr: seen.append((data, addr)))
    try:
        transport.attach()
        peer_addr = peer.getsockname()
        transport.pin(peer_addr)  # connects on the loop's next turn
        stranger.sendto(b"queued", sock.getsockname())
        peer.sendto(b"early", sock.getsockname())
        await asyncio.sleep(0.05)
        assert transport.pinned and transport.peer is peer_addr
        peer.sendto(b"late", sock.getsockname())
        await asyncio.sleep(0.05)
        assert seen == [(b"queued", stranger.getsockname()), (b"early", peer_addr), (b"late", peer_addr)]
    finally:
        transport.detach()
        for s in (sock, peer, stranger):
            s.close()


async def test_a_flood_queued_before_the_connect_is_read_with_its_source_then_the_socket_pins() -> None:
    """Check that when more datagrams wait than one wake-up reads, the
    socket stays connected but untrusted: the flood is read over several
    turns with the stranger's address, what the stranger sends after the
    ``connect`` is never delivered, and then the socket is pinned."""
    sock, peer, stranger = udp(), udp(), udp()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    seen: list[Any] = []
    transport = RtpTransport(sock, lambda data, addr: seen.append((data, addr)))
    flood = 3 * MAX_READS_PER_WAKEUP + 10
    try:
        transport.pin(peer.getsockname())  # detached: nothing happens
        assert transport.peer is None and connected_to(sock) is None
        for _ in range(flood):
            stranger.sendto(b"before", sock.getsockname())
        await asyncio.sleep(0.05)
        transport._loop = asyncio.get_running_loop()  # attached, but no reader: only the settling reads
        transport.pin(peer.getsockname())
        await asyncio.sleep(0)
        assert not transport.pinned and connected_to(sock) == peer.getsockname()
        assert seen == [(b"before", stranger.getsockname())] * MAX_READS_PER_WAKEUP
        stranger.sendto(b"after", sock.getsockname())
        peer.sendto(b"peer", sock.getsockname())
        for _ in range(5):
            await asyncio.sleep(0)
        assert transport.pinned and transport.pins == 1
        assert seen == [(b"before", stranger.getsockname())] * flood + [(b"peer", peer.getsockname())]
    finally:
        transport._loop = None
        transport.detach()
        for s in (sock, peer, stranger):
            s.close()


async def test_a_failed_connect_is_not_retried_on_every_packet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check that when ``connect`` refuses the address, the transport stays
    unpinned and later :meth:`RtpTransport.pin` calls (one a packet) schedule
    nothing until :meth:`RtpTransport.unpin` clears the failure."""
    sock = udp()
    transport = RtpTransport(sock, lambda data, addr: None)
    try:
        transport.attach()
        transport.pin(("::1", 5004))  # an IPv6 address for an IPv4 socket
        await asyncio.sleep(0)
        assert not transport.pinned and connected_to(sock) is None
        loop = asyncio.get_running_loop()
        calls: list[Any] = []
        real_call_soon = loop.call_soon

        def call_soon(callback: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(callback)
            return real_call_soon(callback, *args, **kwargs)

        monkeypatch.setattr(loop, "call_soon", call_soon)
        transport.pin(("::1", 5004))
        assert calls == []
        transport.unpin()
        transport.pin(("127.0.0.1", 5004))
        assert len(calls) == 1
        monkeypatch.undo()
        await asyncio.sleep(0)
        assert transport.pinned
    finally:
        transport.detach()
        sock.close()


async def test_a_silent_peer_is_unpinned_and_a_nat_rebinding_latches(rig: Rig,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Check that a pinned socket that read nothing for ``UNPIN_AFTER`` is
    disconnected, so that the peer's packets from a new port (a NAT
    rebinding: same SSRC, sequence going on) pass probation, latch, and pin
    the socket to the new port."""
    monkeypatch.setattr(rtp_transport, "UNPIN_AFTER", 0.1)
    transport, latch = rig.session.transport, rig.session.latch
    assert latch is not None
    rig.send(count=PIN_AFTER)
    await rig.settle()
    assert transport.pinned
    rebound = udp()
    try:
        rig.send(rebound, count=2)  # while pinned: dropped by the kernel
        await rig.settle()
        assert latch.dropped_stranger == 0
        await asyncio.sleep(0.2)
        assert not transport.pinned and connected_to(rig.pair.rtp) is None
        rig.send(rebound, count=6)
        await rig.settle()
        assert latch.remote_addr == rebound.getsockname() and latch.relatched == 1
        assert transport.pinned and transport.pins == 2
        assert connected_to(rig.pair.rtp) == rebound.getsockname()
    finally:
        rebound.close()


async def test_renegotiation_and_close_unpin(rig: Rig) -> None:
    """Check that a re-INVITE's new parameters unpin the socket (its
    address may change), that the steady source pins it again, and that a
    closed session gives its socket back unconnected: the next call on
    the pooled port hears anyone."""
    transport = rig.session.transport
    rig.send(count=PIN_AFTER)
    await rig.settle()
    assert transport.pinned
    rig.session.configure(negotiated(rig.peer.getsockname()[1]))
    assert not transport.pinned and connected_to(rig.pair.rtp) is None
    rig.send()
    await rig.settle()
    assert transport.pinned
    rig.session.close()
    assert not transport.pinned and connected_to(rig.pair.rtp) is None
    rig.stranger.sendto(b"next call", rig.target)
    await rig.settle()
    assert rig.pair.rtp.recvfrom(2048) == (b"next call", rig.stranger.getsockname())


async def test_pin_after_zero_never_pins() -> None:
    """Check ``pin_after=0`` (``--rtp-pin-after 0``) leaves the socket unconnected."""
    r = Rig(pin_after=0)
    try:
        r.send(count=20)
        await r.settle()
        assert r.session.latch is not None and r.session.latch.accepted == 20
        assert not r.session.transport.pinned and connected_to(r.pair.rtp) is None
    finally:
        await r.close()


@pytest.mark.parametrize("wildcard, loopback", [("0.0.0.0", "127.0.0.1"), ("::", "::1")])
def test_disconnect_restores_a_wildcard_local_address(wildcard: str, loopback: str) -> None:
    """Check :func:`disconnect` undoes ``connect``: the peer is gone and a
    socket bound to every address is again (a ``connect`` to the any
    address would leave it bound to the loopback the connection chose)."""
    sock, other = udp(wildcard), udp(loopback)
    try:
        sock.connect(other.getsockname())
        assert sock.getsockname()[0] == loopback
        disconnect(sock)
        assert connected_to(sock) is None
        assert sock.getsockname()[0] == wildcard
    finally:
        sock.close()
        other.close()

