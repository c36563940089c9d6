"""Tests for :mod:`engine.media.rtp`: packets, sequence arithmetic, sender
state and the strict latch (RTP Bleed, probation, the send gate)."""

from __future__ import annotations

import random
import struct
from typing import Any, Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.media.rtp import (
    RtpError,
    RtpPacket,
    RtpReceiverLatch,
    RtpSender,
    RtpSourcePolicy,
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
PRIVATE = ("192.168.1.20", 4000)


def latched() -> RtpReceiverLatch:
    """A latch whose SDP address is PEER, latched on three packets from it."""
    latch = RtpReceiverLatch({PCMU, DTMF}, initial_addr=PEER)
    for i in range(3):
        assert latch.accept(RtpPacket(PCMU, 1000 + i, 160 * i, 0xAAAA), PEER, i * 0.02)
    return latch


def run(latch: RtpReceiverLatch, addr: tuple[str, int], seqs: Iterable[int], ssrc: int = 0xAAAA,
        now: float = 1.0) -> list[bool]:
    """What ``accept`` said to PCMU packets ``seqs`` of ``ssrc`` from ``addr``."""
    return [latch.accept(RtpPacket(PCMU, seq, 0, ssrc), addr, now) for seq in seqs]


def test_sdp_address_accepted_at_once() -> None:
    """Check the first packet from the SDP address is accepted and latches
    it, whatever its SSRC and sequence number."""
    latch = RtpReceiverLatch({PCMU}, initial_addr=PEER)
    assert latch.remote_addr == PEER and not latch.latched and not latch.confirmed
    assert latch.accept(RtpPacket(PCMU, 1, 0, 9), PEER, 0.0)
    assert latch.latched and latch.confirmed
    assert latch.remote_addr == PEER and latch.ssrc == 9 and latch.last_packet_at == 0.0


def test_first_packet_from_a_stranger_is_not_accepted() -> None:
    """Check a stranger's first packet is dropped, does not latch, does not
    move the send target and does not count as activity."""
    latch = RtpReceiverLatch({PCMU}, initial_addr=PEER)
    assert run(latch, EVIL, [100]) == [False]
    assert not latch.latched and latch.remote_addr == PEER
    assert latch.last_packet_at is None and latch.accepted == 0 and latch.dropped_stranger == 1


def test_probation_latches_after_four_consecutive_packets() -> None:
    """Check four consecutive packets (one source, one SSRC, sequence +1
    each) latch a source the SDP did not name: the fourth is accepted and
    the target moves there (a phone behind NAT)."""
    latch = RtpReceiverLatch({PCMU}, initial_addr=PRIVATE)
    assert run(latch, NAT, [65534, 65535, 0, 1]) == [False, False, False, True]  # across the wrap
    assert latch.latched and latch.remote_addr == NAT and latch.ssrc == 0xAAAA
    assert run(latch, NAT, [2, 3]) == [True, True]
    assert latch.dropped_stranger == 3 and latch.refused is None  # a NAT'd phone is not logged


def test_sequence_break_restarts_probation() -> None:
    """Check a gap, a repeat or a step back in the sequence restarts the count."""
    latch = RtpReceiverLatch({PCMU}, initial_addr=PEER)
    assert run(latch, EVIL, [10, 11, 12, 14]) == [False] * 4  # 13 missing
    assert run(latch, EVIL, [15, 16, 16, 17, 18]) == [False] * 5  # 16 twice
    assert not latch.latched
    assert run(latch, EVIL, [19]) == [True]  # 16, 17, 18, 19
    assert latch.remote_addr == EVIL


def test_ssrc_change_restarts_probation() -> None:
    """Check a packet with another SSRC from the same source restarts the count."""
    latch = RtpReceiverLatch({PCMU}, initial_addr=PEER)
    assert run(latch, EVIL, [10, 11, 12]) == [False] * 3
    assert run(latch, EVIL, [13], ssrc=0xBBBB) == [False]
    assert run(latch, EVIL, [14, 15], ssrc=0xAAAA) == [False, False]
    assert not latch.latched and latch.remote_addr == PEER


def test_second_source_restarts_probation() -> None:
    """Check packets of a second source in between restart the first's
    probation, and the competitor is the refused source to log."""
    latch = RtpReceiverLatch({PCMU}, initial_addr=PRIVATE)
    assert run(latch, NAT, [10, 11, 12]) == [False] * 3
    assert run(latch, EVIL, [500], ssrc=0xBBBB) == [False]
    assert run(latch, NAT, [13]) == [False]
    assert not latch.latched and latch.refused == EVIL


def test_interleaved_spoofed_packets_do_not_move_the_target() -> None:
    """Check a stranger interleaving valid-looking packets (its own SSRC,
    consecutive sequence numbers) with a real stream from the SDP address
    never latches nor is accepted."""
    latch = latched()
    for i in range(40):
        assert latch.accept(RtpPacket(PCMU, 1003 + i, 0, 0xAAAA), PEER, 1.0 + i * 0.02)
        assert not latch.accept(RtpPacket(PCMU, 7000 + i, 0, 0xBEEF), EVIL, 1.0 + i * 0.02)
    assert latch.remote_addr == PEER and latch.relatched == 0
    assert latch.dropped_stranger == 40 and latch.refused == EVIL


def test_stranger_with_other_ssrc_dropped() -> None:
    """Check packets from another address with another SSRC never steal the latch."""
    latch = latched()
    for i in range(50):
        assert not latch.accept(RtpPacket(PCMU, 1003 + i, 0, 0xBBBB), EVIL, 1.0)
    assert latch.remote_addr == PEER and latch.dropped_stranger == 50 and latch.dropped == 50


def test_wrong_payload_type_does_not_latch() -> None:
    """Check a packet of a payload type not negotiated is dropped before latching."""
    latch = RtpReceiverLatch({PCMU, DTMF}, initial_addr=PEER)
    assert not latch.accept(RtpPacket(8, 1, 0, 0xBAD), PEER, 0.0)
    assert not latch.latched and latch.dropped_payload_type == 1
    assert latch.accept(RtpPacket(DTMF, 5, 0, 0xAAAA), PEER, 0.1)
    assert latch.latched


def test_stranger_spraying_our_ssrc_with_wrong_sequence_dropped() -> None:
    """Check a stranger who knows the SSRC but not the sequence is dropped."""
    latch = latched()  # highest seq 1002
    for seq in (1002, 1001, 1002 + 33, 5000, 60000, 0):
        assert not latch.accept(RtpPacket(PCMU, seq, 0, 0xAAAA), EVIL, 1.0)
    assert not latch.accept(RtpPacket(8, 1003, 0, 0xAAAA), EVIL, 1.0)  # right seq, wrong PT
    assert latch.remote_addr == PEER
    assert (latch.dropped_stranger, latch.dropped_payload_type, latch.relatched) == (6, 1, 0)
    assert latch.accept(RtpPacket(PCMU, 1003, 0, 0xAAAA), PEER, 1.0)  # the real peer goes on


def test_nat_rebinding_relatches_after_probation() -> None:
    """Check the same SSRC continuing the sequence from a new port moves the
    latch, only after the probation; a straggler from the old binding is
    then dropped."""
    latch = RtpReceiverLatch({PCMU}, initial_addr=PRIVATE)
    assert run(latch, PEER, [1000, 1001, 1002, 1003]) == [False, False, False, True]
    assert run(latch, NAT, [1005, 1006, 1007]) == [False] * 3  # two lost in the rebinding
    assert latch.remote_addr == PEER
    assert run(latch, NAT, [1008]) == [True]
    assert latch.remote_addr == NAT and latch.relatched == 1
    assert run(latch, PEER, [1004]) == [False]  # a straggler from the old binding
    assert latch.accept(RtpPacket(PCMU, 1009, 0, 0xAAAA), NAT, 2.02)
    assert latch.last_packet_at == 2.02


def test_nat_rebinding_across_sequence_wrap() -> None:
    """Check 'continues' is wrap-aware: 65535 -> 2.. from a new port latches."""
    latch = RtpReceiverLatch({PCMU}, initial_addr=PEER)
    assert run(latch, PEER, [65535], ssrc=1) == [True]
    assert run(latch, NAT, [2, 3, 4, 5], ssrc=1) == [False, False, False, True]
    assert latch.remote_addr == NAT


def test_sdp_address_takes_the_latch_back() -> None:
    """Check a packet from the SDP address is accepted at once even while
    another source is latched, and the target moves back to it."""
    latch = RtpReceiverLatch({PCMU}, initial_addr=PEER)
    assert run(latch, NAT, [1, 2, 3, 4]) == [False, False, False, True]
    assert run(latch, PEER, [90], ssrc=0xCCCC) == [True]
    assert latch.remote_addr == PEER and latch.relatched == 1


def test_latched_peer_may_change_ssrc() -> None:
    """Check an SSRC change from the latched address itself is followed."""
    latch = latched()
    assert latch.accept(RtpPacket(PCMU, 7, 0, 0xCCCC), PEER, 1.0)
    assert latch.ssrc == 0xCCCC and latch.highest_seq == 7
    assert not latch.accept(RtpPacket(PCMU, 1003, 0, 0xAAAA), NAT, 1.0)  # the old SSRC no longer counts


def test_send_gate_closes_after_the_grace() -> None:
    """Check media may go to the unconfirmed SDP address only during the
    grace, refusals after it are counted, and a packet from the SDP address
    opens the gate again."""
    latch = RtpReceiverLatch({PCMU}, initial_addr=PEER, policy=RtpSourcePolicy(send_grace=3.0), now=10.0)
    assert latch.send_to(10.0) == PEER and latch.send_to(12.99) == PEER
    assert latch.send_to(13.0) is None and latch.send_to(20.0) is None
    assert latch.unsent == 2 and latch.destination(20.0) is None
    assert run(latch, EVIL, [1, 2, 3], now=20.0) == [False] * 3  # on probation: still closed
    assert latch.send_to(20.0) is None
    assert run(latch, PEER, [5], now=21.0) == [True]
    assert latch.send_to(99.0) == PEER and latch.unsent == 3


def test_send_gate_opens_on_probation_or_confirm() -> None:
    """Check a source passing probation, or confirm() (the peer's RTCP came
    from the SDP's RTCP address), opens the gate after the grace."""
    latch = RtpReceiverLatch({PCMU}, initial_addr=PRIVATE, now=0.0)
    assert latch.send_to(5.0) is None
    assert run(latch, NAT, [1, 2, 3, 4], now=5.0)[-1]
    assert latch.send_to(6.0) == NAT
    other = RtpReceiverLatch({PCMU}, initial_addr=PEER, now=0.0)
    other.confirm()
    assert other.send_to(60.0) == PEER and not other.latched


def test_new_sdp_address_gets_a_new_grace() -> None:
    """Check a re-INVITE naming another address makes it the unconfirmed
    target with a grace from then; the same address changes nothing."""
    latch = latched()
    latch.set_signalled(PEER, 100.0)
    assert latch.latched and latch.send_to(100.0) == PEER
    latch.set_signalled(PRIVATE, 100.0)
    assert not latch.latched and latch.send_to(102.0) == PRIVATE and latch.send_to(103.5) is None
    assert run(latch, PEER, [1], now=104.0) == [False]  # the old address is a stranger now


def test_lenient_policy_latches_the_first_packet() -> None:
    """Check strict=False keeps the old behaviour: the first acceptable
    packet from anywhere latches, a rebinding latches on one packet, and
    sending to the SDP address is never gated."""
    latch = RtpReceiverLatch({PCMU}, initial_addr=PRIVATE, policy=RtpSourcePolicy(strict=False))
    assert latch.send_to(1000.0) == PRIVATE
    assert run(latch, PEER, [7]) == [True] and latch.remote_addr == PEER
    assert run(latch, NAT, [8]) == [True] and latch.remote_addr == NAT
    assert run(latch, EVIL, [9], ssrc=0xBBBB) == [False] and latch.remote_addr == NAT


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"probation": 0}, "rtp_probation must be a whole number of packets, 1 or more, got 0"),
    ({"probation": 2.5}, "rtp_probation must be a whole number of packets, 1 or more, got 2.5"),
    ({"send_grace": -1.0}, "rtp_send_grace must be 0 or more seconds, got -1.0"),
    ({"send_grace": float("nan")}, "rtp_send_grace must be 0 or more seconds, got nan"),
    ({"pin_after": -1}, "rtp_pin_after must be a whole number of packets, 0 or more, got -1"),
    ({"pin_after": True}, "rtp_pin_after must be a whole number of packets, 0 or more, got True"),
])
def test_policy_refuses_bad_knobs(kwargs: dict[str, Any], message: str) -> None:
    """Check a bad probation, grace or pin count is refused with a message naming it."""
    with pytest.raises(ValueError) as info:
        RtpSourcePolicy(**kwargs)
    assert str(info.value) == message
