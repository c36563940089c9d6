"""The media plane on real loopback UDP: :class:`engine.calls.rtp_stream.MediaSession`
on a reserved RTP socket, fed by a test sender, with the one media clock.

Checks RFC 4733 digits are reported once each (end packets repeated), an
event whose end packets are lost is reported on its timeout, a stranger's
packets neither latch nor inject digits (RTP Bleed), in-band detection runs
only without telephone-event, and a session leaves the clock once audio stops.
Outgoing: the clock pulls a player's frames and sends them as PCMU RTP
(marker, sequence, timestamps), stop/replace/hold/close behave.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import replace
from typing import AsyncIterator

import numpy as np
import pytest

from engine.media.codecs import get_decoder, get_encoder
from engine.media.codecs.g711 import ULAW_DECODE
from engine.media.players import PcmSource, ToneSource
from engine.media.codecs.telephone_event import ONSET_MODE, generate_event_packets
from engine.media.dtmf import generate_dtmf_sequence
from engine.media.rtp import RtpPacket, RtpSender
from engine.calls.rtp_stream import MediaSession
from engine.sip.offer_answer import PCMU, NegotiatedMedia
from engine.media.clock import MediaClock
from engine.transport.rtp_socket import RtpPortAllocator
from engine.transport.rtp_transport import FRESH_KEEP


def negotiated(port: int, event_pt: int | None) -> NegotiatedMedia:
    return NegotiatedMedia(
        index=0, remote_address="127.0.0.1", remote_port=port, remote_rtcp_port=port + 1,
        codec=PCMU, telephone_event_pt=event_pt, ptime=20, send=True, recv=True, on_hold=False,
    )


class Rig:
    def __init__(self, event_pt: int | None) -> None:
        self.ports = RtpPortAllocator("127.0.0.1", 41000, 41100)
        self.pair = self.ports.allocate()
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer.bind(("127.0.0.1", 0))
        self.stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.stranger.bind(("127.0.0.1", 0))
        self.clock = MediaClock()
        self.session = MediaSession(self.pair.rtp, self.clock)
        self.session.configure(negotiated(self.peer.getsockname()[1], event_pt))
        self.tones: list[tuple[str, str]] = []
        self.target = ("127.0.0.1", self.pair.rtp_port)

    def listen(self) -> None:
        self.session.set_tone_listener(lambda d, m: m == ONSET_MODE or self.tones.append((d, m)))

    def send_digit(self, sender: RtpSender, digit: str, ts: int, sock: socket.socket | None = None,
                   drop_end: bool = False) -> None:
        for p in generate_event_packets(digit):
            if drop_end and p.payload.end:
                continue
            pkt = RtpPacket(101, sender.sequence_number, ts, sender.ssrc, p.payload.serialize(), p.marker)
            sender.sequence_number = (sender.sequence_number + 1) & 0xFFFF
            (sock or self.peer).sendto(pkt.serialize(), self.target)

    async def close(self) -> None:
        self.session.close()
        await self.clock.stop()
        self.ports.release(self.pair)
        self.peer.close()
        self.stranger.close()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig(event_pt=101)
    yield r
    await r.close()


@pytest.fixture
async def audio_rig() -> AsyncIterator[Rig]:
    r = Rig(event_pt=None)
    yield r
    await r.close()


async def until(cond: object, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond() and loop.time() < deadline:  # type: ignore[operator]
        await asyncio.sleep(0.01)


async def test_rfc4733_digits_once_each(rig: Rig) -> None:
    """Check digits sent before the listener is set wait in the socket and
    every digit is reported once although its end packet comes three times."""
    sender = RtpSender()
    rig.send_digit(sender, "1", 1000)
    rig.listen()
    rig.send_digit(sender, "2", 2000)
    rig.send_digit(sender, "#", 3000)
    await until(lambda: len(rig.tones) >= 3)
    await asyncio.sleep(0.05)
    assert rig.tones == [("1", "rfc4733"), ("2", "rfc4733"), ("#", "rfc4733")]
    assert rig.session.remote_addr == rig.peer.getsockname()
    assert len(rig.clock) == 0  # no audio: nothing on the clock


async def test_lost_end_packets_reported_on_timeout(rig: Rig) -> None:
    """Check an event without end packets is reported once its timer fires."""
    rig.listen()
    rig.send_digit(RtpSender(), "7", 500, drop_end=True)
    await until(lambda: rig.tones)
    assert rig.tones == [("7", "rfc4733")]


async def test_stranger_cannot_inject(rig: Rig) -> None:
    """Check a second source with its own SSRC is dropped once the stream
    latched, and does not move the latch."""
    rig.listen()
    rig.send_digit(RtpSender(), "1", 100)
    await until(lambda: rig.tones)
    rig.send_digit(RtpSender(), "9", 900, sock=rig.stranger)
    await asyncio.sleep(0.1)
    assert rig.tones == [("1", "rfc4733")]
    assert rig.session.latch is not None and rig.session.latch.dropped_stranger > 0
    assert rig.session.remote_addr == rig.peer.getsockname()


async def test_no_listener_reads_nothing(rig: Rig) -> None:
    """Check without a listener the socket is not read, and after
    set_tone_listener(None) digits are not reported."""
    rig.listen()
    rig.session.set_tone_listener(None)
    rig.send_digit(RtpSender(), "5", 100)
    await asyncio.sleep(0.1)
    assert rig.tones == []
    assert rig.session.transport.received == 0


async def test_inband_tones_through_the_clock(audio_rig: Rig) -> None:
    """Check PCMU tones are detected by the clock-driven detector, then the
    session leaves the clock when audio stops."""
    rig = audio_rig
    rig.listen()
    assert rig.session.inband
    pcm = np.concatenate([generate_dtmf_sequence("42"), np.zeros(800, dtype=np.int16)])
    enc, sender = get_encoder("PCMU"), RtpSender()
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(len(pcm) // 160):
        pkt = sender.next_packet(enc.encode(pcm[i * 160:(i + 1) * 160]), 0, 160)
        rig.peer.sendto(pkt.serialize(), rig.target)
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))
    await until(lambda: len(rig.tones) >= 2)
    assert rig.tones == [("4", "inband"), ("2", "inband")]
    assert rig.clock.ticks > 0
    await until(lambda: len(rig.clock) == 0)
    assert len(rig.clock) == 0


async def test_no_inband_detection_with_telephone_event(rig: Rig) -> None:
    """Check in-band detection is off when telephone-event was negotiated."""
    rig.listen()
    assert not rig.session.inband and rig.session.detector is None


async def test_clock_ticks_drift_free() -> None:
    """Check the clock ticks a sink at 20 ms steps of loop time and drops it
    when it returns False; the task ends with the last sink."""
    clock = MediaClock()
    times: list[float] = []

    class Sink:
        def tick(self, now: float) -> bool:
            times.append(now)
            return len(times) < 10

    clock.add(Sink())
    await until(lambda: len(times) >= 10)
    await asyncio.sleep(0.05)
    assert len(times) == 10
    # Ticks are due at start + n * 20 ms: never earlier (lateness is not checked here).
    assert times[-1] - times[0] >= 9 * 0.02 - 0.002
    assert len(clock) == 0
    await clock.stop()


async def test_send_goes_to_the_latched_source(rig: Rig) -> None:
    """Check symmetric RTP: before latching the session sends to the SDP
    address, afterwards to where the peer's packets come from once they
    passed the probation (a digit's packets: more than four in a row)."""
    rig.listen()
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    other.settimeout(2)
    rig.peer.settimeout(2)
    try:
        assert rig.session.send(b"before")
        assert rig.peer.recv(100) == b"before"
        rig.send_digit(RtpSender(), "1", 100, sock=other)  # the peer is behind a NAT
        await until(lambda: rig.tones)
        assert rig.session.send(b"after")
        assert other.recv(100) == b"after"
        assert rig.session.transport.sent == 2
    finally:
        other.close()


# -- outgoing audio --------------------------------------------------------------



def drain_peer(sock: socket.socket) -> list[RtpPacket]:
    sock.setblocking(False)
    out = []
    while True:
        try:
            out.append(RtpPacket.parse(sock.recv(2048)))
        except BlockingIOError:
            return out


async def test_clock_pulls_player_frames_and_sends_rtp(rig: Rig) -> None:
    """A 0.2 s 1000 Hz tone: 10 PCMU packets, marker on the first only,
    consecutive sequence numbers, timestamps 160 apart, one SSRC; decoded
    it is 1000 Hz; done(True) once; the session then leaves the clock."""
    done: list[bool] = []
    rig.session.start_playback(ToneSource(1000, 0.2), done.append)
    assert rig.session in rig.clock
    await until(lambda: done, timeout=2)
    await asyncio.sleep(0.05)
    assert done == [True] and rig.session not in rig.clock and rig.session.player is None
    packets = drain_peer(rig.peer)
    assert len(packets) == 10
    assert [p.marker for p in packets] == [True] + [False] * 9
    assert all(p.payload_type == 0 and len(p.payload) == 160 for p in packets)
    assert len({p.ssrc for p in packets}) == 1
    seqs = [p.sequence_number for p in packets]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:]))
    ts = [p.timestamp for p in packets]
    assert all((b - a) & 0xFFFFFFFF == 160 for a, b in zip(ts, ts[1:]))
    decoder = get_decoder("PCMU")
    pcm = np.concatenate([decoder.decode(p.payload) for p in packets]).astype(np.float64)
    n = np.arange(len(pcm))
    power = {f: abs(np.sum(pcm * np.exp(-2j * np.pi * f * n / 8000))) for f in (700, 1000, 1300)}
    assert power[1000] > 20 * max(power[700], power[1300])


async def test_stop_replace_and_marker_after_silence(rig: Rig) -> None:
    """Replacing a player ends the first with done(False); stopping ends
    the second with done(False); a new player after that starts a new
    talkspurt (marker) on the same SSRC with continuing sequence numbers."""
    first: list[bool] = []
    second: list[bool] = []
    rig.session.start_playback(ToneSource(440), first.append)
    await asyncio.sleep(0.1)
    rig.session.start_playback(ToneSource(880), second.append)
    assert first == [False]
    await asyncio.sleep(0.1)
    rig.session.stop_playback()
    assert second == [False]
    await asyncio.sleep(0.05)
    before = drain_peer(rig.peer)
    assert before and before[0].marker and not any(p.marker for p in before[1:])
    third: list[bool] = []
    rig.session.start_playback(PcmSource(np.zeros(320, dtype=np.int16)), third.append)
    await until(lambda: third)
    after = drain_peer(rig.peer)
    assert third == [True] and len(after) == 2 and after[0].marker and not after[1].marker
    assert after[0].ssrc == before[0].ssrc
    assert (after[0].sequence_number - before[-1].sequence_number) & 0xFFFF == 1


def _steps(packets: list[RtpPacket]) -> list[int]:
    return [(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in zip(packets, packets[1:])]


async def test_a_blocked_loop_makes_the_clock_skip_and_the_timestamp_jump_over_the_missing_frames(rig: Rig) -> None:
    """A player sends through the real clock; the loop is then blocked for
    0.25 s, longer than the clock catches up, so it skips ticks. The frames
    of those ticks were never made: the first packet after them carries a
    timestamp advanced over them and the marker bit (a new talkspurt), its
    sequence number the next one. Without the jump, every later packet
    would be stamped behind its sending time by the skipped frames."""
    rig.session.start_playback(ToneSource(1000))
    await asyncio.sleep(0.1)
    skipped = rig.clock.skipped
    time.sleep(0.25)  # block the event loop, as a runaway handler would
    await asyncio.sleep(0.1)
    rig.session.stop_playback()
    await asyncio.sleep(0.03)
    packets = drain_peer(rig.peer)
    jumped = rig.clock.skipped - skipped
    assert jumped >= 5  # 0.25 s late: more than max_catch_up (5) ticks
    steps = _steps(packets)
    assert steps.count(160) == len(steps) - 1  # every other step is one frame
    gap = next(i for i, step in enumerate(steps) if step != 160)
    assert steps[gap] == (jumped + 1) * 160
    after = packets[gap + 1]
    assert after.marker and not any(p.marker for p in packets[1:gap + 1] + packets[gap + 2:])
    assert (after.sequence_number - packets[gap].sequence_number) & 0xFFFF == 1


async def test_frames_the_graph_pushes_after_a_skip_jump_too(rig: Rig) -> None:
    """The media graph's path (frames encoded together, then
    :meth:`MediaSession.push_payload`) jumps over skipped ticks the same way."""
    payload = b"\xff" * 160
    rig.session.push_payload(payload)
    rig.session.push_payload(payload)
    rig.clock.skipped += 3
    rig.session.push_payload(payload)
    rig.session.push_payload(payload)
    await asyncio.sleep(0.02)
    packets = drain_peer(rig.peer)
    assert _steps(packets) == [160, 4 * 160, 160]
    assert [p.marker for p in packets] == [True, False, True, False]


async def test_a_silence_that_ends_after_a_skip_jumps_once(rig: Rig) -> None:
    """Silence suppression stamps the end of a silence from the time, which
    already counts the skipped ticks: they are not jumped over twice."""
    payload = b"\xff" * 160
    loop = asyncio.get_running_loop()
    rig.session.push_payload(payload)
    t0 = loop.time()
    assert rig.session.begin_silence(t0, 60)
    rig.clock.skipped += 5  # the loop was blocked during the silence
    rig.session.end_silence(t0 + 0.2)  # ten frames later
    rig.session.push_payload(payload)
    await asyncio.sleep(0.02)
    packets = [p for p in drain_peer(rig.peer) if p.payload_type == 0]
    assert _steps(packets) == [11 * 160]  # the frame sent, then ten not sent
    assert packets[1].marker


async def test_playout_skips_the_ticks_the_clock_skipped(rig: Rig) -> None:
    """What a leg receives: after the clock skipped ticks, the session's
    next pull is the frame of the tick it runs in, not the one after the
    last pulled (the skipped ticks' frames are discarded), and on the
    other pull path too."""
    rig.session.graph_attach()  # the graph reads it
    sender = RtpSender(ssrc=0x51, sequence_number=100, timestamp=8000)
    rig.peer.sendto(sender.next_datagram(0, 160, bytes([1]) * 160), rig.target)
    jitter = rig.session.jitter
    assert jitter is not None
    await until(lambda: jitter.stats.received == 1)
    now = asyncio.get_running_loop().time() + 1.0  # well past the buffer's priming
    # (playout starts before the rest arrive: frames queued before it starts
    # would be cut to the newest few, the jitter buffer's own test)
    assert rig.session.pull_payload(now) == bytes([1]) * 160
    for i in range(1, 11):  # no more than the buffer's overflow bound (12 frames)
        rig.peer.sendto(sender.next_datagram(0, 160, bytes([i + 1]) * 160), rig.target)
    await until(lambda: jitter.stats.received == 11)
    assert rig.session.pull_payload(now + 0.02) == bytes([2]) * 160
    rig.clock.skipped += 5  # ticks of frames 3-7 never ran
    assert rig.session.pull_payload(now + 0.12) == bytes([8]) * 160
    assert jitter.stats.discarded == 5
    rig.clock.skipped += 2
    decoded = rig.session.pull(now + 0.18)  # the decoding path: frame 11
    assert decoded is not None
    expected = get_decoder("PCMU").decode(bytes([11]) * 160)
    assert np.array_equal(decoded, np.asarray(expected, dtype=np.int16))
    assert jitter.stats.discarded == 7 and jitter.stats.late == 0


async def test_no_sending_on_hold_or_recvonly_but_time_passes(rig: Rig) -> None:
    """On hold the player is still pulled (so it ends on time) but nothing
    is sent; close() during playback reports done(False)."""
    neg = rig.session.negotiated
    assert neg is not None
    rig.session.configure(replace(neg, on_hold=True, send=False))
    done: list[bool] = []
    rig.session.start_playback(ToneSource(1000, 0.1), done.append)
    await until(lambda: done)
    assert done == [True] and drain_peer(rig.peer) == []
    rig.session.configure(neg)
    rig.session.start_playback(ToneSource(1000), done.append)
    rig.session.close()
    assert done == [True, False] and rig.session not in rig.clock


async def test_tone_listener_off_keeps_playing(audio_rig: Rig) -> None:
    """Turning tone handling off does not take a playing session off the clock."""
    audio_rig.listen()
    done: list[bool] = []
    audio_rig.session.start_playback(ToneSource(1000, 0.2), done.append)
    audio_rig.session.set_tone_listener(None)
    assert audio_rig.session in audio_rig.clock
    await until(lambda: done)
    assert done == [True] and len(drain_peer(audio_rig.peer)) == 10


async def test_header_fast_path_and_full_parse_agree(rig: Rig) -> None:
    """Check a packet with the plain 12-byte header (read field by field,
    no packet object) and one with CSRCs, a header extension and padding
    (the full parse) put the same payload into the jitter buffer, in order,
    and a truncated datagram is counted as malformed."""
    rig.session.graph_attach()
    payload = bytes(range(160))
    plain = RtpPacket(0, 1, 160, 7, payload).serialize()
    fancy = RtpPacket(0, 2, 320, 7, payload[::-1], csrc=(11, 12), extension_profile=0xBEDE,
                      extension=b"\x01\x02\x03\x04", padding=4).serialize()
    for data in (plain, fancy, b"\x80\x00\x00"):
        rig.peer.sendto(data, rig.target)
    await until(lambda: rig.session.transport.received >= 3)
    jitter = rig.session.jitter
    assert jitter is not None and jitter.stats.received == 2
    later = asyncio.get_running_loop().time() + 1.0
    assert [jitter.get(later), jitter.get(later)] == [payload, payload[::-1]]
    assert rig.session.malformed == 1
    assert rig.session.remote_addr == rig.peer.getsockname()


async def test_pull_payload_conceals_the_last_undecoded_frame(rig: Rig) -> None:
    """Check a lost frame after frames the graph took undecoded (pull_payload
    returned their bytes; the session hands the last one to the decoder only
    when a loss needs it) is concealed from the last of them, exactly as a
    decoder that decoded every frame would conceal it, and comes as a
    payload too."""
    rig.session.graph_attach()
    first = bytes(get_encoder("PCMU").encode(np.full(160, 3000, dtype=np.int16)))
    second = bytes(get_encoder("PCMU").encode(np.full(160, -9000, dtype=np.int16)))
    for i, payload in enumerate((first, second)):
        rig.peer.sendto(RtpPacket(0, 1 + i, 160 * i, 7, payload).serialize(), rig.target)
    await until(lambda: rig.session.transport.received >= 2)
    later = asyncio.get_running_loop().time() + 0.1  # playout started, audio not idle
    got = [rig.session.pull_payload(later) for _ in range(3)]
    assert got[:2] == [first, second]
    reference = get_decoder("PCMU")
    reference.decode(first)
    reference.decode(second)
    expected = reference.conceal_payload(160)
    # a payload like the good ones: the graph decodes it with theirs, in one lookup
    assert isinstance(got[2], bytes) and got[2] == expected
    assert ULAW_DECODE[np.frombuffer(expected, np.uint8)].min() < -7500  # the second frame faded, not the first


async def test_datagrams_the_transport_drops_stale_count_late_in_the_jitter_buffer(rig: Rig) -> None:
    """Check the session hears of the datagrams its transport dropped as too
    old (a drain after the loop was away from the socket): its jitter
    buffer counts them late and stores only the freshest; a closed session
    is no longer told."""
    rig.session.graph_attach()
    jitter, transport = rig.session.jitter, rig.session.transport
    assert jitter is not None
    transport.detach()  # the loop stops reading the socket: a stall
    payload = bytes(get_encoder("PCMU").encode(np.full(160, 1000, dtype=np.int16)))
    for i in range(FRESH_KEEP + 5):
        rig.peer.sendto(RtpPacket(0, 1 + i, 160 * i, 7, payload).serialize(), rig.target)
    transport._last_read = time.monotonic() - 1.0
    transport._on_readable()
    assert transport.stale == 5
    assert jitter.stats.late == 5 and jitter.stats.received == FRESH_KEEP
    rig.session.close()
    assert transport.on_stale is None
