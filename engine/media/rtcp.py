"""RTCP packets and statistics (RFC 3550 §6 and Appendix A).

Packets: sender report (SR), receiver report (RR) with report blocks, source
description (SDES, CNAME and other items kept as bytes), BYE, and any other
type kept raw (APP, feedback), all parsed from and serialised to compound
packets (§6.1). Statistics: :class:`ReceiverStats` is Appendix A.1 (sequence
validation with probation), A.3 (expected, lost, fraction lost) and A.8
(interarrival jitter); :class:`SenderStats` counts what we sent for SRs.

Our own layer rather than aiortc's, for the reason given in
:mod:`engine.media.rtp`. Sans-IO: times are passed in, never read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable, TypeAlias

__all__ = [
    "NTP_EPOCH_OFFSET",
    "Bye",
    "RawRtcp",
    "ReceiverReport",
    "ReceiverStats",
    "ReportBlock",
    "RtcpError",
    "RtcpPacket",
    "Sdes",
    "SdesChunk",
    "SenderReport",
    "SenderStats",
    "ntp_from_unix",
    "ntp_middle32",
    "parse_rtcp",
    "serialize_rtcp",
]

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
SDES_CNAME = 1
NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01

_COMMON = struct.Struct("!BBH")
_BLOCK = struct.Struct("!IB3sIIII")
_SR_INFO = struct.Struct("!IQIII")


class RtcpError(ValueError):
    """A datagram is not a well-formed RTCP compound packet."""


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """One reception report block (RFC 3550 §6.4.1)."""

    ssrc: int
    fraction_lost: int  # 0..255, fixed point /256
    cumulative_lost: int  # signed 24 bits
    highest_seq: int  # extended highest sequence number received
    jitter: int  # timestamp units
    lsr: int = 0  # middle 32 bits of the last SR's NTP timestamp
    dlsr: int = 0  # delay since that SR, 1/65536 s

    def serialize(self) -> bytes:
        lost = max(-0x800000, min(0x7FFFFF, self.cumulative_lost)) & 0xFFFFFF
        return _BLOCK.pack(
            self.ssrc, self.fraction_lost, lost.to_bytes(3, "big"), self.highest_seq, self.jitter, self.lsr, self.dlsr
        )

    @classmethod
    def parse(cls, data: bytes, offset: int) -> ReportBlock:
        ssrc, fraction, lost, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(data, offset)
        return cls(ssrc, fraction, int.from_bytes(lost, "big", signed=True), highest, jitter, lsr, dlsr)


@dataclass(frozen=True, slots=True)
class SenderReport:
    """SR (RFC 3550 §6.4.1); ``ntp_timestamp`` is the 64-bit NTP value."""

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()

    def serialize(self) -> bytes:
        body = _SR_INFO.pack(self.ssrc, self.ntp_timestamp, self.rtp_timestamp, self.packet_count, self.octet_count)
        return _packet(RTCP_SR, len(self.reports), body + b"".join(r.serialize() for r in self.reports))


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    """RR (RFC 3550 §6.4.2)."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()

    def serialize(self) -> bytes:
        body = struct.pack("!I", self.ssrc) + b"".join(r.serialize() for r in self.reports)
        return _packet(RTCP_RR, len(self.reports), body)


@dataclass(frozen=True, slots=True)
class SdesChunk:
    """One SDES chunk: a source and its (item type, value) pairs."""

    ssrc: int
    items: tuple[tuple[int, bytes], ...] = ()

    @property
    def cname(self) -> bytes | None:
        for kind, value in self.items:
            if kind == SDES_CNAME:
                return value
        return None


@dataclass(frozen=True, slots=True)
class Sdes:
    """SDES (RFC 3550 §6.5)."""

    chunks: tuple[SdesChunk, ...]

    @classmethod
    def cname(cls, ssrc: int, cname: bytes | str) -> Sdes:
        value = cname.encode() if isinstance(cname, str) else cname
        return cls((SdesChunk(ssrc, ((SDES_CNAME, value),)),))

    def serialize(self) -> bytes:
        parts = []
        for chunk in self.chunks:
            raw = struct.pack("!I", chunk.ssrc)
            for kind, value in chunk.items:
                if len(value) > 255:
                    raise ValueError(f"SDES item longer than 255 octets: {len(value)}")
                raw += bytes((kind, len(value))) + value
            raw += bytes(4 - len(raw) % 4)  # the null item, then pad to 32 bits
            parts.append(raw)
        return _packet(RTCP_SDES, len(self.chunks), b"".join(parts))


@dataclass(frozen=True, slots=True)
class Bye:
    """BYE (RFC 3550 §6.6)."""

    sources: tuple[int, ...]
    reason: bytes = b""

    def serialize(self) -> bytes:
        body = b"".join(struct.pack("!I", s) for s in self.sources)
        if self.reason:
            if len(self.reason) > 255:
                raise ValueError(f"BYE reason longer than 255 octets: {len(self.reason)}")
            tail = bytes((len(self.reason),)) + self.reason
            body += tail + bytes(-len(tail) % 4)
        return _packet(RTCP_BYE, len(self.sources), body)


@dataclass(frozen=True, slots=True)
class RawRtcp:
    """Any other RTCP packet (APP, feedback, XR), kept verbatim."""

    packet_type: int
    count: int
    body: bytes

    def serialize(self) -> bytes:
        return _packet(self.packet_type, self.count, self.body)


RtcpPacket: TypeAlias = SenderReport | ReceiverReport | Sdes | Bye | RawRtcp


def _packet(packet_type: int, count: int, body: bytes) -> bytes:
    if count > 31:
        raise ValueError(f"an RTCP packet holds at most 31 items, got {count}")
    if len(body) % 4:
        raise ValueError("RTCP body must be a multiple of 4 octets")
    return _COMMON.pack(0x80 | count, packet_type, len(body) // 4) + body


def serialize_rtcp(packets: Iterable[RtcpPacket]) -> bytes:
    """A compound packet (RFC 3550 §6.1): the packets back to back."""
    return b"".join(p.serialize() for p in packets)


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """Parse a compound RTCP packet; raise :class:`RtcpError` if malformed."""
    packets: list[RtcpPacket] = []
    pos = 0
    size = len(data)
    if size < 4:
        raise RtcpError(f"RTCP packet too short: {size} bytes, need at least 4")
    while pos < size:
        if size - pos < 4:
            raise RtcpError(f"RTCP trailing {size - pos} bytes are not a packet")
        first, ptype, words = _COMMON.unpack_from(data, pos)
        if first >> 6 != 2:
            raise RtcpError(f"RTCP version {first >> 6}, expected 2")
        end = pos + 4 + 4 * words
        if end > size:
            raise RtcpError(f"RTCP packet type {ptype} length {words} runs past the end of the compound packet")
        body_end = end
        if first & 0x20:
            if end != size:
                raise RtcpError("RTCP padding is only allowed in the last packet")
            pad = data[end - 1] if end > pos + 4 else 0
            if pad == 0 or pad > end - pos - 4:
                raise RtcpError(f"RTCP padding count {pad} is invalid")
            body_end = end - pad
        packets.append(_parse_one(ptype, first & 0x1F, data, pos + 4, body_end))
        pos = end
    return packets


def _parse_one(ptype: int, count: int, data: bytes, pos: int, end: int) -> RtcpPacket:
    if ptype in (RTCP_SR, RTCP_RR):
        head = _SR_INFO.size if ptype == RTCP_SR else 4
        if end - pos < head + 24 * count:
            raise RtcpError(f"RTCP {'SR' if ptype == RTCP_SR else 'RR'} too short for {count} report blocks")
        blocks = tuple(ReportBlock.parse(data, pos + head + 24 * i) for i in range(count))
        if ptype == RTCP_SR:
            ssrc, ntp, rtp_ts, packets, octets = _SR_INFO.unpack_from(data, pos)
            return SenderReport(ssrc, ntp, rtp_ts, packets, octets, blocks)
        return ReceiverReport(struct.unpack_from("!I", data, pos)[0], blocks)
    if ptype == RTCP_SDES:
        chunks = []
        for _ in range(count):
            if end - pos < 4:
                raise RtcpError("RTCP SDES chunk runs past the end of the packet")
            ssrc = struct.unpack_from("!I", data, pos)[0]
            pos += 4
            items = []
            while True:
                if pos >= end:
                    raise RtcpError("RTCP SDES chunk lacks its terminating null item")
                kind = data[pos]
                if kind == 0:
                    pos += 1
                    pos += -pos % 4  # chunks are 32-bit aligned (the body starts aligned)
                    break
                if pos + 2 > end or pos + 2 + data[pos + 1] > end:
                    raise RtcpError("RTCP SDES item runs past the end of the packet")
                length = data[pos + 1]
                items.append((kind, bytes(data[pos + 2 : pos + 2 + length])))
                pos += 2 + length
            chunks.append(SdesChunk(ssrc, tuple(items)))
        return Sdes(tuple(chunks))
    if ptype == RTCP_BYE:
        if end - pos < 4 * count:
            raise RtcpError(f"RTCP BYE too short for {count} sources")
        sources = struct.unpack_from(f"!{count}I", data, pos)
        pos += 4 * count
        reason = b""
        if pos < end:
            length = data[pos]
            if pos + 1 + length > end:
                raise RtcpError("RTCP BYE reason runs past the end of the packet")
            reason = bytes(data[pos + 1 : pos + 1 + length])
        return Bye(tuple(sources), reason)
    return RawRtcp(ptype, count, bytes(data[pos:end]))


def ntp_from_unix(wall_time: float) -> int:
    """64-bit NTP timestamp for a Unix time in seconds."""
    seconds = int(wall_time // 1)
    fraction = int((wall_time - seconds) * (1 << 32))
    return (((seconds + NTP_EPOCH_OFFSET) & 0xFFFFFFFF) << 32) | (fraction & 0xFFFFFFFF)


def ntp_middle32(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp (the LSR field)."""
    return (ntp >> 16) & 0xFFFFFFFF


MAX_DROPOUT = 3000
MAX_MISORDER = 100
MIN_SEQUENTIAL = 2
_SEQ_MOD = 1 << 16


class ReceiverStats:
    """Reception statistics of one source (RFC 3550 Appendix A.1, A.3, A.8).

    Feed every RTP packet of the source to :meth:`on_packet` with its
    arrival time (seconds, any origin); it answers whether the sequence
    number is valid (A.1: a new source is on probation until
    ``MIN_SEQUENTIAL`` packets arrive in sequence). :meth:`report_block`
    gives the figures for the next SR/RR and starts a new interval.
    """

    # Slots: read per packet of every leg (tests/unit/test_media_layout.py).
    __slots__ = ("_lsr", "_sr_arrival", "_started", "_transit", "bad_seq", "base_seq", "clock_rate", "cycles",
                 "expected_prior", "fraction_lost", "jitter", "max_seq", "probation", "received", "received_prior",
                 "ssrc")

    def __init__(self, ssrc: int, clock_rate: int, *, probation: int = MIN_SEQUENTIAL) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self.max_seq = 0
        self.cycles = 0
        self.base_seq = 0
        self.bad_seq = _SEQ_MOD + 1
        self.probation = probation
        self.received = 0
        self.expected_prior = 0
        self.received_prior = 0
        self.jitter = 0.0
        self._transit: int | None = None
        self._started = False
        self._lsr = 0
        self._sr_arrival: float | None = None
        self.fraction_lost = 0

    def _init_seq(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = _SEQ_MOD + 1
        self.cycles = 0
        self.received = 0
        self.received_prior = 0
        self.expected_prior = 0

    def _update_seq(self, seq: int) -> bool:
        if not self._started:
            self._started = True
            self._init_seq(seq)
            self.max_seq = (seq - 1) & 0xFFFF
            if not self.probation:
                self.max_seq = seq
                self.received = 1
                return True
        udelta = (seq - self.max_seq) & 0xFFFF
        if self.probation:
            if seq == (self.max_seq + 1) & 0xFFFF:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self._init_seq(seq)
                    self.received += 1
                    return True
            else:
                self.probation = MIN_SEQUENTIAL - 1
                self.max_seq = seq
            return False
        if udelta < MAX_DROPOUT:
            if seq < self.max_seq:
                self.cycles += _SEQ_MOD
            self.max_seq = seq
        elif udelta <= _SEQ_MOD - MAX_MISORDER:
            if seq == self.bad_seq:
                self._init_seq(seq)  # the source restarted: resync
            else:
                self.bad_seq = (seq + 1) & 0xFFFF
                return False
        # else: a duplicate or reordered packet
        self.received += 1
        return True

    def on_packet(self, seq: int, rtp_timestamp: int, arrival: float, *, jitter: bool = True) -> bool:
        """Count one packet; update the jitter (A.8) if its sequence is valid.

        :param jitter: ``False`` for a packet that shares the sequence space
            but not the sampling clock, such as an RFC 4733 event (all
            packets of an event carry its start timestamp): it counts for
            loss but would inflate the jitter.
        """
        max_seq = self.max_seq
        if not self.probation and self._started and ((seq - max_seq) & 0xFFFF) < MAX_DROPOUT:
            # _update_seq's common case (a valid source, the next packet or a
            # small gap), inlined: it runs for every packet of every call
            if seq < max_seq:
                self.cycles += _SEQ_MOD
            self.max_seq = seq
            self.received += 1
        elif not self._update_seq(seq):
            return False
        if not jitter:
            return True
        arrival_ts = round(arrival * self.clock_rate)
        transit = arrival_ts - rtp_timestamp
        if self._transit is not None:
            d = ((transit - self._transit + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            self.jitter += (abs(d) - self.jitter) / 16
        self._transit = transit
        return True

    def on_sender_report(self, ntp_timestamp: int, arrival: float) -> None:
        """Remember an SR from this source for the LSR/DLSR fields."""
        self._lsr = ntp_middle32(ntp_timestamp)
        self._sr_arrival = arrival

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        return self.extended_max - self.base_seq + 1 if self.received else 0

    @property
    def lost(self) -> int:
        """Cumulative packets lost, clamped to the signed 24-bit field."""
        return max(-0x800000, min(0x7FFFFF, self.expected - self.received))

    def report_block(self, now: float) -> ReportBlock:
        """The report block for this source; starts a new loss interval."""
        expected = self.expected
        expected_interval = expected - self.expected_prior
        self.expected_prior = expected
        received_interval = self.received - self.received_prior
        self.received_prior = self.received
        lost_interval = expected_interval - received_interval
        if expected_interval == 0 or lost_interval <= 0:
            self.fraction_lost = 0
        else:
            self.fraction_lost = (lost_interval << 8) // expected_interval
        dlsr = 0
        if self._sr_arrival is not None:
            dlsr = max(0, int((now - self._sr_arrival) * 65536))
        return ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=self.fraction_lost,
            cumulative_lost=self.lost,
            highest_seq=self.extended_max & 0xFFFFFFFF,
            jitter=int(self.jitter),
            lsr=self._lsr,
            dlsr=dlsr,
        )


class SenderStats:
    """What we sent on one SSRC, for sender reports (RFC 3550 §6.4.1)."""

    def __init__(self, ssrc: int) -> None:
        self.ssrc = ssrc
        self.packet_count = 0
        self.octet_count = 0

    def on_packet_sent(self, payload_size: int) -> None:
        """Count one sent RTP packet carrying ``payload_size`` payload octets."""
        self.packet_count = (self.packet_count + 1) & 0xFFFFFFFF
        self.octet_count = (self.octet_count + payload_size) & 0xFFFFFFFF

    def sender_report(
        self, wall_time: float, rtp_timestamp: int, reports: tuple[ReportBlock, ...] = ()
    ) -> SenderReport:
        """An SR stamped with ``wall_time`` (Unix seconds) and the RTP
        timestamp of the same instant."""
        return SenderReport(
            self.ssrc, ntp_from_unix(wall_time), rtp_timestamp, self.packet_count, self.octet_count, reports
        )
