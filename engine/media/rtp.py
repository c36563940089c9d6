"""RTP packets (RFC 3550), sequence arithmetic, sender state and a strict latch.

We write our own small packet layer instead of reusing aiortc's
``RtpPacket``: aiortc is a heavy dependency (PyAV, cryptography, aioice) that
only the WebRTC leg needs, while the G.711 legs, which are most of the
traffic, need a lean, allocation-light path: one ``struct`` unpack per
packet, the payload as a ``bytes`` slice, no per-packet objects beyond the
packet itself. The WebRTC leg keeps aiortc's own RTP stack.

Sans-IO: nothing here reads a clock or touches a socket. Times are passed in
(seconds, any monotonic origin) and addresses are whatever tuple the
transport's ``recvfrom`` gave.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from engine import entropy
from engine.media.rtp_policy import PIN_AFTER, PROBATION, SEND_GRACE, RtpSourcePolicy

__all__ = [
    "RTP_VERSION",
    "Address",
    "RtpError",
    "RtpPacket",
    "RtpReceiverLatch",
    "RtpSender",
    "RtpSourcePolicy",
    "PROBATION",
    "PIN_AFTER",
    "SEND_GRACE",
    "extend_seq",
    "is_rtcp",
    "seq_diff",
    "seq_lt",
    "ts_diff",
]

RTP_VERSION = 2
SEQ_MOD = 1 << 16
TS_MOD = 1 << 32
_HEADER = struct.Struct("!BBHII")
_EXT_HEADER = struct.Struct("!HH")

Address = tuple[Any, ...]
"""A transport address as the socket layer reports it: ``(host, port)`` or
the IPv6 4-tuple."""


class RtpError(ValueError):
    """A datagram is not a well-formed RTP packet (the message says why)."""


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet (RFC 3550 §5.1).

    ``padding`` is the number of padding octets after the payload, the count
    octet included (0 = no padding, the P bit clear). ``extension_profile``
    is the 16-bit "defined by profile" field of the RFC 3550 §5.3.1 header
    extension and ``extension`` its data (a multiple of 4 octets), kept as
    bytes; ``extension_profile is None`` means no extension (X bit clear).
    """

    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension_profile: int | None = None
    extension: bytes = b""
    padding: int = 0

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse one datagram; raise :class:`RtpError` if it is malformed."""
        size = len(data)
        if size < 12:
            raise RtpError(f"RTP packet too short: {size} bytes, need at least 12")
        first, second, seq, ts, ssrc = _HEADER.unpack_from(data)
        if first == 0x80:  # version 2 and nothing but the fixed header: most packets
            return cls(second & 0x7F, seq, ts, ssrc, bytes(data[12:]), second > 0x7F)
        version = first >> 6
        if version != RTP_VERSION:
            raise RtpError(f"RTP version {version}, expected 2")
        cc = first & 0x0F
        pos = 12 + 4 * cc
        if pos > size:
            raise RtpError(f"RTP CSRC list of {cc} entries runs past the end of the {size}-byte packet")
        csrc = struct.unpack_from(f"!{cc}I", data, 12) if cc else ()
        profile: int | None = None
        ext = b""
        if first & 0x10:
            if pos + 4 > size:
                raise RtpError("RTP header extension header runs past the end of the packet")
            profile, words = _EXT_HEADER.unpack_from(data, pos)
            pos += 4
            end = pos + 4 * words
            if end > size:
                raise RtpError(f"RTP header extension of {words} words runs past the end of the packet")
            ext = data[pos:end]
            pos = end
        end = size
        padding = 0
        if first & 0x20:
            padding = data[-1]
            if padding == 0:
                raise RtpError("RTP padding count is 0")
            if padding > size - pos:
                raise RtpError(f"RTP padding count {padding} exceeds the {size - pos} bytes after the header")
            end = size - padding
        return cls(
            payload_type=second & 0x7F,
            sequence_number=seq,
            timestamp=ts,
            ssrc=ssrc,
            payload=bytes(data[pos:end]),
            marker=bool(second & 0x80),
            csrc=tuple(csrc),
            extension_profile=profile,
            extension=bytes(ext),
            padding=padding,
        )

    def serialize(self) -> bytes:
        """The packet's wire form (padding octets are zeros plus the count)."""
        cc = len(self.csrc)
        if cc > 15:
            raise ValueError(f"at most 15 CSRCs fit an RTP header, got {cc}")
        if not 0 <= self.padding <= 255:
            raise ValueError(f"RTP padding must be 0..255 octets, got {self.padding}")
        first = 0x80 | cc
        if self.padding:
            first |= 0x20
        if self.extension_profile is not None:
            first |= 0x10
        second = (0x80 if self.marker else 0) | (self.payload_type & 0x7F)
        parts = [_HEADER.pack(first, second, self.sequence_number, self.timestamp, self.ssrc)]
        if cc:
            parts.append(struct.pack(f"!{cc}I", *self.csrc))
        if self.extension_profile is not None:
            if len(self.extension) % 4:
                raise ValueError(f"RTP header extension must be a multiple of 4 octets, got {len(self.extension)}")
            parts.append(_EXT_HEADER.pack(self.extension_profile, len(self.extension) // 4))
            parts.append(self.extension)
        parts.append(self.payload)
        if self.padding:
            parts.append(bytes(self.padding - 1) + bytes((self.padding,)))
        return b"".join(parts)


def is_rtcp(data: bytes) -> bool:
    """True if a datagram on a muxed port is RTCP (RFC 5761 §4).

    RTCP packet types 192..223 occupy the second octet, where RTP has the
    marker bit and payload type; RFC 5761 keeps RTP payload types 64..95
    unused so the ranges never meet.
    """
    return len(data) >= 2 and 192 <= data[1] <= 223


def seq_diff(a: int, b: int) -> int:
    """``b - a`` for 16-bit sequence numbers, in -32768..32767 (wrap-aware)."""
    return ((b - a + 0x8000) & 0xFFFF) - 0x8000


def seq_lt(a: int, b: int) -> bool:
    """True if sequence number ``a`` comes before ``b`` (RFC 1982 style)."""
    return seq_diff(a, b) > 0


def ts_diff(a: int, b: int) -> int:
    """``b - a`` for 32-bit RTP timestamps, signed and wrap-aware."""
    return ((b - a + 0x80000000) & 0xFFFFFFFF) - 0x80000000


def extend_seq(seq: int, reference: int) -> int:
    """The extended (cycle-counting) value of ``seq`` nearest ``reference``.

    ``reference`` is an extended sequence number already seen (typically the
    highest); the result differs from it by at most 32768.
    """
    return reference + seq_diff(reference & 0xFFFF, seq)


def _random_bits(bits: int) -> int:
    return entropy.randbits(bits)


class RtpSender:
    """Outgoing stream state: SSRC, sequence number and timestamp.

    All three start random (RFC 3550 §5.1, §8) unless given. ``random`` takes
    a bit count and returns that many random bits; tests pass a seeded one.
    """

    # Slots: read per packet of every leg (tests/unit/test_media_layout.py).
    __slots__ = ("ssrc", "sequence_number", "timestamp", "packet_count", "octet_count")

    def __init__(
        self,
        *,
        ssrc: int | None = None,
        sequence_number: int | None = None,
        timestamp: int | None = None,
        random: Callable[[int], int] = _random_bits,
    ) -> None:
        self.ssrc = random(32) if ssrc is None else ssrc
        self.sequence_number = random(16) if sequence_number is None else sequence_number
        self.timestamp = random(32) if timestamp is None else timestamp
        self.packet_count = 0
        self.octet_count = 0

    def next_packet(self, payload: bytes, pt: int, samples: int, marker: bool = False) -> RtpPacket:
        """The next packet carrying ``payload``; then advance the sequence
        number by one and the timestamp by ``samples``."""
        packet = RtpPacket(pt, self.sequence_number, self.timestamp, self.ssrc, payload, marker)
        self.sequence_number = (self.sequence_number + 1) & 0xFFFF
        self.timestamp = (self.timestamp + samples) & 0xFFFFFFFF
        self.packet_count += 1
        self.octet_count += len(payload)
        return packet

    def packet_at(self, payload: bytes, pt: int, timestamp: int, marker: bool = False) -> RtpPacket:
        """The next packet, stamped ``timestamp`` instead of the running
        timestamp, which does not advance; the sequence number does.

        RFC 4733 section 2.5.1.2: every packet of a telephone-event carries
        the timestamp of the event's start while the stream's clock runs on.
        """
        packet = RtpPacket(pt, self.sequence_number, timestamp & 0xFFFFFFFF, self.ssrc, payload, marker)
        self.sequence_number = (self.sequence_number + 1) & 0xFFFF
        self.packet_count += 1
        self.octet_count += len(payload)
        return packet

    def next_header(self, pt: int, samples: int, size: int, marker: bool = False) -> bytes:
        """The 12-byte header of the next packet, to be followed by a
        ``size``-octet payload (the same bytes as ``next_packet(...).serialize()``
        without building a packet); then advance as :meth:`next_packet` does."""
        header = _HEADER.pack(0x80, (0x80 if marker else 0) | (pt & 0x7F),
                              self.sequence_number, self.timestamp, self.ssrc)
        self.sequence_number = (self.sequence_number + 1) & 0xFFFF
        self.timestamp = (self.timestamp + samples) & 0xFFFFFFFF
        self.packet_count += 1
        self.octet_count += size
        return header

    def next_datagram(self, pt: int, samples: int, payload: bytes, marker: bool = False) -> bytes:
        """The whole next packet carrying ``payload`` (``next_header(...) +
        payload`` in one step, per packet); then advance as :meth:`next_packet` does."""
        seq, ts = self.sequence_number, self.timestamp
        self.sequence_number = (seq + 1) & 0xFFFF
        self.timestamp = (ts + samples) & 0xFFFFFFFF
        self.packet_count += 1
        self.octet_count += len(payload)
        return _HEADER.pack(0x80, (0x80 if marker else 0) | (pt & 0x7F), seq, ts, self.ssrc) + payload

    def skip(self, samples: int) -> None:
        """Advance the timestamp over a stretch sent as nothing (silence, hold)."""
        self.timestamp = (self.timestamp + samples) & 0xFFFFFFFF


class RtpReceiverLatch:
    """Symmetric RTP latching that resists RTP Bleed and media reflection.

    Symmetric RTP sends to wherever the peer's packets come from, which is
    what gets media through NAT; naive latching lets anyone who sprays the
    port steal or inject the stream, and sending to the SDP address blindly
    lets a caller aim our media at a victim by writing its address in
    ``c=``. Here (with :attr:`RtpSourcePolicy.strict`, the default):

    * a packet whose payload type was not negotiated is dropped, latched or
      not, so only real media can latch;
    * a packet from the signalled (SDP) address is accepted at once and
      latches it: the signalling path named it;
    * from the latched address every negotiated packet is accepted (an SSRC
      change there is followed);
    * a packet from any other source is on probation (Asterisk's
      ``strictrtp``): it is dropped, and the source is latched (NAT) only
      when ``probation`` consecutive packets came from it with one SSRC and
      sequence numbers each one more than the last. While a source is
      latched, a new one must moreover carry the latched SSRC and start
      1..``window`` ahead of the highest sequence number seen (NAT
      rebinding), which a blind sprayer cannot guess. A packet from a third
      source restarts the probation. Dropped packets are counted and never
      count as activity (:attr:`last_packet_at`).

    Sending (:meth:`destination`): to the latched source; before anything
    latched, to the SDP address only for ``send_grace`` seconds from
    ``now`` (media start), unless :meth:`confirm` was called (the peer's
    RTCP came from the SDP's RTCP address). After that nothing is sent until
    a packet comes from the SDP address or a source passes probation.

    Without ``strict`` the first acceptable packet latches, a new address
    is latched at once by a packet with the latched SSRC and a continuing
    sequence number, and sending to the SDP address is never gated.

    ``initial_addr`` is the SDP address. :attr:`refused` is the first
    source refused outright (a packet that cannot be on its way to a latch:
    a wrong SSRC or sequence while latched, or a second source competing
    with one on probation), for one security log line per call.
    """

    # Slots: every packet reads this object (see JitterBuffer).
    __slots__ = ("payload_types", "window", "strict", "probation", "send_grace", "latched", "confirmed",
                 "ssrc", "highest_seq", "last_packet_at", "signalled", "_addr", "grace_until",
                 "_candidate", "_candidate_ssrc", "_candidate_seq", "_candidate_count", "accepted",
                 "relatched", "dropped_payload_type", "dropped_stranger", "unsent", "refused")

    def __init__(
        self,
        payload_types: Iterable[int],
        *,
        initial_addr: Address | None = None,
        window: int = 32,
        policy: RtpSourcePolicy | None = None,
        now: float = 0.0,
    ) -> None:
        self.payload_types = frozenset(payload_types)
        self.window = window
        policy = policy or RtpSourcePolicy()
        self.strict = policy.strict
        self.probation = policy.probation
        self.send_grace = policy.send_grace
        self.latched = False
        #: Whether sending to :attr:`remote_addr` was confirmed (a latch or RTCP).
        self.confirmed = False
        self.ssrc: int | None = None
        self.highest_seq = 0
        self.last_packet_at: float | None = None
        self.signalled = initial_addr
        self._addr = initial_addr
        self.grace_until = now + policy.send_grace
        self._candidate: Address | None = None
        self._candidate_ssrc = 0
        self._candidate_seq = 0
        self._candidate_count = 0
        self.accepted = 0
        self.relatched = 0
        self.dropped_payload_type = 0
        self.dropped_stranger = 0
        #: Datagrams :meth:`send_to` refused (nothing confirmed after the grace).
        self.unsent = 0
        self.refused: Address | None = None

    @property
    def remote_addr(self) -> Address | None:
        """The peer's address: the latched source, else the SDP address
        (whether media may go there now is :meth:`destination`'s call)."""
        return self._addr

    @property
    def dropped(self) -> int:
        """All dropped packets."""
        return self.dropped_payload_type + self.dropped_stranger

    def destination(self, now: float) -> Address | None:
        """Where media may be sent at ``now``: :attr:`remote_addr` once
        confirmed or within the grace, else ``None``."""
        if self.confirmed or not self.strict or now < self.grace_until:
            return self._addr
        return None

    def send_to(self, now: float) -> Address | None:
        """:meth:`destination`, counting in :attr:`unsent` each refusal."""
        if self.confirmed:
            return self._addr
        addr = self.destination(now)
        if addr is None and self._addr is not None:
            self.unsent += 1
        return addr

    def confirm(self) -> None:
        """The peer proved it listens at the SDP address by another path
        (its RTCP came from the SDP's RTCP address): send there."""
        if not self.latched:
            self.confirmed = True

    def set_signalled(self, addr: Address, now: float) -> None:
        """A new SDP (re-INVITE, UPDATE) named ``addr``: nothing changes if
        it is the same; else that address is the one to prefer, unconfirmed,
        with a new grace from ``now``."""
        if addr == self.signalled:
            return
        self.signalled = self._addr = addr
        self.latched = self.confirmed = False
        self.ssrc = None
        self._candidate = None
        self.grace_until = now + self.send_grace

    def _latch(self, ssrc: int, seq: int, addr: Address) -> None:
        if self.latched and addr != self._addr:
            self.relatched += 1
        self.latched = self.confirmed = True
        self._addr = addr
        self.ssrc = ssrc
        self.highest_seq = seq
        self._candidate = None

    def accept(self, packet: RtpPacket, addr: Address, now: float) -> bool:
        """Decide whether ``packet`` from ``addr`` belongs to the stream."""
        return self.accept_header(packet.payload_type, packet.sequence_number, packet.ssrc, addr, now)

    def accept_header(self, pt: int, seq: int, ssrc: int, addr: Address, now: float) -> bool:
        """:meth:`accept` from the header fields it reads (payload type,
        sequence number, SSRC), for a receiver that parses no packet object
        (:class:`~engine.calls.rtp_stream.MediaSession`, per packet)."""
        if pt not in self.payload_types:
            self.dropped_payload_type += 1
            return False
        if self.latched and addr == self._addr:
            # seq_lt(self.highest_seq, seq), inlined (per packet)
            if ssrc != self.ssrc or ((seq - self.highest_seq + 0x8000) & 0xFFFF) - 0x8000 > 0:
                self.highest_seq = seq
            self.ssrc = ssrc
        elif addr == self.signalled or not self.latched and not self.strict:
            self._latch(ssrc, seq, addr)
        elif not self.strict:
            if ssrc == self.ssrc and 0 < seq_diff(self.highest_seq, seq) <= self.window:
                self._latch(ssrc, seq, addr)
            else:
                self.dropped_stranger += 1
                return False
        elif not self._on_probation(ssrc, seq, addr):
            self.dropped_stranger += 1
            return False
        self.accepted += 1
        self.last_packet_at = now
        return True

    def _on_probation(self, ssrc: int, seq: int, addr: Address) -> bool:
        """Strict mode, a packet from neither the SDP address nor the latched
        source: count it toward ``addr``'s probation; ``True`` when this
        packet completes it (the source is latched)."""
        if (addr == self._candidate and ssrc == self._candidate_ssrc
                and seq == (self._candidate_seq + 1) & 0xFFFF):
            self._candidate_count += 1
        elif self.latched and (ssrc != self.ssrc
                               or not 0 < seq_diff(self.highest_seq, seq) <= self.window):
            if self._candidate == addr:
                self._candidate = None
            if self.refused is None:
                self.refused = addr
            return False
        else:
            if self._candidate is not None and self._candidate != addr and self.refused is None:
                self.refused = addr
            self._candidate = addr
            self._candidate_ssrc = ssrc
            self._candidate_count = 1
        self._candidate_seq = seq
        if self._candidate_count < self.probation:
            return False
        self._latch(ssrc, seq, addr)
        return True
