"""SRTP on a SIP leg over real loopback UDP: the engine's
:class:`~engine.calls.sip_media.SipLegMedia` answers an SDES offer
from a small SRTP peer of our own (pylibsrtp through
:class:`engine.media.srtp.SrtpContext`, on its own sockets).

Checks the engine's tone reaches the peer only as SRTP (the tone's G.711
bytes never appear on the wire; decoded, Goertzel finds the tone), its RTCP
goes out as SRTCP, the peer's SRTP audio is decoded by the engine (in-band
DTMF found in it), forged and plain packets are dropped and counted, and
SDES offered over plain signalling is refused with 488 and logged.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import AsyncIterator

import numpy as np
import pytest

from engine.calls.sip_media import SipLegMedia
from engine.media.clock import MediaClock
from engine.media.codecs import get_decoder, get_encoder
from engine.media.dtmf import generate_dtmf_sequence
from engine.media.players import ToneSource
from engine.media.rtp import RtpPacket, RtpSender
from engine.media.srtp import SrtpContext
from engine.sip.errors import LocalProtocolError, RemoteProtocolError
from engine.sip.offer_answer import PCMU, create_offer, new_srtp_key, process_answer
from engine.sip.sdp import CryptoAttribute, parse_sdp
from engine.transport.rtp_socket import RtpPortAllocator, RtpPortPair

SUITE = "AES_CM_128_HMAC_SHA1_80"


def goertzel_power(x: np.ndarray, freq: float, rate: int = 8000) -> float:
    n = np.arange(len(x))
    return float(abs(np.sum(x * np.exp(-2j * np.pi * freq * n / rate))) ** 2)


class SrtpPeer:
    """A phone that speaks SDES-keyed SRTP on its own RTP/RTCP port pair."""

    def __init__(self, pair: RtpPortPair, suite: str = SUITE) -> None:
        self.pair = pair
        self.key = new_srtp_key(suite)
        self.offer = create_offer("127.0.0.1", pair.rtp_port, [PCMU], session_id=7, session_version=1,
                                  telephone_event=False, crypto=[CryptoAttribute(1, suite, self.key)])
        self.srtp: SrtpContext | None = None
        self.wire: list[bytes] = []
        self.rtcp_wire: list[bytes] = []

    def set_answer(self, answer: bytes) -> None:
        neg = process_answer(self.offer, parse_sdp(answer))
        assert neg.srtp is not None and neg.srtp.send_key == self.key
        self.srtp = SrtpContext(neg.srtp.suite, neg.srtp.send_key, neg.srtp.recv_key)

    def drain(self) -> None:
        for sock, into in ((self.pair.rtp, self.wire), (self.pair.rtcp, self.rtcp_wire)):
            while True:
                try:
                    into.append(sock.recvfrom(2048)[0])
                except BlockingIOError:
                    break


class Rig:
    def __init__(self, srtp: str = "mandatory", secure: bool = True) -> None:
        self.ports = RtpPortAllocator("127.0.0.1", 43000, 43200)
        self.peer = SrtpPeer(self.ports.allocate())
        self.clock = MediaClock()
        self.handler = SipLegMedia(self.ports, "127.0.0.1", clock=self.clock, call_id="5ec",
                                   srtp=srtp, secure_signalling=secure, source="127.0.0.1")
        self.handler.rtcp_interval = 0.2
        self.tones: list[tuple[str, str]] = []

    @property
    def target(self) -> tuple[str, int]:
        assert self.handler.pair is not None
        return ("127.0.0.1", self.handler.pair.rtp_port)

    async def close(self) -> None:
        self.handler.close()
        await self.clock.stop()
        self.ports.release(self.peer.pair)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    yield r
    await r.close()


async def until(cond: object, timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond() and loop.time() < deadline:  # type: ignore[operator]
        await asyncio.sleep(0.01)


async def test_tone_goes_out_as_srtp_only(rig: Rig) -> None:
    """Check the engine's tone reaches the peer encrypted: no datagram holds
    any run of the tone's PCMU bytes, each authenticates, and the decoded
    audio is the 1 kHz tone (Goertzel); RTCP arrives as SRTCP."""
    rig.peer.set_answer(rig.handler.create_answer(rig.peer.offer.to_bytes()))
    assert rig.handler.start_playback(ToneSource(1000, 0.6))

    def heard() -> bool:
        rig.peer.drain()
        return len(rig.peer.wire) >= 25 and bool(rig.peer.rtcp_wire)

    await until(heard)
    srtp = rig.peer.srtp
    assert srtp is not None and len(rig.peer.wire) >= 25
    encoder, tone = get_encoder("PCMU"), ToneSource(1000, 0.6)
    clear = b"".join(encoder.encode(tone.read(160)) for _ in range(30))
    wire = b"".join(rig.peer.wire)
    assert not any(clear[i:i + 8] in wire for i in range(0, 160, 1))  # no 8-byte run of the tone in clear
    packets = [srtp.unprotect_rtp(d) for d in rig.peer.wire]
    assert all(p is not None for p in packets)
    payloads = [RtpPacket.parse(p).payload for p in packets if p is not None]
    assert payloads[1] in clear and payloads[1] not in wire  # what was protected is the tone
    pcm = np.concatenate([get_decoder("PCMU").decode(p) for p in payloads]).astype(np.float64)
    assert goertzel_power(pcm, 1000) > 100 * goertzel_power(pcm, 1500)
    rtcp = [srtp.unprotect_rtcp(d) for d in rig.peer.rtcp_wire]
    assert rtcp and all(r is not None and r[1] in (200, 201) for r in rtcp)
    assert all(r != d for r, d in zip(rtcp, rig.peer.rtcp_wire))
    assert srtp.stats == {"srtp_auth_failed": 0, "srtp_replay": 0, "srtp_malformed": 0}


async def test_peer_audio_decoded_and_forgeries_dropped(rig: Rig) -> None:
    """Check the peer's SRTP audio is decrypted and decoded by the engine
    (in-band DTMF '5' found in it), while a forged copy, a replay and a plain
    RTP packet are dropped and counted (in ``srtp_stats()`` and in
    ``media_stats()``), never decoded."""
    rig.peer.set_answer(rig.handler.create_answer(rig.peer.offer.to_bytes()))
    rig.handler.set_tone_listener(lambda d, m: rig.tones.append((d, m)))
    srtp, sock = rig.peer.srtp, rig.peer.pair.rtp
    assert srtp is not None
    pcm = np.concatenate([generate_dtmf_sequence("5"), np.zeros(800, dtype=np.int16)])
    enc, sender, plain_sender = get_encoder("PCMU"), RtpSender(), RtpSender()
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(len(pcm) // 160):
        payload = enc.encode(pcm[i * 160:(i + 1) * 160])
        wire = srtp.protect_rtp(sender.next_packet(payload, 0, 160).serialize())
        assert wire is not None
        sock.sendto(wire, rig.target)
        if i == 3:
            sock.sendto(wire[:-1] + bytes([wire[-1] ^ 1]), rig.target)  # forged tag
            sock.sendto(wire, rig.target)  # replay
            sock.sendto(plain_sender.next_packet(payload, 0, 160).serialize(), rig.target)  # no SRTP
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))
    await until(lambda: rig.tones)
    assert rig.tones == [("5", "inband")]
    stats = rig.handler.srtp_stats()
    assert stats["srtp_replay"] >= 2  # the forged copy reuses the genuine one's index
    assert stats["srtp_auth_failed"] + stats["srtp_malformed"] >= 1  # the plain packet
    media = rig.handler.media_stats()  # the call's statistics carry the same counts
    assert (media.srtp_auth_failed, media.srtp_replay, media.srtp_malformed) == (
        stats["srtp_auth_failed"], stats["srtp_replay"], stats["srtp_malformed"])
    session = rig.handler.session
    assert session is not None and session.latch is not None and session.latch.remote_addr == sock.getsockname()


async def test_sdes_over_plain_signalling_refused(caplog: pytest.LogCaptureFixture) -> None:
    """Check an SDES offer that came over plain UDP/TCP is refused with 488
    and logged as a security event (without the key), and that we do not
    offer keys over it either."""
    rig = Rig(srtp="optional", secure=False)
    try:
        with caplog.at_level(logging.INFO), pytest.raises(RemoteProtocolError) as info:
            rig.handler.create_answer(rig.peer.offer.to_bytes())
        assert info.value.status == 488
        assert "sdes_over_plain" in caplog.text and "5ec" in caplog.text
        offered = str(rig.peer.offer.media[0].crypto[0]).split("inline:")[1]
        assert offered not in caplog.text
        assert b"RTP/AVP" in rig.handler.create_offer()  # optional: no keys over plain signalling
        rig.handler.srtp = "mandatory"
        with pytest.raises(LocalProtocolError, match="only be offered over TLS"):
            rig.handler.create_offer()
    finally:
        await rig.close()


async def test_outbound_offer_round_trip() -> None:
    """Check two handlers agree on SRTP: ours offers SAVP with a key per
    suite, the other answers, and both sides hold mirrored keys."""
    a, b = Rig(), Rig()
    try:
        offer = a.handler.create_offer()
        assert b"RTP/SAVP" in offer and offer.count(b"a=crypto:") == 3
        a.handler.set_answer(b.handler.create_answer(offer))
        assert a.handler.negotiated is not None and b.handler.negotiated is not None
        ours, theirs = a.handler.negotiated.srtp, b.handler.negotiated.srtp
        assert ours is not None and theirs is not None
        assert (ours.send_key, ours.recv_key) == (theirs.recv_key, theirs.send_key)
        # a re-offer keeps our key: the stream is not rekeyed
        again = a.handler.create_offer()
        assert parse_sdp(again).media[0].crypto[0].key == parse_sdp(offer).media[0].crypto[0].key
    finally:
        await a.close()
        await b.close()
