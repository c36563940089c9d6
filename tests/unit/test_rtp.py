"""Tests for :mod:`engine.media.rtp`: packets, sequence arithmetic, sender
state and the RTP-Bleed-safe latch."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.media.rtp import (
    RtpError,
    RtpPacket,
    RtpReceiverLatch,
    RtpSender,
    extend_seq,
    is_rtcp,
    seq_diff,
    seq_lt,
    ts_diff,
)

PCMU = 0
DTMF = 101


def test_parse_known_bytes() -> None:
    """Check every field of a hand-built header is read (RFC 3550 §5.1)."""
    data = bytes([0x80, 0x80 | 8]) + struct.pack("!HII", 4660, 0xDEADBEEF, 0x01020304) + b"\xd5" * 160
    p = RtpPacket.parse(data)
    assert p == RtpPacket(8, 4660, 0xDEADBEEF, 0x01020304, b"\xd5" * 160, marker=True)
    assert p.serialize() == data


def test_round_trip_with_csrc_extension_padding() -> None:
    """Check CSRCs, a §5.3.1 header extension and padding survive a round trip."""
    p = RtpPacket(
        96, 65535, 0xFFFFFFFF, 7, b"hello", marker=True, csrc=(1, 2, 3),
        extension_profile=0xBEDE, extension=b"\x10\xaa\x00\x00", padding=3,
    )
    data = p.serialize()
    assert data[0] == 0x80 | 0x20 | 0x10 | 3
    assert len(data) == 12 + 12 + 4 + 4 + 5 + 3
    assert data[-3:] == b"\x00\x00\x03"
    assert RtpPacket.parse(data) == p


@settings(max_examples=200)
@given(
    pt=st.integers(0, 127), seq=st.integers(0, 0xFFFF), ts=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF), payload=st.binary(max_size=64), marker=st.booleans(),
    csrc=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15),
    ext=st.one_of(st.none(), st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=16))),
    padding=st.integers(0, 255),
)
def test_round_trip_property(
    pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool,
    csrc: list[int], ext: tuple[int, bytes] | None, padding: int,
) -> None:
    """Check any valid packet parses back to itself after serialising."""
    profile, ext_data = (None, b"") if ext is None else (ext[0], ext[1][: len(ext[1]) // 4 * 4])
    p = RtpPacket(pt, seq, ts, ssrc, payload, marker, tuple(csrc), profile, ext_data, padding)
    assert RtpPacket.parse(p.serialize()) == p


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x80\x00\x00", "RTP packet too short: 3 bytes, need at least 12"),
        (bytes([0x40]) + bytes(11), "RTP version 1, expected 2"),
        (bytes([0x83]) + bytes(15), "RTP CSRC list of 3 entries runs past the end of the 16-byte packet"),
        (bytes([0x90]) + bytes(13), "RTP header extension header runs past the end of the packet"),
        (bytes([0x90]) + bytes(11) + b"\xbe\xde\x00\x02" + bytes(4),
         "RTP header extension of 2 words runs past the end of the packet"),
        (bytes([0xA0]) + bytes(11) + b"ab\x00", "RTP padding count is 0"),
        (bytes([0xA0]) + bytes(11) + b"ab\x04", "RTP padding count 4 exceeds the 3 bytes after the header"),
    ],
)
def test_malformed_packets(data: bytes, message: str) -> None:
    """Check each kind of malformed packet gets its exact RtpError text."""
    with pytest.raises(RtpError) as info:
        RtpPacket.parse(data)
    assert str(info.value) == message


@settings(max_examples=500)
@given(st.binary(max_size=80))
def test_parse_random_bytes_only_raises_rtp_error(data: bytes) -> None:
    """Check parse never raises anything but RtpError on arbitrary bytes."""
    try:
        p = RtpPacket.parse(data)
    except RtpError:
        return
    assert p.serialize() == data or p.padding  # padding octets other than the count are not kept


@settings(max_examples=100)
@given(st.binary(min_size=12, max_size=80))
def test_parse_version_2_random_bytes(data: bytes) -> None:
    """Check random bytes with version 2 set also only raise RtpError."""
    data = bytes([0x80 | (data[0] & 0x3F)]) + data[1:]
    try:
        RtpPacket.parse(data)
    except RtpError:
        pass


def test_serialize_rejects_bad_fields() -> None:
    """Check serialising refuses a misaligned extension or too many CSRCs."""
    with pytest.raises(ValueError, match="multiple of 4"):
        RtpPacket(0, 0, 0, 0, extension_profile=1, extension=b"abc").serialize()
    with pytest.raises(ValueError, match="at most 15 CSRCs"):
        RtpPacket(0, 0, 0, 0, csrc=tuple(range(16))).serialize()


def test_is_rtcp_demultiplexing() -> None:
    """Check RFC 5761 §4 demultiplexing on the second octet (192..223 = RTCP)."""
    assert is_rtcp(bytes([0x80, 200, 0, 6]))  # SR
    assert is_rtcp(bytes([0x81, 201, 0, 7]))  # RR
    assert not is_rtcp(RtpPacket(0, 1, 2, 3, marker=True).serialize())  # 0x80
    assert not is_rtcp(RtpPacket(96, 1, 2, 3, marker=True).serialize())  # 0xE0 = 224
    assert not is_rtcp(RtpPacket(127, 1, 2, 3).serialize())
    assert not is_rtcp(b"\x80")


def test_sequence_arithmetic_wraps() -> None:
    """Check wrap-around compare, difference and extension of sequence numbers."""
    assert seq_diff(65535, 0) == 1
    assert seq_diff(0, 65535) == -1
    assert seq_diff(10, 10) == 0
    assert seq_lt(65535, 0) and not seq_lt(0, 65535)
    assert seq_lt(65000, 100) and not seq_lt(100, 100)
    assert extend_seq(0, 65535) == 65536
    assert extend_seq(65535, 65536) == 65535
    assert extend_seq(5, 3 * 65536 + 65530) == 4 * 65536 + 5
    assert ts_diff(0xFFFFFF60, 0) == 160
    assert ts_diff(160, 0) == -160


def test_sender_advances_and_wraps() -> None:
    """Check the sender's sequence and timestamp advance and wrap, SSRC fixed."""
    s = RtpSender(ssrc=42, sequence_number=65535, timestamp=0xFFFFFFFF - 159)
    a = s.next_packet(b"x" * 160, PCMU, 160, marker=True)
    b = s.next_packet(b"y" * 160, PCMU, 160)
    assert (a.sequence_number, a.timestamp, a.marker) == (65535, 0xFFFFFF60, True)
    assert (b.sequence_number, b.timestamp, b.marker, b.ssrc) == (0, 0, False, 42)
    s.skip(320)
    assert s.next_packet(b"", PCMU, 160).timestamp == 480
    assert (s.packet_count, s.octet_count) == (3, 320)


def test_sender_starts_random() -> None:
    """Check SSRC, sequence and timestamp start at random values (RFC 3550 §5.1)."""
    rng = random.Random(7)
    s = RtpSender(random=rng.getrandbits)
    rng = random.Random(7)
    assert (s.ssrc, s.sequence_number, s.timestamp) == (rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(32))
    assert len({RtpSender().ssrc for _ in range(8)}) > 1


PEER = ("203.0.113.5", 4000)
NAT = ("203.0.113.5", 4711)
EVIL = ("198.51.100.66", 5000)


def latched() -> RtpReceiverLatch:
    latch = RtpReceiverLatch({PCMU, DTMF}, initial_addr=("10.0.0.2", 4000))
    for i in range(3):
        assert latch.accept(RtpPacket(PCMU, 1000 + i, 160 * i, 0xAAAA), PEER, i * 0.02)
    return latch


def test_latch_sends_to_sdp_address_until_latched() -> None:
    """Check remote_addr is the SDP address before latching, the source after."""
    latch = RtpReceiverLatch({PCMU}, initial_addr=("10.0.0.2", 4000))
    assert latch.remote_addr == ("10.0.0.2", 4000) and not latch.latched
    assert latch.accept(RtpPacket(PCMU, 1, 0, 9), PEER, 0.0)
    assert latch.remote_addr == PEER and latch.ssrc == 9 and latch.last_packet_at == 0.0


def test_wrong_payload_type_does_not_latch() -> None:
    """Check a packet of a payload type not negotiated is dropped before latching."""
    latch = RtpReceiverLatch({PCMU, DTMF})
    assert not latch.accept(RtpPacket(8, 1, 0, 0xBAD), EVIL, 0.0)
    assert not latch.latched and latch.remote_addr is None
    assert latch.dropped_payload_type == 1
    assert latch.accept(RtpPacket(DTMF, 5, 0, 0xAAAA), PEER, 0.1)
    assert latch.remote_addr == PEER


def test_stranger_with_other_ssrc_dropped() -> None:
    """Check packets from another address with another SSRC never steal the latch."""
    latch = latched()
    for i in range(50):
        assert not latch.accept(RtpPacket(PCMU, 1003 + i, 0, 0xBBBB), EVIL, 1.0)
    assert latch.remote_addr == PEER and latch.dropped_stranger == 50 and latch.dropped == 50


def test_stranger_spraying_our_ssrc_with_wrong_sequence_dropped() -> None:
    """Check a stranger who knows the SSRC but not the sequence is dropped."""
    latch = latched()  # highest seq 1002
    for seq in (1002, 1001, 1002 + 33, 5000, 60000, 0):
        assert not latch.accept(RtpPacket(PCMU, seq, 0, 0xAAAA), EVIL, 1.0)
    assert not latch.accept(RtpPacket(8, 1003, 0, 0xAAAA), EVIL, 1.0)  # right seq, wrong PT
    assert latch.remote_addr == PEER
    assert (latch.dropped_stranger, latch.dropped_payload_type, latch.relatched) == (6, 1, 0)
    assert latch.accept(RtpPacket(PCMU, 1003, 0, 0xAAAA), PEER, 1.0)  # the real peer goes on


def test_nat_rebinding_relatches() -> None:
    """Check the same SSRC with a continuing sequence from a new port moves the latch."""
    latch = latched()
    assert latch.accept(RtpPacket(PCMU, 1005, 800, 0xAAAA), NAT, 2.0)  # two lost in the rebinding
    assert latch.remote_addr == NAT and latch.relatched == 1
    assert not latch.accept(RtpPacket(PCMU, 1004, 640, 0xAAAA), PEER, 2.01)  # a straggler from the old binding
    assert latch.accept(RtpPacket(PCMU, 1006, 960, 0xAAAA), NAT, 2.02)
    assert latch.last_packet_at == 2.02


def test_nat_rebinding_across_sequence_wrap() -> None:
    """Check 'continues' is wrap-aware: 65535 -> 2 from a new port is accepted."""
    latch = RtpReceiverLatch({PCMU})
    assert latch.accept(RtpPacket(PCMU, 65535, 0, 1), PEER, 0.0)
    assert latch.accept(RtpPacket(PCMU, 2, 480, 1), NAT, 0.1)
    assert latch.remote_addr == NAT


def test_latched_peer_may_change_ssrc() -> None:
    """Check an SSRC change from the latched address itself is followed."""
    latch = latched()
    assert latch.accept(RtpPacket(PCMU, 7, 0, 0xCCCC), PEER, 1.0)
    assert latch.ssrc == 0xCCCC and latch.highest_seq == 7
    assert not latch.accept(RtpPacket(PCMU, 1003, 0, 0xAAAA), NAT, 1.0)  # the old SSRC no longer counts
