"""One call leg's RTCP (RFC 3550 section 6) and its RTP inactivity timer, sans-IO.

Theory of operation
-------------------
:class:`RtcpSession` has the aioquic shape: it is fed what arrives
(:meth:`~RtcpSession.on_rtp_received` for each accepted RTP packet,
:meth:`~RtcpSession.receive` for each RTCP datagram from the peer) and time
(:meth:`~RtcpSession.handle_timer` at :meth:`~RtcpSession.get_timer`); it
answers with datagrams (:meth:`~RtcpSession.datagrams_to_send`) and events
(:meth:`~RtcpSession.next_event`). The asyncio side
(:class:`engine.transport.rtcp_transport.RtcpTransport`) owns the RTCP
socket and the one ``loop.call_at`` timer.

Reports. Every report interval a compound packet goes out (RFC 3550
section 6.1): a sender report (SR) if we sent RTP since the report before
last (section 6.4), else a receiver report (RR), with one report block per
source heard (:class:`~engine.media.rtcp.ReceiverStats`: loss, jitter,
LSR/DLSR), then SDES with our CNAME (a random one per session, RFC 7022).
The interval is ``interval * U(0.5, 1.5)`` (section 6.3.1), half that
before the first report (section 6.2: the initial minimum is halved).
``interval`` is the minimum of section 6.2, 5 s: a two-party G.711 call
computes far less, so the minimum always rules and neither the bandwidth
nor the member count needs tracking. Nor does timer reconsideration (so
the ``e - 3/2`` compensation factor that goes with it is left out).
What we sent comes from the stream's :class:`~engine.media.rtp.RtpSender`
(its packet and octet counts). The RTP timestamp of an SR is the sender's
running timestamp if it moved since the previous report (it is then within
one 20 ms frame of "now", since the media clock drives the stream), else
the previous report's extrapolated at the codec's rate (an idle stream).

Round-trip time (section 6.4.1): a report block about our SSRC carries the
middle 32 bits of our last SR's NTP timestamp (LSR) and the delay since
(DLSR); the RTT is ``arrival - LSR - DLSR``. NTP times come from the wall
clock, given as ``wall_offset`` (wall time minus the ``now`` time base).

Inactivity. With :meth:`~RtcpSession.set_inactivity_timeout` the timer
also fires ``timeout`` seconds after the last RTP or RTCP arrival, and
:class:`MediaTimedOut` is queued once. Nothing is re-armed per packet: an
arrival only records its time, and a timer that fires early (because
packets came meanwhile) is pushed back. While media is not expected (the
peer holds the call, or the stream is not received:
:meth:`~RtcpSession.set_media_expected`) the timeout is suspended, and it
restarts from the moment media is expected again.

At the end, :meth:`~RtcpSession.close` gives a last report with an RTCP
BYE (section 6.6), unless we never sent RTP or RTCP (section 6.3.7).

Process-wide counts. Every session is in :data:`LIVE` until it closes, and
then adds its counts to :data:`CLOSED`: the engine's metrics
(:mod:`engine.web.metrics`) add both up when scraped, so that nothing is
counted twice per packet.
"""

from __future__ import annotations

import collections
import random as _random
import weakref
from dataclasses import dataclass
from typing import Callable

from engine import entropy
from engine.media.rtcp import (
    Bye,
    ReceiverReport,
    ReceiverStats,
    ReportBlock,
    RtcpError,
    RtcpPacket,
    Sdes,
    SenderReport,
    ntp_from_unix,
    ntp_middle32,
    parse_rtcp,
    serialize_rtcp,
)
from engine.media.rtp import RtpPacket, RtpSender

__all__ = ["CLOSED", "LIVE", "ClosedTotals", "MIN_INTERVAL", "MediaStats", "MediaTimedOut", "RtcpSession"]

#: RFC 3550 section 6.2: the minimum report interval, seconds.
MIN_INTERVAL = 5.0
#: Sources tracked at once (the latch lets one through at a time; an SSRC
#: change or a restart adds one, the oldest is forgotten).
MAX_SOURCES = 4
#: At most this many report blocks in one RR/SR (the count field holds 31).
_MAX_BLOCKS = 31


@dataclass(frozen=True)
class MediaStats:
    """A call leg's media statistics (what ``call.media_stats()`` returns).

    Counts cover the time the leg's media session ran; byte counts are RTP
    payload octets, as RTCP counts them (RFC 3550 section 6.4.1).

    :param packets_lost: packets the peer sent that never arrived
        (cumulative, RFC 3550 Appendix A.3; duplicates can offset it).
    :param fraction_lost: share of packets lost over the last report
        interval, 0.0-1.0.
    :param jitter_ms: interarrival jitter of what we receive (Appendix A.8).
    :param rtt_ms: round-trip time from the peer's last report, or ``None``
        until one referred to an SR of ours.
    :param remote_packets_lost: what the peer reports lost of our stream
        (``None`` until it reported).
    :param remote_fraction_lost: the peer's fraction lost, 0.0-1.0.
    :param remote_jitter_ms: the jitter the peer measures on our stream.
    :param srtp_auth_failed: SRTP/SRTCP packets dropped because their
        authentication tag did not match (forged, damaged, or plain RTP;
        RFC 3711 section 3.3, step 5). Zero on a leg without SRTP.
    :param srtp_replay: SRTP/SRTCP packets dropped by the replay check
        (an index already seen or too old; RFC 3711 section 3.3.2).
    :param srtp_malformed: SRTP/SRTCP packets dropped as unusable (too
        short for a tag, too long, another libsrtp error).
    """

    packets_sent: int = 0
    bytes_sent: int = 0
    packets_received: int = 0
    bytes_received: int = 0
    packets_lost: int = 0
    fraction_lost: float = 0.0
    jitter_ms: float = 0.0
    rtt_ms: float | None = None
    remote_packets_lost: int | None = None
    remote_fraction_lost: float | None = None
    remote_jitter_ms: float | None = None
    rtcp_sent: int = 0
    rtcp_received: int = 0
    rtcp_malformed: int = 0
    srtp_auth_failed: int = 0
    srtp_replay: int = 0
    srtp_malformed: int = 0


@dataclass(frozen=True)
class MediaTimedOut:
    """No RTP nor RTCP arrived for ``idle`` seconds while media was expected."""

    idle: float


class RtcpSession:
    """RTCP reports, statistics and RTP inactivity for one stream (see the module notes).

    :param sender: the stream's outgoing state (SSRC, counts, timestamp).
    :param clock_rate: the RTP clock rate of the negotiated codec.
    :param cname: our SDES CNAME (default: 16 random URL-safe characters).
    :param interval: the deterministic report interval, seconds.
    :param wall_offset: wall-clock (Unix) time minus the ``now`` time base.
    :param random: returns a float in [0, 1) (tests pass a seeded one).
    """

    # Slots: read per packet of every leg (tests/unit/test_media_layout.py).
    __slots__ = ("_anchor_time", "_anchor_ts", "_current", "_datagrams", "_events", "_expected", "_last_activity",
                 "_next_report", "_random", "_sent_counts", "_timed_out", "bytes_received", "clock_rate", "closed",
                 "cname", "event_pt", "interval", "packets_received", "remote_block", "remote_bye", "rtcp_malformed",
                 "rtcp_received", "rtcp_sent", "rtt", "sender", "sources", "timeout", "wall_offset", "__weakref__")

    def __init__(
        self,
        sender: RtpSender,
        *,
        clock_rate: int = 8000,
        cname: str | None = None,
        interval: float = MIN_INTERVAL,
        wall_offset: float = 0.0,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.sender = sender
        self.clock_rate = clock_rate
        self.cname = cname or entropy.token_urlsafe(12)
        self.interval = interval
        self.wall_offset = wall_offset
        self._random = random
        #: Payload type of RFC 4733 events: counted for loss, not for jitter.
        self.event_pt: int | None = None
        self.sources: collections.OrderedDict[int, ReceiverStats] = collections.OrderedDict()
        self._current: ReceiverStats | None = None
        self.packets_received = 0
        self.bytes_received = 0
        self.rtcp_sent = 0
        self.rtcp_received = 0
        self.rtcp_malformed = 0
        self.remote_bye = False
        self.rtt: float | None = None
        self.remote_block: ReportBlock | None = None
        self._next_report: float | None = None
        # The sender's packet count at the last two reports (RFC 3550
        # section 6.4: a sender report only if we sent since the report
        # before the last one); two ints, not a deque (~600 bytes a call).
        self._sent_counts = (0, 0)
        self._anchor_ts: int | None = None
        self._anchor_time = 0.0
        self._last_activity = 0.0
        self.timeout = 0.0
        self._expected = True
        self._timed_out = False
        self._datagrams: list[bytes] = []
        self._events: list[MediaTimedOut] = []
        self.closed = False
        LIVE.add(self)

    # -- input -------------------------------------------------------------------

    def on_rtp_received(self, packet: RtpPacket, now: float) -> None:
        """Count an RTP packet the latch accepted (it also proves the peer alive)."""
        self.on_rtp_header(packet.payload_type, packet.sequence_number, packet.timestamp, packet.ssrc,
                           len(packet.payload), now)

    def on_rtp_header(self, pt: int, seq: int, timestamp: int, ssrc: int, size: int, now: float) -> None:
        """:meth:`on_rtp_received` from the header fields and the payload's
        size (a receiver that parses no packet object, per packet)."""
        self._last_activity = now
        self.packets_received += 1
        self.bytes_received += size
        stats = self._current
        if stats is None or stats.ssrc != ssrc:
            stats = self._source(ssrc)
        stats.on_packet(seq, timestamp, now, jitter=pt != self.event_pt)

    def _source(self, ssrc: int) -> ReceiverStats:
        stats = self.sources.get(ssrc)
        if stats is None:
            stats = ReceiverStats(ssrc, self.clock_rate)
            self.sources[ssrc] = stats
            while len(self.sources) > MAX_SOURCES:
                self.sources.popitem(last=False)
        else:
            self.sources.move_to_end(ssrc)
        self._current = stats
        return stats

    def receive(self, data: bytes, now: float) -> None:
        """Feed one RTCP datagram from the peer; a malformed one is counted
        and otherwise ignored."""
        try:
            packets = parse_rtcp(data)
        except RtcpError:
            self.rtcp_malformed += 1
            return
        self.rtcp_received += 1
        self._last_activity = now
        for packet in packets:
            self._on_packet(packet, now)

    def _on_packet(self, packet: RtcpPacket, now: float) -> None:
        if isinstance(packet, SenderReport):
            stats = self.sources.get(packet.ssrc)
            if stats is not None:
                stats.on_sender_report(packet.ntp_timestamp, now)
            self._on_blocks(packet.reports, now)
        elif isinstance(packet, ReceiverReport):
            self._on_blocks(packet.reports, now)
        elif isinstance(packet, Bye):
            self.remote_bye = True

    def _on_blocks(self, blocks: tuple[ReportBlock, ...], now: float) -> None:
        for block in blocks:
            if block.ssrc != self.sender.ssrc:
                continue
            self.remote_block = block
            if block.lsr:
                arrival = ntp_middle32(ntp_from_unix(now + self.wall_offset))
                rtt = (arrival - block.lsr - block.dlsr) & 0xFFFFFFFF
                if rtt < 0x80000000:  # a negative value is clock trouble, not a round trip
                    self.rtt = rtt / 65536

    # -- timers --------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Schedule the first report (half an interval, randomised) and
        start counting inactivity from ``now``."""
        if self._next_report is None and not self.closed:
            self._next_report = now + self._randomised(self.interval / 2)
            self._last_activity = now

    def _randomised(self, interval: float) -> float:
        return interval * (0.5 + self._random())

    def set_inactivity_timeout(self, timeout: float, now: float) -> None:
        """Queue :class:`MediaTimedOut` after ``timeout`` seconds without
        RTP or RTCP, counted from ``now`` (0: never)."""
        self.timeout = max(0.0, timeout)
        self._last_activity = now
        self._timed_out = False

    def set_media_expected(self, expected: bool, now: float) -> None:
        """Suspend the inactivity timeout while media is not expected (hold);
        when it is expected again, count from ``now``."""
        if expected and not self._expected:
            self._last_activity = now
        self._expected = expected

    @property
    def inactivity_deadline(self) -> float | None:
        if self.timeout <= 0 or not self._expected or self._timed_out or self.closed:
            return None
        return self._last_activity + self.timeout

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should run next, or ``None``."""
        if self.closed:
            return None
        deadline = self.inactivity_deadline
        report = self._next_report
        if deadline is None:
            return report
        return deadline if report is None else min(deadline, report)

    def handle_timer(self, now: float) -> None:
        """Send a report if one is due; time out if media stopped."""
        if self.closed:
            return
        if self._next_report is not None and now >= self._next_report:
            self._datagrams.append(self._compound(now))
            self._next_report = now + self._randomised(self.interval)
        deadline = self.inactivity_deadline
        if deadline is not None and now >= deadline:
            self._timed_out = True
            self._events.append(MediaTimedOut(now - self._last_activity))

    def datagrams_to_send(self) -> list[bytes]:
        """The compound packets to send, oldest first (the queue is emptied)."""
        out, self._datagrams = self._datagrams, []
        self.rtcp_sent += len(out)
        return out

    def next_event(self) -> MediaTimedOut | None:
        return self._events.pop(0) if self._events else None

    # -- reports -----------------------------------------------------------------

    def _report(self, now: float) -> SenderReport | ReceiverReport:
        blocks = tuple(stats.report_block(now) for stats in reversed(self.sources.values())
                       if stats.received)[:_MAX_BLOCKS]
        sender = self.sender
        count = sender.packet_count
        sent_recently = count > self._sent_counts[0]
        self._sent_counts = (self._sent_counts[1], count)
        if not sent_recently:
            return ReceiverReport(sender.ssrc, blocks)
        return SenderReport(
            sender.ssrc, ntp_from_unix(now + self.wall_offset), self._rtp_timestamp(now),
            count & 0xFFFFFFFF, sender.octet_count & 0xFFFFFFFF, blocks,
        )

    def _rtp_timestamp(self, now: float) -> int:
        """The stream's RTP timestamp for ``now`` (see the module notes)."""
        ts = self.sender.timestamp
        if ts != self._anchor_ts:
            self._anchor_ts, self._anchor_time = ts, now
            return ts
        return (ts + round((now - self._anchor_time) * self.clock_rate)) & 0xFFFFFFFF

    def _compound(self, now: float, bye: bool = False) -> bytes:
        packets: list[RtcpPacket] = [self._report(now), Sdes.cname(self.sender.ssrc, self.cname)]
        if bye:
            packets.append(Bye((self.sender.ssrc,)))
        return serialize_rtcp(packets)

    def close(self, now: float) -> bytes | None:
        """End the session: the last compound packet, with BYE, or ``None``
        if we never sent RTP or RTCP (RFC 3550 section 6.3.7) or already closed."""
        if self.closed:
            return None
        self.closed = True
        LIVE.discard(self)
        CLOSED.add(self)
        if not self.rtcp_sent and not self.sender.packet_count:
            return None
        self.rtcp_sent += 1
        return self._compound(now, bye=True)

    # -- statistics ----------------------------------------------------------------

    def stats(self) -> MediaStats:
        current = self._current
        remote = self.remote_block
        rate = self.clock_rate
        return MediaStats(
            packets_sent=self.sender.packet_count,
            bytes_sent=self.sender.octet_count,
            packets_received=self.packets_received,
            bytes_received=self.bytes_received,
            packets_lost=sum(max(0, s.lost) for s in self.sources.values()),
            fraction_lost=current.fraction_lost / 256 if current is not None else 0.0,
            jitter_ms=current.jitter * 1000 / rate if current is not None else 0.0,
            rtt_ms=self.rtt * 1000 if self.rtt is not None else None,
            remote_packets_lost=remote.cumulative_lost if remote is not None else None,
            remote_fraction_lost=remote.fraction_lost / 256 if remote is not None else None,
            remote_jitter_ms=remote.jitter * 1000 / rate if remote is not None else None,
            rtcp_sent=self.rtcp_sent,
            rtcp_received=self.rtcp_received,
            rtcp_malformed=self.rtcp_malformed,
        )


@dataclass
class ClosedTotals:
    """What the closed sessions of this process counted (see the module notes).

    :param sessions: sessions closed.
    :param packets_sent: RTP packets they sent.
    :param packets_received: RTP packets they accepted.
    :param packets_lost: packets their peers sent that never arrived (RFC 3550 section 6.4.1).
    """

    sessions: int = 0
    packets_sent: int = 0
    packets_received: int = 0
    packets_lost: int = 0

    def add(self, session: RtcpSession) -> None:
        """Add the counts of ``session``, closing now."""
        self.sessions += 1
        self.packets_sent += session.sender.packet_count
        self.packets_received += session.packets_received
        self.packets_lost += sum(max(0, s.lost) for s in session.sources.values())


#: Sessions not closed yet (they leave on :meth:`RtcpSession.close`, or when freed).
LIVE: weakref.WeakSet[RtcpSession] = weakref.WeakSet()
#: The counts of every closed session.
CLOSED = ClosedTotals()
