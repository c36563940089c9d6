"""Silence suppression (engine.media.dtx) on real loopback UDP.

Three phones, each a UDP socket on 127.0.0.1 whose offer has PCMU, CN and
telephone-event, are answered by :class:`~engine.calls.sip_media.SipLegMedia`
with comfort noise on, and joined to one conference of a
:class:`~engine.calls.conference.MediaGraph` that suppresses silence, on
the engine's media clock. What each phone's socket receives is checked
packet by packet: CN when the silence begins, nothing during it, the
marker bit and the timestamp jump when speech resumes. Also: our RTP
inactivity timeout does not hang up a phone that suppresses its own
silence while it sends RTCP or CN, and hostile CN payloads cost nothing.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import AsyncIterator

import numpy as np
import pytest

from engine.calls.call import Call, CallState
from engine.calls.conference import MediaGraph
from engine.calls.rtp_stream import MediaSession
from engine.calls.sip_media import SipLegMedia
from engine.media.clock import MediaClock
from engine.media.codecs.g711 import ULAW_DECODE, PcmuEncoder
from engine.media.dtx import cn_level
from engine.media.rtcp import ReceiverReport, serialize_rtcp
from engine.media.rtcp_session import MediaTimedOut
from engine.media.rtp import RtpPacket, RtpSender
from engine.transport.rtp_send import SendWorkers
from engine.transport.rtp_socket import RtpPortAllocator, RtpPortPair

from udp import drain

from .conftest import wait_until

CN_PT = 13


def offer(port: int, cn: bool = True) -> bytes:
    """A phone's offer: PCMU, CN (RFC 3389, static 13) and telephone-event."""
    lines = ["v=0", "o=phone 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
             f"m=audio {port} RTP/AVP 0{' 13' if cn else ''} 101", "a=rtpmap:0 PCMU/8000"]
    if cn:
        lines.append("a=rtpmap:13 CN/8000")
    lines += ["a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-15"]
    return ("\r\n".join(lines) + "\r\n").encode()


def tone(frame: int, freq: float = 440.0) -> bytes:
    t = (np.arange(160) + frame * 160) / 8000
    return PcmuEncoder().encode(np.rint(4000 * np.sin(2 * np.pi * freq * t)).astype(np.int16))


class Phone:
    """The far end: an RTP/RTCP port pair and a sender."""

    def __init__(self, pair: RtpPortPair) -> None:
        self.pair = pair
        self.sender = RtpSender()
        self.last: float | None = None  # loop time of the last packet sent

    def send(self, to: int, payload: bytes, pt: int = 0, marker: bool = False) -> None:
        pkt = self.sender.next_packet(payload, pt, 160, marker)
        self.pair.rtp.sendto(pkt.serialize(), ("127.0.0.1", to))

    def received(self) -> list[RtpPacket]:
        return [RtpPacket.parse(d) for d in drain(self.pair.rtp)]


class Leg(Call):
    """A connected call whose media is a SIP leg's handler."""

    def __init__(self, handler: SipLegMedia) -> None:
        super().__init__(direction="inbound", number="dtx", callerid="phone")
        self.handler = handler
        self._set_state(CallState.CONNECTED)

    def media_port(self) -> MediaSession | None:
        return self.handler.audio_port()


class Rig:
    def __init__(self, tmp: Path, legs: int = 3, cn: bool = True, rtp_timeout: float = 0.0,
                 send_workers: int = 0) -> None:
        self.ports = RtpPortAllocator("127.0.0.1", 45600, 45700)
        self.clock = MediaClock()
        self.workers = SendWorkers(send_workers) if send_workers else None
        if self.workers is not None:
            self.workers.start()
            self.clock.dispatch = self.workers
        self.graph = MediaGraph(self.clock, recordings_dir=tmp, silence_suppression=True)
        self.phones = [Phone(self.ports.allocate()) for _ in range(legs)]
        self.handlers = [SipLegMedia(self.ports, "127.0.0.1", clock=self.clock, comfort_noise=True,
                                     rtp_timeout=rtp_timeout) for _ in range(legs)]
        for handler, phone in zip(self.handlers, self.phones):
            handler.rtcp_interval = 0.2
            handler.create_answer(offer(phone.pair.rtp_port, cn))
        self.calls = [Leg(h) for h in self.handlers]

    def port(self, i: int) -> int:
        pair = self.handlers[i].pair
        assert pair is not None
        return pair.rtp_port

    def session(self, i: int) -> MediaSession:
        session = self.handlers[i].session
        assert session is not None
        return session

    async def close(self) -> None:
        for h in self.handlers:
            h.close()
        await self.clock.stop()
        if self.workers is not None:
            self.workers.stop()
        for p in self.phones:
            self.ports.release(p.pair)


@pytest.fixture(params=[0, 1], ids=["loop-sends", "send-worker"])
async def rig(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    """Three legs in one engine; sent by the event loop, or by an RTP send
    worker (``--media-send-workers 1``: CN, keepalives and resumed audio
    then leave through the worker, and must look the same)."""
    r = Rig(tmp_path, send_workers=request.param)
    yield r
    await r.close()


async def speak(rig: Rig, who: int, frames: int, start: int = 0) -> None:
    """``frames`` packets of tone at 20 ms; after a pause, as a phone that
    suppresses its own silence: the timestamp jumps over it, marker set."""
    phone = rig.phones[who]
    loop = asyncio.get_running_loop()
    if phone.last is not None:
        phone.sender.skip(160 * max(0, round((loop.time() - phone.last) / 0.02) - 1))
    for k in range(frames):
        phone.send(rig.port(who), tone(start + k), marker=k == 0)
        phone.last = loop.time()
        await asyncio.sleep(0.02)


async def test_conference_speech_silence_speech(rig: Rig) -> None:
    """Check what each of three phones receives while one speaks, all are
    silent, then it speaks again: CN (RFC 3389: one level byte, no marker)
    when a silence begins, nothing during it, then audio whose first packet
    has the marker bit and a timestamp advanced by the silence (RFC 3551
    section 4.1) on one unbroken sequence; the others hear the speaker."""
    for h in rig.handlers:
        assert h.negotiated is not None and h.negotiated.comfort_noise_pt == CN_PT
    conf = rig.graph.create_conference()
    for call in rig.calls:
        conf.add(call)
    await asyncio.sleep(0.1)                      # quiet from the start
    await speak(rig, 0, 25)                       # 0.5 s of speech
    await asyncio.sleep(1.5)                      # silence (idle after 0.5 s, PLC fade)
    await speak(rig, 0, 15, start=25)             # speech again
    await asyncio.sleep(0.2)
    for i, phone in enumerate(rig.phones):
        packets = phone.received()
        kinds = "".join("c" if p.payload_type == CN_PT else "a" for p in packets)
        assert re.fullmatch(r"ca+ca+c?", kinds), (i, kinds)
        assert {p.payload_type for p in packets} == {0, CN_PT}
        assert len({p.ssrc for p in packets}) == 1
        seqs = [p.sequence_number for p in packets]
        assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:]))
        for k, p in enumerate(packets):
            if p.payload_type == CN_PT:
                assert not p.marker and len(p.payload) == 1 and 0 <= cn_level(p.payload) <= 127
                assert p.payload[0] & 0x80 == 0
            else:
                assert len(p.payload) == 160
                assert p.marker == (packets[k - 1].payload_type == CN_PT), (i, k)
        cn2 = kinds.index("c", 1)
        last, cn, resumed = packets[cn2 - 1], packets[cn2], packets[cn2 + 1]
        assert cn.timestamp == (last.timestamp + 160) & 0xFFFFFFFF  # the first frame not sent
        jump = (resumed.timestamp - cn.timestamp) & 0xFFFFFFFF
        assert jump % 160 == 0 and jump >= 160 * 10  # the silence lasted far more than 10 frames
        for a, b in zip(packets[cn2 + 1:], packets[cn2 + 2:]):
            if b.payload_type == 0 and not b.marker:
                assert (b.timestamp - a.timestamp) & 0xFFFFFFFF == 160
        if i:
            heard = ULAW_DECODE[np.frombuffer(b"".join(p.payload for p in packets[cn2 + 2:cn2 + 10]), np.uint8)]
            assert np.abs(heard).max() > 1000  # the speaker's tone
    dtx = rig.graph.bridge.dtx
    assert dtx is not None and dtx.dormant_ticks > 0
    if rig.workers is not None:
        assert rig.workers.packets > 0 and rig.workers.fallbacks == 0


async def test_a_player_in_the_conference_is_sent(rig: Rig) -> None:
    """Check a conference prompt reaches every quiet phone: its audio ends
    the silence (marker bit) and is sent every tick while it plays."""
    conf = rig.graph.create_conference()
    for call in rig.calls:
        conf.add(call)
    # The CN packet that starts the silence: with a send worker it may come
    # late on a loaded machine (the worker process is busy or not yet
    # scheduled), so wait for it, then 0.2 s more in which nothing follows.
    heard: list[list[RtpPacket]] = [[] for _ in rig.phones]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while not all(heard) and loop.time() < deadline:
        await asyncio.sleep(0.02)
        for got, phone in zip(heard, rig.phones):
            got += phone.received()
    await asyncio.sleep(0.2)
    for got, phone in zip(heard, rig.phones):
        got += phone.received()
    assert [len(got) for got in heard] == [1, 1, 1]  # the CN packets, and nothing after them
    assert all(got[0].payload_type == CN_PT for got in heard)
    from engine.media.players import ToneSource

    rig.graph.start_player(conf, ToneSource(440))
    await asyncio.sleep(0.3)
    rig.graph.stop_player(conf)
    for phone in rig.phones:
        packets = phone.received()
        assert len(packets) >= 5 and packets[0].marker and packets[0].payload_type == 0
        assert all(p.payload_type == 0 for p in packets[:5])


async def test_phone_suppressing_its_silence_with_rtcp_is_not_hung_up(tmp_path: Path) -> None:
    """Check our RTP inactivity timeout keeps a phone that sends no RTP
    while silent, as long as its RTCP (or its CN packets) keep coming; once
    everything stops, the timeout fires."""
    rig = Rig(tmp_path, legs=2, rtp_timeout=0.3)
    try:
        timeouts: list[list[MediaTimedOut]] = [[], []]
        for h, got in zip(rig.handlers, timeouts):
            h.watch_rtp(got.append)
        rig.phones[0].send(rig.port(0), b"\xff" * 160)
        rig.phones[1].send(rig.port(1), b"\xff" * 160)
        for _ in range(9):  # 0.9 s, three timeouts' worth
            rr = serialize_rtcp([ReceiverReport(rig.phones[0].sender.ssrc, ())])
            rig.phones[0].pair.rtcp.sendto(rr, ("127.0.0.1", rig.port(0) + 1))
            rig.phones[1].send(rig.port(1), b"\x40", pt=CN_PT)
            await asyncio.sleep(0.1)
        assert timeouts == [[], []]
        assert await wait_until(lambda: bool(timeouts[0]) and bool(timeouts[1]), timeout=2)
        assert [len(t) for t in timeouts] == [1, 1]
    finally:
        await rig.close()


async def test_hostile_cn_costs_no_more_than_an_audio_packet(rig: Rig) -> None:
    """Check a phone that negotiated CN and sends CN packets, well formed
    or garbage (empty, oversized, marker, top bit set), crashes nothing:
    they are accepted and counted like any packet of the stream, never
    reach the jitter buffer, and do not wake a sleeping leg; a phone that
    did not negotiate CN has its CN packets dropped by the latch."""
    conf = rig.graph.create_conference()
    for call in rig.calls:
        conf.add(call)
    assert await wait_until(lambda: rig.handlers[0].session is not None, timeout=2)
    session = rig.session(0)
    assert await wait_until(lambda: session.audio_waker is not None, timeout=2)  # asleep
    accepted = session.latch.accepted if session.latch else 0
    garbage = [b"", b"\x40", b"\xff", os.urandom(1200), b"\x00" * 3]
    for k, payload in enumerate(garbage * 4):
        rig.phones[0].send(rig.port(0), payload, pt=CN_PT, marker=k % 2 == 0)
    assert await wait_until(lambda: session.latch is not None
                            and session.latch.accepted == accepted + len(garbage) * 4, timeout=2)
    assert session.audio_waker is not None  # not woken: CN is no audio to pull
    assert session.jitter is not None and not session.jitter.depth_ms
    assert session.rtcp is not None and session.rtcp.packets_received >= len(garbage) * 4
    assert session.malformed == 0
    await asyncio.sleep(0.1)
    assert all(p.payload_type == CN_PT for p in rig.phones[1].received())  # still quiet
    # A phone without CN in its offer: its CN packets are not part of the stream.
    plain = SipLegMedia(rig.ports, "127.0.0.1", clock=rig.clock, comfort_noise=True, rtp_timeout=5.0)
    phone = Phone(rig.ports.allocate())
    try:
        plain.create_answer(offer(phone.pair.rtp_port, cn=False))
        assert plain.negotiated is not None and plain.negotiated.comfort_noise_pt is None
        plain.watch_rtp(lambda e: None)
        assert plain.session is not None and plain.session.latch is not None
        assert plain.pair is not None
        phone.send(plain.pair.rtp_port, b"\x40", pt=CN_PT)
        latch = plain.session.latch
        assert await wait_until(lambda: latch.dropped_payload_type == 1, timeout=2)
        assert latch.accepted == 0
    finally:
        plain.close()
        rig.ports.release(phone.pair)

