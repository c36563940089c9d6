"""engine.media.srtp: SRTP/SRTCP round trips for each suite, and a forged,
replayed or damaged packet dropped and counted instead of raised."""

from __future__ import annotations

import pytest

from engine.media.rtp import RtpPacket, RtpSender
from engine.media.srtp import PROFILES, SrtpContext, SrtpError
from engine.sip.sdp import SRTP_SUITES


def pair(suite: str) -> tuple[SrtpContext, SrtpContext]:
    a, b = bytes([1]) * SRTP_SUITES[suite], bytes([2]) * SRTP_SUITES[suite]
    return SrtpContext(suite, a, b), SrtpContext(suite, b, a)


def rtp(sender: RtpSender, payload: bytes = bytes(range(160))) -> bytes:
    return sender.next_header(0, 160, len(payload), marker=False) + payload


RTCP_RR = bytes([0x80, 201, 0, 1, 0x12, 0x34, 0x56, 0x78])  # an empty receiver report


@pytest.mark.parametrize("suite", sorted(PROFILES))
def test_round_trip(suite: str) -> None:
    """Check RTP and RTCP come back unchanged, and the wire does not carry the payload in clear."""
    alice, bob = pair(suite)
    sender = RtpSender()
    for _ in range(3):
        packet = rtp(sender)
        wire = alice.protect_rtp(packet)
        assert wire is not None and packet[12:] not in wire
        assert bob.unprotect_rtp(wire) == packet
    wire = alice.protect_rtcp(RTCP_RR)
    assert wire is not None and bob.unprotect_rtcp(wire) == RTCP_RR
    assert bob.stats == {"srtp_auth_failed": 0, "srtp_replay": 0, "srtp_malformed": 0}


@pytest.mark.parametrize("suite", sorted(PROFILES))
def test_tampered_tag_dropped_and_counted(suite: str) -> None:
    """Check a packet whose auth tag was changed is dropped, counted, and does not stop the stream."""
    alice, bob = pair(suite)
    sender = RtpSender()
    wire = alice.protect_rtp(rtp(sender))
    assert wire is not None
    forged = wire[:-1] + bytes([wire[-1] ^ 0x01])
    assert bob.unprotect_rtp(forged) is None
    assert bob.stats["srtp_auth_failed"] == 1
    assert bob.unprotect_rtp(wire) is not None  # the genuine one still passes
    rtcp = alice.protect_rtcp(RTCP_RR)
    assert rtcp is not None
    assert bob.unprotect_rtcp(rtcp[:-1] + bytes([rtcp[-1] ^ 0x80])) is None
    assert bob.stats["srtp_auth_failed"] == 2


def test_wrong_key_fails_authentication() -> None:
    """Check a packet made with another key is refused as unauthenticated."""
    alice, _ = pair("AES_CM_128_HMAC_SHA1_80")
    stranger = SrtpContext("AES_CM_128_HMAC_SHA1_80", bytes([9]) * 30, bytes([1]) * 30)
    wire = stranger.protect_rtp(rtp(RtpSender()))
    assert wire is not None
    assert alice.unprotect_rtp(wire) is None
    assert alice.stats["srtp_auth_failed"] == 1


def test_replay_dropped_and_counted() -> None:
    """Check the same SRTP packet received twice is dropped the second time (RFC 3711 section 3.3.2)."""
    alice, bob = pair("AES_CM_128_HMAC_SHA1_80")
    wire = alice.protect_rtp(rtp(RtpSender()))
    assert wire is not None
    assert bob.unprotect_rtp(wire) is not None
    assert bob.unprotect_rtp(wire) is None
    assert bob.stats["srtp_replay"] == 1


@pytest.mark.parametrize("data", [b"", b"\x80", bytes(3000)])
def test_garbage_dropped_and_counted(data: bytes) -> None:
    """Check empty, short and oversized datagrams are counted as malformed, never raised."""
    _, bob = pair("AES_CM_128_HMAC_SHA1_80")
    assert bob.unprotect_rtp(data) is None
    assert bob.unprotect_rtcp(data) is None
    assert bob.stats["srtp_malformed"] == 2


def test_bad_keys_refused() -> None:
    """Check an unknown suite or a short key is a clear SrtpError."""
    with pytest.raises(SrtpError, match="^unsupported SRTP crypto-suite 'NULL'$"):
        SrtpContext("NULL", b"", b"")
    with pytest.raises(SrtpError, match="^bad AES_CM_128_HMAC_SHA1_80 key: key must contain at least 30 bytes$"):
        SrtpContext("AES_CM_128_HMAC_SHA1_80", bytes(10), bytes(30))


def test_rtp_packet_parses_after_unprotect() -> None:
    """Check what unprotect returns is an RTP packet with the sent payload."""
    alice, bob = pair("AES_CM_128_HMAC_SHA1_32")
    wire = alice.protect_rtp(rtp(RtpSender(), b"\xff" * 160))
    assert wire is not None
    plain = bob.unprotect_rtp(wire)
    assert plain is not None and RtpPacket.parse(plain).payload == b"\xff" * 160
