"""A call's media beyond playback, on real loopback sockets: RFC 4733 digits
sent in the audio stream, RTCP (reports, statistics, round-trip time, BYE),
the RTP inactivity timeout, hold, and strict RTP (a stranger cannot take
the stream, a victim address in the SDP gets media only for the grace, a
phone behind NAT latches after the probation).

The first tests drive :class:`engine.calls.sip_media.SipLegMedia` with SDP
written by the test and a "phone" made of two sockets (RTP on an even port,
RTCP on the odd one above); the last ones run a whole engine with a small
``rtp_timeout`` and a scripted SIP caller.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import AsyncIterator, Iterator

import pytest

from engine.calls.sip_media import SipLegMedia
from engine.media.codecs.telephone_event import TelephoneEvent, TelephoneEventReceiver
from engine.media.players import ToneSource
from engine.media.rtcp import (
    Bye, ReceiverReport, ReportBlock, RtcpPacket, Sdes, SenderReport, ntp_middle32, parse_rtcp, serialize_rtcp,
)
from engine.media.rtcp_session import MediaTimedOut
from engine.media.rtp import RtpPacket, RtpReceiverLatch, RtpSender, RtpSourcePolicy
from engine.server import StartupError
from engine.media.clock import MediaClock
from engine.transport.rtp_socket import RtpPortAllocator, RtpPortPair

from logs import session_logs, wait_for_log
from udp import drain

from .conftest import EngineFactory, PeerFactory, wait_until
from .sip_peer import Dialog, sdp_offer


class Phone:
    """The far end's media: RTP and RTCP sockets, as a port pair."""

    def __init__(self, pair: RtpPortPair) -> None:
        self.pair = pair
        self.rtp = pair.rtp
        self.rtcp = pair.rtcp
        self.sender = RtpSender()

    def rtp_packets(self) -> list[RtpPacket]:
        return [RtpPacket.parse(d) for d in drain(self.rtp)]

    def send_rtp(self, to: int, count: int = 1) -> None:
        for _ in range(count):
            self.rtp.sendto(self.sender.next_packet(b"\xff" * 160, 0, 160).serialize(), ("127.0.0.1", to))


class Rig:
    """A media handler answering the phone's offer, on the engine's clock."""

    def __init__(self, rtp_timeout: float = 0.0, policy: RtpSourcePolicy | None = None) -> None:
        self.ports = RtpPortAllocator("127.0.0.1", 42000, 42200)
        self.phone = Phone(self.ports.allocate())
        self.clock = MediaClock()
        self.handler = SipLegMedia(self.ports, "127.0.0.1", clock=self.clock, rtp_timeout=rtp_timeout,
                                   rtp_policy=policy, call_id="c0ffee")
        self.handler.rtcp_interval = 0.2
        self.timeouts: list[MediaTimedOut] = []

    def offer(self, direction: str | None = None, version: int = 1) -> None:
        self.handler.create_answer(sdp_offer("127.0.0.1", self.phone.pair.rtp_port, direction, version))

    @property
    def port(self) -> int:
        assert self.handler.pair is not None
        return self.handler.pair.rtp_port

    async def close(self) -> None:
        self.handler.close()
        await self.clock.stop()
        self.ports.release(self.phone.pair)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig(rtp_timeout=0.3)
    yield r
    await r.close()


# -- RFC 4733 digits in the audio stream -------------------------------------------


async def test_digits_take_the_audio_stream(rig: Rig) -> None:
    """Check digits sent during a playback: one SSRC and one unbroken
    sequence for audio and events; no audio while the events go out; each
    event on one timestamp that continues the audio clock; the audio after
    them starts a talkspurt (marker) at the right timestamp; the phone's
    receiver hears exactly '12'."""
    rig.offer()
    done: list[bool] = []
    assert rig.handler.start_playback(ToneSource(1000))
    await asyncio.sleep(0.1)
    assert rig.handler.start_digits("12", 0.1, 0.07, done.append)
    await wait_until(lambda: bool(done))
    await asyncio.sleep(0.1)
    rig.handler.stop_playback()
    await asyncio.sleep(0.05)
    packets = rig.phone.rtp_packets()
    assert done == [True]
    assert len({p.ssrc for p in packets}) == 1
    seqs = [p.sequence_number for p in packets]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:]))
    kinds = "".join("e" if p.payload_type == 101 else "a" for p in packets)
    assert kinds.strip("a") == "e" * 14, kinds  # 7 packets per digit, nothing between
    first = kinds.index("e")
    events = packets[first:first + 14]
    last_audio, next_audio = packets[first - 1], packets[first + 14]
    assert events[0].timestamp == (last_audio.timestamp + 160) & 0xFFFFFFFF
    assert {p.timestamp for p in events[:7]} == {events[0].timestamp}
    assert {p.timestamp for p in events[7:]} == {(events[0].timestamp + 9 * 160) & 0xFFFFFFFF}
    assert [p.marker for p in events] == ([True] + [False] * 6) * 2
    assert next_audio.marker and next_audio.payload_type == 0
    assert next_audio.timestamp == (events[7].timestamp + 7 * 160) & 0xFFFFFFFF
    receiver = TelephoneEventReceiver()
    heard = [d.digit for p in events for d in receiver.receive(p.payload, p.timestamp, 0.0)]
    assert heard == ["1", "2"]


async def test_digits_without_playback_and_stopped(rig: Rig) -> None:
    """Check digits with nothing playing put the session on the clock; stop()
    reports False at once and still ends the open event (three end packets);
    the next digits wait for those end packets."""
    rig.offer()
    first: list[bool] = []
    second: list[bool] = []
    rig.handler.start_digits("123", 0.5, 0.07, first.append)
    await asyncio.sleep(0.09)
    rig.handler.start_digits("9", 0.1, 0.07, second.append)  # replaces: stops "123"
    assert first == [False]
    await wait_until(lambda: bool(second))
    packets = rig.phone.rtp_packets()
    assert second == [True]
    events = [TelephoneEvent.parse(p.payload) for p in packets]
    assert [e.event for e in events].count(1) >= 4 and 2 not in [e.event for e in events]
    ends_of_1 = [e for e in events if e.event == 1 and e.end]
    assert len(ends_of_1) == 3 and ends_of_1[0].duration < 4000
    nine = [i for i, e in enumerate(events) if e.event == 9]
    assert nine[0] > max(i for i, e in enumerate(events) if e.event == 1)
    assert packets[nine[0]].marker


async def test_digits_on_hold_go_nowhere(rig: Rig) -> None:
    """Check digits while the phone holds the call are not sent (time passes)."""
    rig.offer(direction="sendonly")
    done: list[bool] = []
    rig.handler.start_digits("1", 0.1, 0.07, done.append)
    await wait_until(lambda: bool(done))
    assert done == [True] and rig.phone.rtp_packets() == []


async def test_no_digits_without_telephone_event() -> None:
    """Check start_digits refuses when telephone-event was not negotiated."""
    rig = Rig()
    try:
        offer = sdp_offer("127.0.0.1", rig.phone.pair.rtp_port).replace(b" 0 101\r\n", b" 0\r\n")
        rig.handler.create_answer(offer)
        assert not rig.handler.telephone_event
        assert not rig.handler.start_digits("1", 0.1, 0.07)
        assert rig.handler.session is None
    finally:
        await rig.close()


# -- RTCP ------------------------------------------------------------------------------


async def test_rtcp_reports_statistics_and_round_trip() -> None:
    """Check RTCP on the odd port: a receiver report with SDES CNAME about the
    phone's stream arrives at the phone's RTCP port; once we play audio an
    SR; the phone's RR about that SR gives the round-trip time and the
    remote loss and jitter; media_stats() sums it up."""
    rig = Rig(rtp_timeout=10.0)
    try:
        rig.handler.watch_rtp(rig.timeouts.append)
        rig.offer()
        phone = rig.phone
        for _ in range(5):
            phone.send_rtp(rig.port)
            await asyncio.sleep(0.02)
        reports: list[list[RtcpPacket]] = []

        def received(kind: type) -> bool:
            reports.extend(parse_rtcp(d) for d in drain(phone.rtcp))
            return any(isinstance(r[0], kind) for r in reports)

        await wait_until(lambda: received(ReceiverReport), timeout=2)
        report, sdes = next(r for r in reports if isinstance(r[0], ReceiverReport))[:2]
        assert isinstance(report, ReceiverReport) and isinstance(sdes, Sdes)
        assert [(b.ssrc, b.cumulative_lost) for b in report.reports] == [(phone.sender.ssrc, 0)]
        assert sdes.chunks[0].cname == rig.handler.session.rtcp.cname.encode()  # type: ignore[union-attr]
        rig.handler.start_playback(ToneSource(440, 0.2))
        await wait_until(lambda: received(SenderReport), timeout=2)
        sr = next(r[0] for r in reports if isinstance(r[0], SenderReport))
        assert isinstance(sr, SenderReport) and sr.packet_count >= 1
        block = ReportBlock(sr.ssrc, 64, 3, 100, 160, ntp_middle32(sr.ntp_timestamp), 0)
        phone.rtcp.sendto(serialize_rtcp([ReceiverReport(phone.sender.ssrc, (block,))]),
                          ("127.0.0.1", rig.port + 1))
        await wait_until(lambda: rig.handler.media_stats().rtt_ms is not None)
        stats = rig.handler.media_stats()
        assert stats.rtt_ms is not None and 0 <= stats.rtt_ms < 1000
        assert (stats.remote_fraction_lost, stats.remote_packets_lost, stats.remote_jitter_ms) == (0.25, 3, 20.0)
        assert stats.packets_received == 5 and stats.bytes_received == 800 and stats.packets_lost == 0
        assert stats.packets_sent >= sr.packet_count and stats.bytes_sent == 160 * stats.packets_sent
        assert stats.rtcp_sent >= 2 and stats.rtcp_received == 1
        assert rig.timeouts == []
    finally:
        await rig.close()


async def test_rtcp_input_is_checked(rig: Rig) -> None:
    """Check malformed RTCP from the phone is counted, RTCP from another host
    is dropped, and neither crashes anything."""
    rig.handler.watch_rtp(rig.timeouts.append)
    rig.offer()
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.2", 0))
    try:
        phone = rig.phone
        phone.rtcp.sendto(b"\x80\xc9\x00\x09garbage", ("127.0.0.1", rig.port + 1))
        stranger.sendto(serialize_rtcp([Bye((1,))]), ("127.0.0.1", rig.port + 1))
        await wait_until(lambda: rig.handler.media_stats().rtcp_malformed == 1)
        await wait_until(lambda: rig.handler.rtcp is not None and rig.handler.rtcp.dropped == 1)
        assert rig.handler.rtcp is not None and rig.handler.rtcp.dropped == 1
        assert rig.handler.media_stats().rtcp_malformed == 1
        assert rig.handler.session is not None and rig.handler.session.rtcp is not None
        assert not rig.handler.session.rtcp.remote_bye
    finally:
        stranger.close()


async def test_bye_at_close_and_stats_kept(rig: Rig) -> None:
    """Check closing sends SR + SDES + BYE to the phone's RTCP port and the
    statistics survive the close."""
    rig.offer()
    done: list[bool] = []
    rig.handler.start_playback(ToneSource(440, 0.1), done.append)
    await wait_until(lambda: bool(done))
    rig.handler.close()
    await asyncio.sleep(0.05)
    last = parse_rtcp(drain(rig.phone.rtcp)[-1])
    assert isinstance(last[0], SenderReport) and isinstance(last[-1], Bye)
    assert rig.handler.media_stats().packets_sent == 5


# -- RTP inactivity ---------------------------------------------------------------------


async def test_rtp_timeout_fires_once_without_media(rig: Rig) -> None:
    """Check the timeout fires once, rtp_timeout after the call connected."""
    rig.offer()
    loop = asyncio.get_running_loop()
    start = loop.time()
    rig.handler.watch_rtp(rig.timeouts.append)
    await wait_until(lambda: bool(rig.timeouts), timeout=2)
    elapsed = loop.time() - start
    await asyncio.sleep(0.4)
    assert len(rig.timeouts) == 1 and 0.29 <= elapsed < 0.6
    assert rig.timeouts[0].idle >= 0.29


async def test_rtp_keeps_the_call_alive(rig: Rig) -> None:
    """Check RTP every 50 ms keeps the timeout away; when it stops, the
    timeout follows."""
    rig.offer()
    rig.handler.watch_rtp(rig.timeouts.append)
    for _ in range(14):
        rig.phone.send_rtp(rig.port)
        await asyncio.sleep(0.05)
    assert rig.timeouts == []
    await wait_until(lambda: bool(rig.timeouts), timeout=2)
    assert len(rig.timeouts) == 1


async def test_hold_suspends_the_timeout(rig: Rig) -> None:
    """Check no timeout while the phone holds the call (sendonly, then
    inactive), and one rtp_timeout after it resumes."""
    rig.offer()
    rig.handler.watch_rtp(rig.timeouts.append)
    rig.offer("sendonly", 2)
    await asyncio.sleep(0.4)
    rig.offer("inactive", 3)
    await asyncio.sleep(0.4)
    assert rig.timeouts == []
    rig.offer("sendrecv", 4)
    await wait_until(lambda: bool(rig.timeouts), timeout=2)
    assert len(rig.timeouts) == 1


async def test_timeout_off_makes_no_session() -> None:
    """Check with rtp_timeout 0 a connected call without media use has no
    media session, no RTCP and reads nothing."""
    rig = Rig(rtp_timeout=0.0)
    try:
        rig.offer()
        rig.handler.watch_rtp(rig.timeouts.append)
        assert rig.handler.session is None and rig.handler.rtcp is None
        assert rig.handler.media_stats().packets_received == 0
    finally:
        await rig.close()


# -- strict RTP: hijack and reflection -------------------------------------------------


def loopback_udp() -> Iterator[socket.socket]:
    """A non-blocking UDP socket on 127.0.0.1 (a phone's RTP port, an attacker's)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


attacker = pytest.fixture(loopback_udp, name="attacker")
rtp_socket = pytest.fixture(loopback_udp, name="rtp_socket")


def latch_of(rig: Rig) -> RtpReceiverLatch:
    session = rig.handler.session
    assert session is not None and session.latch is not None
    return session.latch


async def test_stranger_cannot_take_the_stream(rig: Rig, attacker: socket.socket,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """Check an attacker on another port who sends valid RTP with a guessed
    SSRC, before and after the phone's first packet, is never latched: the
    playback goes to the SDP address, the attacker gets nothing, and one
    security line names it."""
    caplog.set_level(logging.WARNING, logger="callbridge.security")
    rig.offer()
    rig.handler.watch_rtp(rig.timeouts.append)
    spoof = RtpSender(ssrc=0x12345678)
    target = ("127.0.0.1", rig.port)
    for _ in range(3):  # fewer than the probation, before the phone sends
        attacker.sendto(spoof.next_packet(b"\xff" * 160, 0, 160).serialize(), target)
    await wait_until(lambda: latch_of(rig).dropped_stranger == 3)
    rig.phone.send_rtp(rig.port)
    await wait_until(lambda: latch_of(rig).latched)
    for _ in range(10):  # consecutive, but not the phone's SSRC
        attacker.sendto(spoof.next_packet(b"\xff" * 160, 0, 160).serialize(), target)
    await wait_until(lambda: latch_of(rig).dropped_stranger == 13)
    done: list[bool] = []
    rig.handler.start_playback(ToneSource(440, 0.2), done.append)
    await wait_until(lambda: bool(done))
    await asyncio.sleep(0.05)
    latch = latch_of(rig)
    assert latch.remote_addr == rig.phone.rtp.getsockname() and latch.accepted == 1
    assert len(rig.phone.rtp_packets()) == 10 and drain(attacker) == []
    assert rig.handler.media_stats().packets_received == 1
    lines = [r.getMessage() for r in caplog.records if "rtp_source_refused" in r.getMessage()]
    assert lines == [f"security event=rtp_source_refused src=127.0.0.1 port={attacker.getsockname()[1]}"
                     " call=c0ffee"]


async def test_victim_in_sdp_gets_media_only_for_the_grace() -> None:
    """Check an SDP address that never sends (a victim's) gets RTP and RTCP
    only during the send grace: once the gate closed, the counts stop
    growing while the playback goes on, and the frames are counted unsent."""
    rig = Rig(policy=RtpSourcePolicy(send_grace=0.3))
    try:
        rig.offer()
        victim = rig.phone
        rig.handler.start_playback(ToneSource(440))
        await wait_until(lambda: latch_of(rig).unsent >= 1)
        assert rig.handler.rtcp is not None
        await wait_until(lambda: rig.handler.rtcp is not None and rig.handler.rtcp.unsent >= 1)
        during = len(drain(victim.rtp))
        drain(victim.rtcp)
        unsent = latch_of(rig).unsent
        await wait_until(lambda: latch_of(rig).unsent >= unsent + 25)
        assert rig.handler.rtcp is not None
        rtcp_unsent = rig.handler.rtcp.unsent
        await wait_until(lambda: rig.handler.rtcp is not None and rig.handler.rtcp.unsent > rtcp_unsent)
        rig.handler.close()  # no RTCP BYE either
        await asyncio.sleep(0.05)
        assert during >= 1
        assert drain(victim.rtp) == [] and drain(victim.rtcp) == []
    finally:
        await rig.close()


async def test_rtcp_from_the_sdp_rtcp_address_confirms_it() -> None:
    """Check a phone that sends no RTP but RTCP from the SDP's RTCP address
    (one that only listens) keeps getting media after the grace."""
    rig = Rig(policy=RtpSourcePolicy(send_grace=0.3))
    try:
        rig.offer()
        phone = rig.phone
        rig.handler.start_playback(ToneSource(440))
        phone.rtcp.sendto(serialize_rtcp([ReceiverReport(phone.sender.ssrc, ())]), ("127.0.0.1", rig.port + 1))
        await wait_until(lambda: latch_of(rig).confirmed)
        drain(phone.rtp)
        sent = rig.handler.media_stats().packets_sent
        await wait_until(lambda: rig.handler.media_stats().packets_sent >= sent + 25)  # past the grace
        assert len(drain(phone.rtp)) >= 25 and latch_of(rig).unsent == 0
    finally:
        await rig.close()


async def test_phone_behind_nat_latches_after_probation(rig: Rig) -> None:
    """Check a phone whose SDP names port A but whose RTP comes from port C
    (NAT): its first three packets are dropped, the fourth latches C, and
    the playback then goes to C."""
    natted = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    natted.bind(("127.0.0.1", 0))
    natted.setblocking(False)
    try:
        rig.offer()
        rig.handler.watch_rtp(rig.timeouts.append)
        sender = RtpSender()
        target = ("127.0.0.1", rig.port)
        for _ in range(3):
            natted.sendto(sender.next_packet(b"\xff" * 160, 0, 160).serialize(), target)
        await wait_until(lambda: latch_of(rig).dropped_stranger == 3)
        assert latch_of(rig).remote_addr == rig.phone.rtp.getsockname() and not latch_of(rig).latched
        for _ in range(5):
            natted.sendto(sender.next_packet(b"\xff" * 160, 0, 160).serialize(), target)
            await asyncio.sleep(0.02)
        await wait_until(lambda: latch_of(rig).latched)
        assert latch_of(rig).remote_addr == natted.getsockname()
        done: list[bool] = []
        rig.handler.start_playback(ToneSource(440, 0.2), done.append)
        await wait_until(lambda: bool(done))
        await asyncio.sleep(0.05)
        assert len([RtpPacket.parse(d) for d in drain(natted)]) == 10
        assert drain(rig.phone.rtp) == []
        assert rig.handler.media_stats().packets_received == 5
    finally:
        natted.close()


async def test_stranger_spraying_does_not_keep_the_call_alive(rig: Rig, attacker: socket.socket) -> None:
    """Check RTP from a source that never passes probation (a sprayer whose
    sequence numbers jump) is not activity: the RTP timeout still fires."""
    rig.offer()
    rig.handler.watch_rtp(rig.timeouts.append)
    target = ("127.0.0.1", rig.port)
    for i in range(60):
        if rig.timeouts:
            break
        attacker.sendto(RtpPacket(0, (i * 7919) & 0xFFFF, 0, 0xABCD, b"\xff" * 160).serialize(), target)
        await asyncio.sleep(0.03)
    assert len(rig.timeouts) == 1
    assert latch_of(rig).accepted == 0 and rig.handler.media_stats().packets_received == 0


# -- the whole engine --------------------------------------------------------------------

RULES = """
rules:
  - {name: Talk, pattern: "talk", scenarios: [talk]}
"""

TALK = """
from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine


async def on_alerting(e):
    call = e.call

    def ended(ev):
        s = call.media_stats()
        Logger.write(f"ended {ev.name} {ev.code} {ev.reason} received={s.packets_received} sent={s.packets_sent > 0}")
        VoxEngine.terminate()

    call.add_event_listener(CallEvents.Disconnected, ended)
    await call.answer()
    call.start_playback_tone(1000)


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
"""


def media_port(body: bytes) -> int:
    for line in body.decode().splitlines():
        if line.startswith("m=audio "):
            return int(line.split()[1])
    raise AssertionError(body)


async def rtp_in(sock: socket.socket) -> list[RtpPacket]:
    """What the engine sent ``sock`` by now, the last tick's packets
    included: paced, they leave at the tick's due time (up to 10 ms later)."""
    await asyncio.sleep(0.05)
    return [RtpPacket.parse(d) for d in drain(sock)]




async def test_rtp_timeout_hangs_up_with_bye(make_engine: EngineFactory, peers: PeerFactory,
                                             rtp_socket: socket.socket) -> None:
    """Check a caller that sends no RTP is hung up rtp_timeout (0.5 s) after
    the call connected: a BYE with a Reason header, and the scenario sees
    Disconnected 408 "RTP timeout" (with the statistics still readable)."""
    engine = await make_engine(RULES, {"talk": TALK}, rtp_timeout=0.5)
    peer = await peers.udp(engine)
    dialog = Dialog(peer, f"sip:talk@127.0.0.1:{engine.ua.port}")
    loop = asyncio.get_running_loop()
    dialog.invite(sdp_offer("127.0.0.1", rtp_socket.getsockname()[1]))
    ok = await peer.expect(200, method="INVITE")
    dialog.learn(ok)
    dialog.ack()
    start = loop.time()
    bye = await peer.recv_request("BYE", timeout=4)
    assert 0.45 <= loop.time() - start < 1.5
    assert bye.headers.get("Reason") == 'SIP;cause=408;text="RTP timeout"'
    peer.send(bye.create_response(200).to_bytes())
    logs = await wait_for_log(engine, "ended Disconnected")
    assert "ended Disconnected 408 RTP timeout received=0 sent=True" in logs, logs
    assert drain(rtp_socket), "the tone was played"


async def test_hold_stops_sending_and_the_timeout(make_engine: EngineFactory, peers: PeerFactory,
                                                  rtp_socket: socket.socket) -> None:
    """Check a re-INVITE with a=sendonly stops the engine's RTP and the
    inactivity timeout (no BYE for twice rtp_timeout); a re-INVITE with
    sendrecv resumes the tone, and without RTP from the caller the call is
    hung up one rtp_timeout later."""
    engine = await make_engine(RULES, {"talk": TALK}, rtp_timeout=0.5)
    peer = await peers.udp(engine)
    port = rtp_socket.getsockname()[1]
    dialog = Dialog(peer, f"sip:talk@127.0.0.1:{engine.ua.port}")
    dialog.invite(sdp_offer("127.0.0.1", port))
    ok = await peer.expect(200, method="INVITE")
    dialog.learn(ok)
    dialog.ack()
    await wait_until(lambda: bool(drain(rtp_socket)))
    dialog.invite(sdp_offer("127.0.0.1", port, direction="sendonly", version=2))
    await peer.expect(200, method="INVITE")
    dialog.ack()
    await asyncio.sleep(0.1)
    drain(rtp_socket)
    await peer.silence(1.2)  # no BYE while held
    assert drain(rtp_socket) == []  # and no RTP
    loop = asyncio.get_running_loop()
    dialog.invite(sdp_offer("127.0.0.1", port, direction="sendrecv", version=3))
    await peer.expect(200, method="INVITE")
    dialog.ack()
    resumed = loop.time()
    await wait_until(lambda: bool(drain(rtp_socket)))
    bye = await peer.recv_request("BYE", timeout=4)
    assert 0.45 <= loop.time() - resumed < 1.5
    peer.send(bye.create_response(200).to_bytes())
    logs = await wait_for_log(engine, "ended Disconnected")
    assert "ended Disconnected 408 RTP timeout" in logs, session_logs(engine)


async def test_caller_rtp_keeps_the_call(make_engine: EngineFactory, peers: PeerFactory,
                                         rtp_socket: socket.socket) -> None:
    """Check a caller sending RTP is not hung up, and its packets are counted
    in media_stats()."""
    engine = await make_engine(RULES, {"talk": TALK}, rtp_timeout=0.5)
    peer = await peers.udp(engine)
    dialog = Dialog(peer, f"sip:talk@127.0.0.1:{engine.ua.port}")
    dialog.invite(sdp_offer("127.0.0.1", rtp_socket.getsockname()[1]))
    ok = await peer.expect(200, method="INVITE")
    dialog.learn(ok)
    dialog.ack()
    target = ("127.0.0.1", media_port(ok.body))
    sender = RtpSender()
    for _ in range(50):  # 1 s, twice the timeout
        rtp_socket.sendto(sender.next_packet(b"\xff" * 160, 0, 160).serialize(), target)
        await asyncio.sleep(0.02)
    dialog.send("BYE")
    assert (await peer.expect(method="BYE")).status == 200
    logs = await wait_for_log(engine, "ended Disconnected")
    assert "ended Disconnected 200 BYE received=50 sent=True" in logs, logs


EARLY = """
from engine.calls.call import CallError
from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine


async def on_alerting(e):
    call = e.call
    call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    for mode in ("auto", "rfc4733", "info"):
        try:
            call.send_digits("1", mode=mode)
        except CallError as exc:
            Logger.write(f"{mode} refused: {exc}")
    call.start_early_media()
    action = call.send_digits("7", mode="auto")
    Logger.write(f"early digits by {action.mode}: {await action}")
    try:
        call.send_digits("1", mode="info")
    except CallError as exc:
        Logger.write(f"early info refused: {exc}")
    await call.answer()


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
"""


async def test_digits_before_the_answer(make_engine: EngineFactory, peers: PeerFactory,
                                        rtp_socket: socket.socket) -> None:
    """Check a ringing call refuses digits with clear reasons, then sends
    RFC 4733 digits during early media (183 with SDP) to the caller's RTP
    port, and still refuses INFO until answered."""
    engine = await make_engine(RULES, {"talk": EARLY})
    peer = await peers.udp(engine)
    dialog = Dialog(peer, f"sip:talk@127.0.0.1:{engine.ua.port}")
    dialog.invite(sdp_offer("127.0.0.1", rtp_socket.getsockname()[1]))
    ok = await peer.expect(200, method="INVITE", timeout=5)
    dialog.learn(ok)
    dialog.ack()
    logs = await wait_for_log(engine, "early info refused")
    assert "auto refused: INFO digits need a connected call, not ALERTING" in logs, logs
    assert "rfc4733 refused: RFC 4733 digits need a connected call or early media, not ALERTING" in logs
    assert "info refused: INFO digits need a connected call, not ALERTING" in logs
    assert "early digits by rfc4733: True" in logs
    assert "early info refused: INFO digits need a connected call, not ALERTING" in logs
    events = [p for p in await rtp_in(rtp_socket) if p.payload_type == 101]
    assert len(events) == 7 and {TelephoneEvent.parse(p.payload).event for p in events} == {7}
    dialog.send("BYE")
    assert (await peer.expect(method="BYE")).status == 200


async def test_negative_rtp_timeout_stops_startup(make_engine: EngineFactory) -> None:
    """Check a negative rtp_timeout in EngineConfig fails start-up clearly."""
    with pytest.raises(StartupError, match=r"rtp_timeout must be 0 \(off\) or more seconds, not -1.0"):
        await make_engine(RULES, {"talk": TALK}, rtp_timeout=-1.0)


INBAND = """
from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine


async def on_alerting(e):
    call = e.call
    call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    await call.answer()
    action = call.send_digits("159#", mode="inband")
    Logger.write(f"inband digits by {action.mode}: {await action}")


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
"""


async def test_inband_digits_are_tones_in_the_audio(make_engine: EngineFactory, peers: PeerFactory,
                                                    rtp_socket: socket.socket) -> None:
    """Check ``send_digits(mode="inband")`` plays the DTMF tone pairs into
    the call's audio: the caller gets only PCMU packets (no telephone-event
    although it offered one), and a DTMF detector run on their decoded
    audio hears exactly the digits sent, in order."""
    import numpy as np

    from engine.media.codecs.g711 import ulaw_decode
    from engine.media.dtmf import DtmfDetector

    engine = await make_engine(RULES, {"talk": INBAND})
    peer = await peers.udp(engine)
    dialog = Dialog(peer, f"sip:talk@127.0.0.1:{engine.ua.port}")
    dialog.invite(sdp_offer("127.0.0.1", rtp_socket.getsockname()[1]))
    ok = await peer.expect(200, method="INVITE", timeout=5)
    assert b"telephone-event" in ok.body
    dialog.learn(ok)
    dialog.ack()
    logs = await wait_for_log(engine, "inband digits by", timeout=10)
    assert "inband digits by inband: True" in logs, logs
    packets = sorted(await rtp_in(rtp_socket), key=lambda p: p.sequence_number)
    assert packets and {p.payload_type for p in packets} == {0}
    pcm = np.concatenate([ulaw_decode(np.frombuffer(p.payload, dtype=np.uint8)) for p in packets])
    heard = [tone.digit for tone in DtmfDetector().process(pcm)]
    assert heard == ["1", "5", "9", "#"], heard
    dialog.send("BYE")
    await peer.expect(method="BYE")
