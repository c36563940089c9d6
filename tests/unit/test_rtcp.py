"""Tests for :mod:`engine.media.rtcp`: packets, compounds and the RFC 3550
Appendix A statistics."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.media.rtcp import (
    NTP_EPOCH_OFFSET,
    Bye,
    RawRtcp,
    RtcpPacket,
    ReceiverReport,
    ReceiverStats,
    ReportBlock,
    RtcpError,
    Sdes,
    SdesChunk,
    SenderReport,
    SenderStats,
    ntp_from_unix,
    ntp_middle32,
    parse_rtcp,
    serialize_rtcp,
)
from engine.media.rtp import is_rtcp

BLOCK = ReportBlock(ssrc=2, fraction_lost=26, cumulative_lost=2, highest_seq=0x10005, jitter=9, lsr=0x12345678, dlsr=32768)


def test_receiver_report_exact_bytes() -> None:
    """Check an RR's wire form against hand-assembled bytes (RFC 3550 §6.4.2)."""
    data = ReceiverReport(1, (BLOCK,)).serialize()
    assert data == (
        bytes([0x81, 201, 0, 7]) + (1).to_bytes(4, "big")
        + (2).to_bytes(4, "big") + bytes([26, 0, 0, 2]) + (0x10005).to_bytes(4, "big")
        + (9).to_bytes(4, "big") + (0x12345678).to_bytes(4, "big") + (32768).to_bytes(4, "big")
    )
    assert parse_rtcp(data) == [ReceiverReport(1, (BLOCK,))]


def test_compound_round_trip() -> None:
    """Check SR + SDES + BYE + an unknown type survive a compound round trip (§6.1)."""
    packets: list[RtcpPacket] = [
        SenderReport(0xAAAA, ntp_from_unix(1_700_000_000.25), 123456, 50, 8000,
                     (BLOCK, ReportBlock(3, 0, -5, 7, 0))),
        Sdes((SdesChunk(0xAAAA, ((1, b"alice@example.com"), (2, b"Alice"))), SdesChunk(0xBBBB, ((1, b"b"),)))),
        Bye((0xAAAA, 0xBBBB), b"hangup"),
        RawRtcp(204, 1, b"\x00\x00\x00\x01name\x01\x02\x03\x04"),
    ]
    data = serialize_rtcp(packets)
    assert len(data) % 4 == 0 and is_rtcp(data)
    assert parse_rtcp(data) == packets


def test_sdes_cname_and_empty_bye() -> None:
    """Check the CNAME helper and a BYE with no reason."""
    sdes = Sdes.cname(7, "callbridge@host")
    assert parse_rtcp(sdes.serialize()) == [sdes]
    assert sdes.chunks[0].cname == b"callbridge@host"
    assert SdesChunk(1, ((2, b"x"),)).cname is None
    bye = Bye((7,))
    assert bye.serialize() == bytes([0x81, 203, 0, 1, 0, 0, 0, 7])
    assert parse_rtcp(bye.serialize()) == [bye]


def test_cumulative_lost_is_signed_and_clamped() -> None:
    """Check the 24-bit cumulative-lost field keeps its sign and saturates."""
    for lost, expect in ((-1, -1), (10**9, 0x7FFFFF), (-(10**9), -0x800000)):
        rr = ReceiverReport(1, (ReportBlock(2, 0, lost, 0, 0),))
        parsed = parse_rtcp(rr.serialize())[0]
        assert isinstance(parsed, ReceiverReport) and parsed.reports[0].cumulative_lost == expect


def test_padding_in_last_packet() -> None:
    """Check padding on the last packet is stripped (§6.4.1 P bit)."""
    body = (9).to_bytes(4, "big") + bytes([0, 0, 0, 4])
    data = bytes([0xA0, 201, 0, 2]) + body
    assert parse_rtcp(data) == [ReceiverReport(9)]


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x80\xc9", "RTCP packet too short: 2 bytes, need at least 4"),
        (bytes([0x40, 201, 0, 0]), "RTCP version 1, expected 2"),
        (bytes([0x80, 201, 0, 5]) + bytes(4), "RTCP packet type 201 length 5 runs past the end of the compound packet"),
        (bytes([0x80, 201, 0, 1]) + bytes(4) + b"\x80", "RTCP trailing 1 bytes are not a packet"),
        (bytes([0x81, 201, 0, 1]) + bytes(4), "RTCP RR too short for 1 report blocks"),
        (bytes([0xA0, 201, 0, 1]) + bytes(4) + bytes([0x80, 201, 0, 0]), "RTCP padding is only allowed in the last packet"),
        (bytes([0xA0, 201, 0, 1]) + bytes(3) + b"\x09", "RTCP padding count 9 is invalid"),
        (bytes([0x81, 202, 0, 2]) + bytes(4) + b"\x01\x09ab", "RTCP SDES item runs past the end of the packet"),
        (bytes([0x81, 202, 0, 2]) + bytes(4) + b"\x01\x02ab", "RTCP SDES chunk lacks its terminating null item"),
        (bytes([0x81, 203, 0, 2]) + bytes(4) + b"\x09abc", "RTCP BYE reason runs past the end of the packet"),
    ],
)
def test_malformed_rtcp(data: bytes, message: str) -> None:
    """Check each kind of malformed RTCP gets its exact RtcpError text."""
    with pytest.raises(RtcpError) as info:
        parse_rtcp(data)
    assert str(info.value) == message


@settings(max_examples=500)
@given(st.binary(max_size=120))
def test_parse_random_bytes_only_raises_rtcp_error(data: bytes) -> None:
    """Check parse_rtcp never raises anything but RtcpError on arbitrary bytes."""
    if data:
        data = bytes([0x80 | (data[0] & 0x3F)]) + data[1:]
    try:
        parse_rtcp(data)
    except RtcpError:
        pass


def test_ntp_timestamps() -> None:
    """Check Unix time to NTP conversion and the LSR middle 32 bits."""
    assert ntp_from_unix(0.0) == NTP_EPOCH_OFFSET << 32
    assert ntp_from_unix(1.5) == ((NTP_EPOCH_OFFSET + 1) << 32) | 0x80000000
    assert ntp_middle32(0x1122334455667788) == 0x33445566


def feed(stats: ReceiverStats, seqs: list[int]) -> None:
    for i, seq in enumerate(seqs):
        stats.on_packet(seq, 160 * i, 0.02 * i)


def test_probation_then_loss_and_fraction() -> None:
    """Check A.1 probation and A.3 loss figures: 100..119 minus 105 and 110.

    The first packet is on probation and not counted, so base = 101,
    expected = 119 - 101 + 1 = 19, received = 17, lost = 2,
    fraction = (2 << 8) // 19 = 26.
    """
    stats = ReceiverStats(0xAAAA, 8000)
    assert not stats.on_packet(100, 0, 0.0)
    feed(stats, [s for s in range(101, 120) if s not in (105, 110)])
    block = stats.report_block(1.0)
    assert (stats.base_seq, stats.expected, stats.received) == (101, 19, 17)
    assert (block.cumulative_lost, block.fraction_lost, block.highest_seq) == (2, 26, 119)
    feed(stats, list(range(120, 130)))
    block = stats.report_block(2.0)
    assert (block.cumulative_lost, block.fraction_lost, block.highest_seq) == (2, 0, 129)


def test_probation_restarts_on_out_of_order() -> None:
    """Check a non-consecutive packet during probation restarts it (A.1)."""
    stats = ReceiverStats(1, 8000)
    assert not stats.on_packet(10, 0, 0.0)
    assert not stats.on_packet(50, 0, 0.0)
    assert stats.on_packet(51, 0, 0.0)
    assert stats.base_seq == 51


def test_sequence_wrap_counts_cycles() -> None:
    """Check the extended highest sequence number across 65535 -> 0 (A.1)."""
    stats = ReceiverStats(1, 8000)
    feed(stats, [65533, 65534, 65535, 0, 1])
    assert stats.cycles == 65536 and stats.extended_max == 65537
    block = stats.report_block(0.1)
    assert (block.highest_seq, block.cumulative_lost) == (65537, 0)


def test_big_jump_resyncs_after_two_packets() -> None:
    """Check a jump beyond MAX_DROPOUT is refused once, then accepted as a restart (A.1)."""
    stats = ReceiverStats(1, 8000)
    feed(stats, [1, 2, 3])
    assert not stats.on_packet(20000, 0, 1.0)
    assert stats.on_packet(20001, 0, 1.02)
    assert (stats.base_seq, stats.received, stats.lost) == (20001, 1, 0)


def test_duplicates_make_lost_negative() -> None:
    """Check duplicates count as received so cumulative lost can go below zero (§6.4.1)."""
    stats = ReceiverStats(1, 8000)
    feed(stats, [1, 2, 3, 3, 4])
    assert stats.report_block(1.0).cumulative_lost == -1


def test_interarrival_jitter_hand_computed() -> None:
    """Check A.8 jitter for known arrival deltas at 8 kHz, 20 ms packets.

    Transit (arrival*8000 - ts) of the valid packets: 0, 80, 0, 0, so
    |D| = 80, 80, 0 and J = 80/16 = 5; 5 + 75/16 = 9.6875;
    9.6875 - 9.6875/16 = 9.08203125 -> reported as 9.
    """
    for base in (0, 2**32 - 320):  # also across the timestamp wrap
        stats = ReceiverStats(1, 8000)
        arrivals = [0.0, 0.020, 0.050, 0.060, 0.080]
        for i, t in enumerate(arrivals):
            stats.on_packet(i, (base + 160 * i) % 2**32, t)
        assert stats.jitter == pytest.approx(9.08203125)
        assert stats.report_block(0.1).jitter == 9


def test_lsr_and_dlsr() -> None:
    """Check LSR is the SR's middle 32 bits and DLSR the delay in 1/65536 s."""
    stats = ReceiverStats(1, 8000)
    ntp = ntp_from_unix(1_700_000_000.0)
    stats.on_sender_report(ntp, 10.0)
    block = stats.report_block(10.5)
    assert (block.lsr, block.dlsr) == (ntp_middle32(ntp), 32768)


def test_sender_stats_make_sender_report() -> None:
    """Check packet/octet counts and the NTP stamp in a sender report."""
    sender = SenderStats(0xAAAA)
    for _ in range(50):
        sender.on_packet_sent(160)
    sr = sender.sender_report(1_700_000_000.5, 8000, (BLOCK,))
    assert sr == SenderReport(0xAAAA, ntp_from_unix(1_700_000_000.5), 8000, 50, 8000, (BLOCK,))
    assert sr.ntp_timestamp >> 32 == 1_700_000_000 + NTP_EPOCH_OFFSET
    assert parse_rtcp(sr.serialize()) == [sr]
