"""Overload over real sockets (engine.transport.overload): while the
engine is overloaded a new INVITE gets a stateless 503 with Retry-After (or
is dropped), the calls it accepted still end normally, and new calls are
answered again once the load falls. The overload is forced through the
endpoint's lag source (the probe's reading of the loop lag), a tiny
bound of calls being set up, or a real backlog in the SIP socket's
receive queue while the loop is blocked."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import secrets
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

from engine.media.rtp import RtpPacket
from engine.server import Engine
from engine.sip.message import SipResponse
from engine.sip.parser import parse_message
from engine.transport.overload import LATE_MIN_LEGS, OverloadBounds, OverloadLevel
from engine.transport.rtp_transport import SO_MEMINFO
from engine.transport.sip_endpoint import SO_RCVBUFFORCE, UDP_READ_NOT_RELEASED, SecurityPolicy, udp_queue_fill

from .conftest import EngineFactory, PeerFactory, wait_until
from .sip_peer import Dialog, UdpPeer, request, sdp_offer

RULES = """
rules:
  - {name: InDialog, pattern: "talk", scenarios: [in_dialog]}
  - {name: Ring, pattern: "ring", scenarios: [ring_only]}
"""

TRUSTED = frozenset({"127.0.0.1", "::1"})


def force(engine: Engine, lag: float | None) -> None:
    """Make the overload probe read ``lag`` seconds of loop lag (``None``: the real one)."""
    engine.ua.endpoint.lag_source = None if lag is None else (lambda _real: lag)


async def cancel(peer: UdpPeer, dialog: Dialog) -> dict[str, int]:
    """CANCEL ``dialog``'s ringing INVITE; the final statuses by CSeq method."""
    peer.send(request("CANCEL", dialog.uri, local=peer.local, branch=dialog.invite_branch,
                      call_id=dialog.call_id, from_tag=dialog.from_tag, cseq=1, contact=False))
    got = {}
    for _ in range(2):
        response = await peer.expect()
        got[response.cseq.method] = response.status
    return got


async def overloaded(engine: Engine, level: OverloadLevel) -> bool:
    return await wait_until(lambda: engine.ua.endpoint.overload.level is level, 5.0)


def invite(peer: UdpPeer, port: int, *, branch: str, call_id: str, cseq: int = 7,
           headers: list[tuple[str, str]] | None = None) -> bytes:
    return request("INVITE", f"sip:talk@127.0.0.1:{port}", local=peer.local, branch=branch,
                   call_id=call_id, cseq=cseq, body=sdp_offer(peer.local[0]), headers=headers or [])


async def test_overload_refuses_new_invites_and_finishes_accepted_calls(
        make_engine: EngineFactory, peers: PeerFactory, caplog: pytest.LogCaptureFixture) -> None:
    """With a call up, a forced loop lag over the bound: a new INVITE gets
    503 with Retry-After echoing its Via (branch, received, rport),
    Call-ID and CSeq, and a To tag; the accepted call still takes an INFO
    and its BYE, and ends normally; the episode is logged once however many
    INVITEs it refused; once the lag falls a new INVITE is answered again."""
    engine = await make_engine(RULES)
    endpoint = engine.ua.endpoint
    port = engine.ua.port
    peer = await peers.udp(engine)
    accepted = Dialog(peer, f"sip:talk@127.0.0.1:{port}")
    await accepted.call()
    assert await wait_until(lambda: len(engine.ua.calls) == 1)

    caplog.set_level(logging.WARNING, logger="callbridge.security")
    force(engine, 0.3)
    assert await overloaded(engine, OverloadLevel.REFUSE)
    branch, call_id = "z9hG4bK" + secrets.token_hex(8), secrets.token_hex(10)
    peer.send(invite(peer, port, branch=branch, call_id=call_id))
    refused = await peer.expect(503)
    assert refused.headers.get("Retry-After") == "5"
    assert refused.call_id == call_id
    assert (refused.cseq.number, refused.cseq.method) == (7, "INVITE")
    via = refused.top_via
    assert via.branch == branch
    assert via.params["received"] == "127.0.0.1" and via.params["rport"] == str(peer.local[1])
    assert refused.to.tag and refused.from_.tag
    for _ in range(3):
        peer.send(invite(peer, port, branch="z9hG4bK" + secrets.token_hex(8), call_id=secrets.token_hex(10)))
        assert (await peer.expect(503)).status == 503
    assert endpoint.stats["overload_refused"] == 4

    # The accepted call: in-dialog requests are processed in full.
    accepted.send("INFO", body=b"Signal=5\r\n", content_type="application/dtmf-relay")
    assert (await peer.expect(method="INFO")).status == 200
    accepted.send("BYE")
    assert (await peer.expect(method="BYE")).status == 200
    assert await wait_until(lambda: not engine.ua.calls)

    force(engine, None)
    assert await overloaded(engine, OverloadLevel.NORMAL)
    fresh = Dialog(peer, f"sip:talk@127.0.0.1:{port}")
    await fresh.call()
    fresh.send("BYE")
    assert (await peer.expect(method="BYE")).status == 200
    events = [r.getMessage() for r in caplog.records if "event=overload" in r.getMessage()]
    assert len(events) == 1 and "level=refuse" in events[0]
    text = engine.metrics.render().decode()
    assert "callbridge_sip_overload_refused_total 4.0" in text
    assert "callbridge_sip_overload_episodes_total 1.0" in text


async def test_undecided_heads_are_refused_after_the_full_parse(
        make_engine: EngineFactory, peers: PeerFactory) -> None:
    """An INVITE the quick look cannot decide (a folded To line) is parsed
    and then refused all the same; compact header names take the quick
    path and their 503 carries them."""
    engine = await make_engine(RULES)
    port = engine.ua.port
    peer = await peers.udp(engine)
    force(engine, 0.3)
    assert await overloaded(engine, OverloadLevel.REFUSE)
    call_id = secrets.token_hex(10)
    data = invite(peer, port, branch="z9hG4bK" + secrets.token_hex(8), call_id=call_id)
    folded = data.replace(b"\r\nTo: <", b"\r\nTo:\r\n <", 1)
    assert folded != data
    peer.send(folded)
    assert (await peer.expect(503)).call_id == call_id
    compact = (data.replace(b"\r\nVia:", b"\r\nv:").replace(b"\r\nFrom:", b"\r\nf:")
               .replace(b"\r\nTo:", b"\r\nt:").replace(b"\r\nCall-ID:", b"\r\ni:"))
    peer.send(compact)
    raw = await peer.recv_raw()
    assert b"\r\ni: " + call_id.encode() in raw and b"\r\nRetry-After: 5\r\n" in raw
    response = parse_message(raw)
    assert isinstance(response, SipResponse) and response.status == 503
    assert engine.ua.endpoint.stats["overload_refused"] == 2


async def test_retransmitted_invite_reaches_its_transaction(
        make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A ringing call's INVITE retransmitted during overload is absorbed by
    its transaction (the 180 again), never refused with a 503; its CANCEL
    ends it as usual."""
    engine = await make_engine(RULES)
    port = engine.ua.port
    peer = await peers.udp(engine)
    dialog = Dialog(peer, f"sip:ring@127.0.0.1:{port}")
    dialog.invite()
    await peer.expect(180)
    force(engine, 0.3)
    assert await overloaded(engine, OverloadLevel.REFUSE)
    dialog.invite()  # the same branch: a retransmission
    assert (await peer.expect(180, method="INVITE")).status == 180
    assert await cancel(peer, dialog) == {"CANCEL": 200, "INVITE": 487}
    assert engine.ua.endpoint.stats["overload_refused"] == 0


async def test_drop_level_drops_new_invites_unanswered(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """Past the drop bound a new INVITE gets no answer at all, and is counted."""
    engine = await make_engine(RULES)
    port = engine.ua.port
    peer = await peers.udp(engine)
    force(engine, 2.0)
    assert await overloaded(engine, OverloadLevel.DROP)
    peer.send(invite(peer, port, branch="z9hG4bK" + secrets.token_hex(8), call_id=secrets.token_hex(10)))
    await peer.silence(0.3)
    assert engine.ua.endpoint.stats["overload_dropped"] == 1


async def test_calls_being_set_up_bound(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """With ``setup_calls`` 2, two ringing calls make the third caller get
    503; once one of them is cancelled (under half the bound) calls are
    taken again."""
    policy = SecurityPolicy(trusted=TRUSTED, overload=OverloadBounds(setup_calls=2, hold=0.2))
    engine = await make_engine(RULES, policy=policy)
    port = engine.ua.port
    peer = await peers.udp(engine)
    ringing = [Dialog(peer, f"sip:ring@127.0.0.1:{port}") for _ in range(2)]
    for dialog in ringing:
        dialog.invite()
        await peer.expect(180)
    assert await overloaded(engine, OverloadLevel.REFUSE)
    third = Dialog(peer, f"sip:talk@127.0.0.1:{port}")
    third.invite()
    assert (await peer.expect(method="INVITE")).status == 503
    for dialog in ringing:
        assert await cancel(peer, dialog) == {"CANCEL": 200, "INVITE": 487}
    assert await overloaded(engine, OverloadLevel.NORMAL)
    fourth = Dialog(peer, f"sip:talk@127.0.0.1:{port}")
    await fourth.call()
    fourth.send("BYE")
    assert (await peer.expect(method="BYE")).status == 200


async def test_invite_flood_while_overloaded_costs_no_session(make_engine: EngineFactory,
                                                              peers: PeerFactory) -> None:
    """Attack: 300 new INVITEs while overloaded each get a 503 and cost no
    scenario session and no transaction; from an untrusted source, the
    503s count against its rate, so a flood beyond its burst is banned
    rather than reflected."""
    engine = await make_engine(RULES)
    endpoint = engine.ua.endpoint
    port = engine.ua.port
    peer = await peers.udp(engine)
    force(engine, 0.3)
    assert await overloaded(engine, OverloadLevel.REFUSE)
    sessions_before = engine.runtime.sessions_started
    transactions_before = endpoint.layer.server_count
    for _ in range(300):
        peer.send(invite(peer, port, branch="z9hG4bK" + secrets.token_hex(8), call_id=secrets.token_hex(10)))
    assert await wait_until(lambda: endpoint.stats["overload_refused"] == 300)
    assert engine.runtime.sessions_started == sessions_before
    assert len(engine.runtime.sessions) == 0
    assert endpoint.layer.server_count == transactions_before
    got = 0
    while True:
        try:
            got += (await peer.expect(503, timeout=0.5)).status == 503
        except (asyncio.TimeoutError, AssertionError):
            break
    assert got == 300


async def test_untrusted_flood_while_overloaded_is_banned(make_engine: EngineFactory,
                                                          peers: PeerFactory) -> None:
    """Attack from an untrusted source: beyond its burst of 10 the 503s stop
    and the source is banned, so an overloaded engine cannot be turned into
    a reflector of 503s."""
    policy = SecurityPolicy(rate=0.01, burst=10, trusted=frozenset())
    engine = await make_engine(RULES, policy=policy)
    endpoint = engine.ua.endpoint
    port = engine.ua.port
    peer = await peers.udp(engine)
    force(engine, 0.3)
    assert await overloaded(engine, OverloadLevel.REFUSE)
    for _ in range(50):
        peer.send(invite(peer, port, branch="z9hG4bK" + secrets.token_hex(8), call_id=secrets.token_hex(10)))
    assert await wait_until(lambda: endpoint.stats["received"] >= 50)
    assert endpoint.stats["overload_refused"] == 10
    assert len(peer.drain()) <= 10
    assert endpoint.stats["banned"] >= 40


async def test_udp_receive_buffer_is_raised(make_engine: EngineFactory) -> None:
    """The SIP UDP socket asks for its receive buffer: the kernel grants
    more than its usual default of 212992 bytes (it doubles what it grants,
    capped by rmem_max) and the size is kept for the startup log."""
    engine = await make_engine(RULES)
    sizes = engine.ua.endpoint.udp_receive_buffers
    assert set(sizes) == {"127.0.0.1"}
    assert sizes["127.0.0.1"] > 212992


def _kernel_count(sock: socket.socket) -> tuple[int, int]:
    """``SO_MEMINFO``'s receive-memory count and buffer size of ``sock``."""
    values = struct.unpack("9I", sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 36))
    return values[0], values[1]


def _wait_for_count(sock: socket.socket, at_least: int = 1) -> bool:
    """Until the kernel counts ``at_least`` bytes received on ``sock`` (loopback delivers at once, nearly)."""
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        if _kernel_count(sock)[0] >= at_least:
            return True
        time.sleep(0.001)
    return False


def test_udp_queue_fill_counts_only_what_is_still_queued() -> None:
    """The queue fill the overload probe reads never exceeds what really
    waits in the socket, however the kernel accounts for the datagrams
    already read (Linux gives their memory back only once its reader queue
    is empty or a quarter of the buffer is owed), and is within that
    quarter of it: a socket filled to 70% of its buffer reads 45% (70 less
    the quarter); with all but a tenth read, at most that tenth; drained,
    zero."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        try:
            rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 512 * 1024)
        except OSError:
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 512 * 1024)
        payload = b"x" * 700
        tx.sendto(payload, rx.getsockname())
        assert _wait_for_count(rx)
        size, buffer = _kernel_count(rx)  # one datagram's charge, the whole buffer
        count = int(0.7 * buffer / size)
        for _ in range(count - 1):
            tx.sendto(payload, rx.getsockname())
        assert _wait_for_count(rx, count * size)
        fill, drops = udp_queue_fill(rx)
        assert drops == 0
        real = count * size / buffer
        assert real - UDP_READ_NOT_RELEASED - 1e-9 <= fill <= real and fill > 0.4
        for _ in range(count - count // 10):
            rx.recv(2048)
        left = count // 10
        kernel, _ = _kernel_count(rx)
        fill, _ = udp_queue_fill(rx)
        real = left * size / buffer
        assert fill <= real, (fill, real, kernel / buffer)
        while True:
            try:
                rx.recv(2048)
            except BlockingIOError:
                break
        assert udp_queue_fill(rx)[0] == 0.0
    finally:
        rx.close()
        tx.close()


async def test_a_real_backlog_in_the_sip_queue_refuses_new_invites(make_engine: EngineFactory,
                                                                   peers: PeerFactory) -> None:
    """The loop blocked while callers send INVITEs: the SIP socket's queue
    holds more than the bound once the loop comes back (the smoothed lag
    alone stays under its own bound), so the probe refuses, the queued
    INVITEs are answered 503, and once the queue is read calls are
    answered again. (A small receive buffer, so that a few hundred
    INVITEs fill it.)"""
    policy = SecurityPolicy(trusted=TRUSTED, udp_receive_buffer=256 * 1024,
                            overload=OverloadBounds(hold=0.2))
    engine = await make_engine(RULES, policy=policy)
    endpoint = engine.ua.endpoint
    port = engine.ua.port
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)  # every answer kept
    caller.bind(("127.0.0.1", 0))
    caller.setblocking(False)
    local = caller.getsockname()
    (proto,) = endpoint._udp.values()
    assert proto.transport is not None
    sip_socket = proto.transport.get_extra_info("socket")
    statuses: list[int] = []

    async def read_answers() -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(caller, 65535)
            statuses.append(parse_message(data).status)  # type: ignore[union-attr]

    def flood() -> None:
        # until the kernel counts 65% of the buffer: over the refuse bound
        # once the read-but-unreleased quarter is taken off, under the drop bound
        while _kernel_count(sip_socket)[0] < 0.65 * _kernel_count(sip_socket)[1]:
            caller.sendto(request("INVITE", f"sip:talk@127.0.0.1:{port}", local=local,
                                  branch="z9hG4bK" + secrets.token_hex(8), call_id=secrets.token_hex(10),
                                  body=sdp_offer("127.0.0.1")), ("127.0.0.1", port))
        # Blocked past the probe's due time, so that it samples the queue
        # after the loop's first batch of reads. Filled in less than its
        # period, the loop read batch after batch until it came round, and
        # a quarter of the buffer read released the queue's memory at once,
        # under the bound: one run of a fresh clone's suite failed so.
        time.sleep(policy.overload_probe + 0.02)

    reader = asyncio.ensure_future(read_answers())
    try:
        sender = threading.Thread(target=flood)
        sender.start()
        sender.join()  # on the loop's thread: the loop is blocked meanwhile, nothing is read
        assert await overloaded(engine, OverloadLevel.REFUSE)
        assert endpoint.overload.lag < endpoint.overload.bounds.lag  # the queue refused, not the lag
        assert await wait_until(lambda: 503 in statuses, 5.0)
        assert await overloaded(engine, OverloadLevel.NORMAL)
        assert endpoint.stats["overload_refused"] >= 1
    finally:
        reader.cancel()  # and waited for, so that the loop lets go of the socket before it closes
        await asyncio.gather(reader, return_exceptions=True)
        caller.close()
    peer = await peers.udp(engine)
    fresh = Dialog(peer, f"sip:talk@127.0.0.1:{port}")
    await fresh.call()
    fresh.send("BYE")
    assert (await peer.expect(method="BYE")).status == 200


def _rtp_port(ok: SipResponse) -> int:
    """The engine's RTP port in a 200's SDP answer."""
    match = re.search(rb"\nm=audio (\d+) ", ok.body)
    assert match is not None, ok.body
    return int(match.group(1))


ECHO_RULES = """
rules:
  - {name: Echo, pattern: "echo", scenarios: [echo_now]}
"""
ECHO_NOW = """
from engine.scenario import AppEvents, CallEvents, VoxEngine


async def on_alerting(e):
    e.call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    await e.call.answer()
    e.call.start_echo()


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
"""


@dataclass
class MediaCalls:
    """An engine with calls up, each with its media session."""

    engine: Engine
    peer: UdpPeer
    user: str
    dialogs: list[Dialog]
    #: The engine's RTP port of each call, in the order of ``dialogs``.
    rtp_ports: list[int]

    def session(self, rtp_port: int) -> Any:
        """The media session reading ``rtp_port``."""
        sessions = [call.media.session for call in self.engine.ua.calls]  # type: ignore[attr-defined]
        return next(s for s in sessions if s.transport.sock.getsockname()[1] == rtp_port)

    async def refused_then_answered(self) -> None:
        """A new INVITE gets 503 with Retry-After; once the engine is back to
        normal (the frames come on time again), a new call is answered and
        every call ends with its BYE answered."""
        peer, port = self.peer, self.engine.ua.port
        peer.send(invite(peer, port, branch="z9hG4bK" + secrets.token_hex(8), call_id=secrets.token_hex(10)))
        assert (await peer.expect(503)).headers.get("Retry-After") == "5"
        assert await overloaded(self.engine, OverloadLevel.NORMAL)
        await self.answered_then_all_hang_up()

    async def answered_then_all_hang_up(self) -> None:
        """A new call is answered; then every call ends with its BYE answered."""
        fresh = Dialog(self.peer, f"sip:{self.user}@127.0.0.1:{self.engine.ua.port}")
        await fresh.call()
        for dialog in (*self.dialogs, fresh):
            dialog.send("BYE")
            assert (await self.peer.expect(method="BYE")).status == 200
        assert await wait_until(lambda: not self.engine.ua.calls)


async def media_calls(make_engine: EngineFactory, peers: PeerFactory, count: int, *, echo: bool) -> MediaCalls:
    """``count`` answered calls to an engine, each reading its RTP: to a
    scenario that echoes (``echo``: its jitter buffer is fed) or one that
    only holds the call (its RTP is read for the RTCP statistics)."""
    engine = await (make_engine(ECHO_RULES, {"echo_now": ECHO_NOW}) if echo else make_engine(RULES))
    peer = await peers.udp(engine)
    user = "echo" if echo else "talk"
    dialogs = [Dialog(peer, f"sip:{user}@127.0.0.1:{engine.ua.port}") for _ in range(count)]
    rtp_ports = [_rtp_port(await dialog.call()) for dialog in dialogs]
    assert await wait_until(lambda: len(engine.ua.calls) == count and all(
        call.media.session is not None for call in engine.ua.calls))  # type: ignore[attr-defined]
    return MediaCalls(engine, peer, user, dialogs, rtp_ports)


async def test_rtp_read_backlog_refuses_new_calls(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """Media saturation: the RTP readers of most calls fall behind their
    phones (here: the loop stops reading their sockets while the phones
    send), so the kernel queues grow; with the default bound (8 KiB on the
    median sampled socket) a new INVITE gets 503 and Retry-After, the
    accepted calls still end normally, and once the readers caught up new
    calls are answered again. /metrics shows the backlog."""
    calls = await media_calls(make_engine, peers, 3, echo=False)
    engine, peer, port = calls.engine, calls.peer, calls.engine.ua.port
    transports = [calls.session(rtp).transport for rtp in calls.rtp_ports]
    for transport in transports:
        transport.pause_reading()
    phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        packet = bytes([0x80, 0]) + bytes(10) + bytes([0xFF]) * 160
        for rtp in calls.rtp_ports:
            for _ in range(12):  # 240 ms of audio unread
                phone.sendto(packet, ("127.0.0.1", rtp))
        assert await overloaded(engine, OverloadLevel.REFUSE)
        assert engine.ua.endpoint.overload.media_backlog >= 8192
        peer.send(invite(peer, port, branch="z9hG4bK" + secrets.token_hex(8), call_id=secrets.token_hex(10)))
        refused = await peer.expect(503)
        assert refused.headers.get("Retry-After") == "5"
        text = engine.metrics.render().decode()
        backlog = re.search(r"\ncallbridge_rtp_read_backlog_bytes (\S+)\n", text)
        assert backlog is not None and float(backlog.group(1)) >= 8192
        assert "callbridge_sip_overload_refused_total 1.0" in text

        for transport in transports:  # the readers catch up
            transport.resume_reading()
        assert await overloaded(engine, OverloadLevel.NORMAL)
        await calls.answered_then_all_hang_up()
    finally:
        phone.close()


async def test_one_flooded_rtp_port_refuses_nothing(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """Attack: a stranger fills one call's RTP socket to the brim (its
    queue full, as if its reader could not keep up) while the other calls'
    readers keep up: the backlog is the median sampled socket's, so new
    calls are still answered."""
    calls = await media_calls(make_engine, peers, 3, echo=False)
    endpoint = calls.engine.ua.endpoint
    victim = calls.session(calls.rtp_ports[0]).transport
    victim.pause_reading()
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(2000):
            stranger.sendto(b"\x80" * 172, ("127.0.0.1", calls.rtp_ports[0]))
        probes = endpoint._probes
        assert await wait_until(lambda: endpoint._probes >= probes + 10, 5.0)
        assert endpoint.overload.level is OverloadLevel.NORMAL
        assert endpoint.overload.media_backlog < 8192
        victim.resume_reading()
        await calls.answered_then_all_hang_up()
    finally:
        stranger.close()


def _rtp(seq: int, ssrc: int) -> bytes:
    """A PCMU frame: sequence ``seq``, timestamp 160 a frame."""
    return RtpPacket(0, seq, seq * 160, ssrc, bytes([0xFF]) * 160).serialize()


async def test_legs_late_for_their_ticks_refuse_new_calls(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """Media saturation as the jitter buffers see it: for seconds on end
    every one of fifty calls (LATE_MIN_LEGS) gets frames after their tick
    has played (here frames held back and sent late on purpose); from half
    the calls in two whole seconds a new INVITE gets 503, and once the
    frames come on time again the level falls and calls are answered
    again. /metrics shows the share."""
    calls = await media_calls(make_engine, peers, LATE_MIN_LEGS, echo=True)
    engine = calls.engine
    phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        overload = engine.ua.endpoint.overload
        for seq in range(200):  # 4 s; every tenth frame comes 200 ms late
            for i, rtp in enumerate(calls.rtp_ports):
                if seq % 10 != 5:
                    phone.sendto(_rtp(seq, 1000 + i), ("127.0.0.1", rtp))
                if seq % 10 == 5 and seq >= 15:
                    phone.sendto(_rtp(seq - 10, 1000 + i), ("127.0.0.1", rtp))
            await asyncio.sleep(0.02)
            if overload.level is OverloadLevel.REFUSE:
                break
        assert await overloaded(engine, OverloadLevel.REFUSE)
        assert overload.late_legs == 1.0
        assert "\ncallbridge_rtp_late_legs 1.0\n" in engine.metrics.render().decode()
        await calls.refused_then_answered()
    finally:
        phone.close()


async def test_frames_a_busy_loop_reads_too_late_to_play_refuse_new_calls(make_engine: EngineFactory,
                                                                           peers: PeerFactory) -> None:
    """Media saturation as the readers see it: a loop too busy to come round
    each of fifty calls' sockets for 60 ms at a time (here their reading
    paused while the phones send 15 frames each) drains them when it
    does. The frames too old to play are dropped before the jitter
    buffers see them, and count late there all the same, with those of
    the kept ones that come behind playout: every call is late, the
    overload guard refuses new calls (the backlog bound off, which the
    paused queues would trip too), and with the loop keeping up again
    calls are answered. Without the stale ones counted, 72% of the calls
    were late, not all."""
    calls = await media_calls(make_engine, peers, LATE_MIN_LEGS, echo=True)
    engine = calls.engine
    transports = [calls.session(rtp).transport for rtp in calls.rtp_ports]
    phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        overload = engine.ua.endpoint.overload
        # the queues a paused reader leaves trip the backlog bound as well: off, to see the late legs alone
        overload.bounds = dataclasses.replace(overload.bounds, media_backlog=0)
        seq = 0
        for _ in range(15):  # up to 4.5 s: 15 frames of each call read as one drain every 300 ms
            for transport in transports:
                transport.pause_reading()
            for _ in range(15):
                for i, rtp in enumerate(calls.rtp_ports):
                    phone.sendto(_rtp(seq, 1000 + i), ("127.0.0.1", rtp))
                seq += 1
            await asyncio.sleep(0.06)
            for transport in transports:
                transport.resume_reading()
            await asyncio.sleep(0.24)
            if overload.level is OverloadLevel.REFUSE:
                break
        assert await overloaded(engine, OverloadLevel.REFUSE)
        assert overload.late_legs == 1.0
        sessions = [calls.session(rtp) for rtp in calls.rtp_ports]
        assert all(s.transport.stale >= 5 and s.jitter.stats.late >= s.transport.stale for s in sessions)
        await calls.refused_then_answered()
    finally:
        phone.close()


async def test_one_caller_sending_stale_frames_refuses_nothing(make_engine: EngineFactory,
                                                               peers: PeerFactory) -> None:
    """Attack: of fifty calls (LATE_MIN_LEGS), one caller sends thousands
    of frames after their time (each one counted late by its jitter
    buffer): that is one leg of fifty, not half, so new calls are still
    answered."""
    calls = await media_calls(make_engine, peers, LATE_MIN_LEGS, echo=True)
    target = calls.rtp_ports[0]
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        overload = calls.engine.ua.endpoint.overload
        seen = set()
        for seq in range(180):  # 3.6 s: after four in sequence (the latch), every odd frame 200 ms late
            if seq < 4 or seq % 2 == 0:
                attacker.sendto(_rtp(seq, 7), ("127.0.0.1", target))
            if seq >= 15 and seq % 2 == 1:
                for _ in range(20):  # and many times over
                    attacker.sendto(_rtp(seq - 10, 7), ("127.0.0.1", target))
            seen.add((overload.level, overload.late_legs))
            await asyncio.sleep(0.02)
        assert calls.session(target).jitter.stats.late >= 1000
        assert {level for level, _ in seen} == {OverloadLevel.NORMAL}
        assert max(share for _, share in seen) == pytest.approx(1 / LATE_MIN_LEGS)
        await calls.answered_then_all_hang_up()
    finally:
        attacker.close()
