"""engine.media.rtcp_session on virtual time: report timing and contents,
statistics, round-trip time, malformed input, the RTP inactivity timer and
its suspension on hold, BYE at the end."""

from __future__ import annotations

from hypothesis import given, strategies as st

from engine.media.rtcp import (
    Bye, ReceiverReport, ReportBlock, Sdes, SenderReport, ntp_from_unix, ntp_middle32, parse_rtcp,
    serialize_rtcp,
)
from engine.media.rtcp_session import MediaStats, MediaTimedOut, RtcpSession
from engine.media.rtp import RtpPacket, RtpSender

WALL = 1_700_000_000.0  # wall-clock time at now == 0


def make(random: float = 0.5, **kwargs: object) -> tuple[RtcpSession, RtpSender]:
    sender = RtpSender(ssrc=0xAAAA, sequence_number=1, timestamp=5000)
    session = RtcpSession(sender, cname="me@test", wall_offset=WALL, random=lambda: random, **kwargs)  # type: ignore[arg-type]
    return session, sender


def fire(session: RtcpSession) -> float:
    """Run the timer at its due time; return that time."""
    when = session.get_timer()
    assert when is not None
    session.handle_timer(when)
    return when


def rtp(seq: int, ts: int, ssrc: int = 0xBBBB, pt: int = 0, size: int = 160) -> RtpPacket:
    return RtpPacket(pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc, b"\x00" * size)


def test_report_times_are_randomised_around_the_interval() -> None:
    """Check the first report comes after half an interval times U(0.5, 1.5)
    and each next one an interval times U(0.5, 1.5) later (RFC 3550 6.2, 6.3.1)."""
    for r, first, step in ((0.0, 1.25, 2.5), (0.5, 2.5, 5.0), (0.999, 3.7475, 7.495)):
        session, _ = make(r)
        assert session.get_timer() is None  # not started: no timer
        session.start(100.0)
        assert abs(fire(session) - (100.0 + first)) < 1e-9
        assert abs(session.get_timer() - (100.0 + first + step)) < 1e-9  # type: ignore[operator]


def test_receiver_report_with_cname_while_not_sending() -> None:
    """Check a session that sent nothing sends RR + SDES CNAME, no blocks
    before anything was received."""
    session, _ = make()
    session.start(0.0)
    fire(session)
    [data] = session.datagrams_to_send()
    assert parse_rtcp(data) == [ReceiverReport(0xAAAA, ()), Sdes.cname(0xAAAA, "me@test")]
    assert session.datagrams_to_send() == [] and session.rtcp_sent == 1


def test_sender_report_while_sending_then_rr_two_reports_later() -> None:
    """Check an SR (counts, NTP and RTP timestamps of one instant) while we
    send, still an SR the report after (RFC 3550 6.4: sent since the report
    before last), then an RR."""
    session, sender = make()
    session.start(0.0)
    for _ in range(10):
        sender.next_packet(b"\xff" * 160, 0, 160)
    t1 = fire(session)
    [sr] = parse_rtcp(session.datagrams_to_send()[0])[:1]
    assert isinstance(sr, SenderReport)
    assert (sr.ssrc, sr.packet_count, sr.octet_count) == (0xAAAA, 10, 1600)
    assert sr.ntp_timestamp == ntp_from_unix(WALL + t1)
    assert sr.rtp_timestamp == sender.timestamp == 5000 + 1600
    t2 = fire(session)  # nothing sent since: the stream clock stands still
    [sr2] = parse_rtcp(session.datagrams_to_send()[0])[:1]
    assert isinstance(sr2, SenderReport) and sr2.packet_count == 10
    assert sr2.rtp_timestamp == 6600 + round((t2 - t1) * 8000)  # extrapolated
    fire(session)
    [rr] = parse_rtcp(session.datagrams_to_send()[0])[:1]
    assert isinstance(rr, ReceiverReport)


def test_statistics_of_received_rtp() -> None:
    """Check counts, loss (two missing sequence numbers) and zero jitter for
    perfectly paced packets, in the report block and in stats()."""
    session, _ = make()
    session.start(0.0)
    for i in range(100):
        if i in (40, 41):
            continue
        session.on_rtp_received(rtp(1000 + i, 160 * i), 0.02 * i)
    fire(session)
    report = parse_rtcp(session.datagrams_to_send()[0])[0]
    assert isinstance(report, ReceiverReport)
    [block] = report.reports
    assert (block.ssrc, block.cumulative_lost, block.highest_seq, block.jitter) == (0xBBBB, 2, 1099, 0)
    assert block.fraction_lost == (2 << 8) // 100
    stats = session.stats()
    assert (stats.packets_received, stats.bytes_received, stats.packets_lost) == (98, 98 * 160, 2)
    assert stats.fraction_lost == block.fraction_lost / 256
    assert stats.jitter_ms == 0.0 and stats.rtt_ms is None and stats.remote_packets_lost is None


def test_events_count_for_loss_not_for_jitter() -> None:
    """Check RFC 4733 packets (one timestamp per event) share the sequence
    space but leave the jitter at zero."""
    session, _ = make()
    session.event_pt = 101
    seq = 0
    for i in range(50):
        session.on_rtp_received(rtp(seq, 160 * i), 0.02 * i)
        seq += 1
        if i % 10 == 5:
            session.on_rtp_received(rtp(seq, 160 * i, pt=101, size=4), 0.02 * i + 0.01)
            seq += 1
    stats = session.stats()
    assert stats.jitter_ms == 0.0 and stats.packets_lost == 0 and stats.packets_received == 55


def test_jitter_in_milliseconds() -> None:
    """Check alternating 10 ms early/late arrivals give a jitter near 10 ms."""
    session, _ = make()
    for i in range(400):
        session.on_rtp_received(rtp(i, 160 * i), 0.02 * i + (0.01 if i % 2 else 0.0))
    assert 9.0 < session.stats().jitter_ms <= 10.0


def test_round_trip_time_and_remote_figures() -> None:
    """Check RTT = arrival - LSR - DLSR from the peer's RR about our SR,
    and the peer's loss and jitter read from its block."""
    session, sender = make()
    session.start(0.0)
    sender.next_packet(b"\xff" * 160, 0, 160)
    t = fire(session)
    sr = parse_rtcp(session.datagrams_to_send()[0])[0]
    assert isinstance(sr, SenderReport)
    block = ReportBlock(0xAAAA, 64, 7, 1234, 80, ntp_middle32(sr.ntp_timestamp), int(0.5 * 65536))
    other = ReportBlock(0xCCCC, 255, 99, 1, 1, 1, 1)  # about someone else: ignored
    session.receive(serialize_rtcp([ReceiverReport(0xBBBB, (other, block))]), t + 0.6)
    stats = session.stats()
    assert stats.rtt_ms is not None and abs(stats.rtt_ms - 100.0) < 0.1
    assert (stats.remote_fraction_lost, stats.remote_packets_lost, stats.remote_jitter_ms) == (0.25, 7, 10.0)
    assert stats.rtcp_received == 1


def test_negative_round_trip_is_ignored() -> None:
    """Check a block whose DLSR exceeds the elapsed time leaves the RTT unset."""
    session, _ = make()
    lsr = ntp_middle32(ntp_from_unix(WALL + 1.0))
    session.receive(serialize_rtcp([ReceiverReport(0xBBBB, (ReportBlock(0xAAAA, 0, 0, 0, 0, lsr, 65536),))]), 1.5)
    assert session.stats().rtt_ms is None and session.stats().remote_packets_lost == 0


def test_peer_sender_report_gives_lsr_and_dlsr() -> None:
    """Check the peer's SR is echoed in our next block (LSR, DLSR)."""
    session, _ = make()
    session.start(0.0)
    session.on_rtp_received(rtp(1, 0), 0.0)
    session.on_rtp_received(rtp(2, 160), 0.02)
    ntp = ntp_from_unix(WALL + 0.5)
    session.receive(serialize_rtcp([SenderReport(0xBBBB, ntp, 800, 2, 320), Bye((0xBBBB,))]), 1.0)
    assert session.remote_bye
    t = fire(session)
    report = parse_rtcp(session.datagrams_to_send()[0])[0]
    assert isinstance(report, ReceiverReport)
    assert report.reports[0].lsr == ntp_middle32(ntp)
    assert report.reports[0].dlsr == int((t - 1.0) * 65536)


def test_sender_report_of_an_unknown_source_is_ignored() -> None:
    session, _ = make()
    session.receive(serialize_rtcp([SenderReport(0xDDDD, 1, 2, 3, 4)]), 1.0)
    assert session.sources == {} and session.rtcp_received == 1


def test_malformed_rtcp_is_counted() -> None:
    """Check bad datagrams are counted, never raised, and prove nothing alive."""
    session, _ = make()
    session.set_inactivity_timeout(1.0, 0.0)
    for data in (b"", b"\x80", b"\x00\xc8\x00\x00", b"\x80\xc9\x00\x05\x00"):
        session.receive(data, 0.5)
    assert session.stats().rtcp_malformed == 4 and session.rtcp_received == 0
    assert session.get_timer() == 1.0


@given(st.binary(max_size=200))
def test_any_bytes_are_safe(data: bytes) -> None:
    session, _ = make()
    session.receive(data, 1.0)
    assert session.rtcp_received + session.rtcp_malformed == 1


def test_sources_are_capped() -> None:
    """Check only the four most recent SSRCs are tracked."""
    session, _ = make()
    for ssrc in range(1, 7):
        session.on_rtp_received(rtp(ssrc * 10, 0, ssrc=ssrc), float(ssrc))
    assert list(session.sources) == [3, 4, 5, 6]
    session.on_rtp_received(rtp(31, 160, ssrc=3), 7.0)
    assert list(session.sources) == [4, 5, 6, 3]


def test_inactivity_fires_once() -> None:
    """Check the timer fires timeout seconds after the last arrival, queues
    MediaTimedOut once and is then only the report timer."""
    session, _ = make()
    session.start(0.0)
    session.set_inactivity_timeout(1.0, 0.0)
    assert session.get_timer() == 1.0
    session.handle_timer(1.0)
    assert session.next_event() == MediaTimedOut(1.0) and session.next_event() is None
    assert session.get_timer() == 2.5  # the first report
    session.handle_timer(2.5)
    assert session.next_event() is None


def test_arrivals_push_the_deadline_back() -> None:
    """Check RTP and RTCP arrivals move the deadline (no re-arming per
    packet: the early timer finds activity and moves on)."""
    session, _ = make()
    session.set_inactivity_timeout(1.0, 0.0)
    session.on_rtp_received(rtp(1, 0), 0.4)
    session.handle_timer(1.0)
    assert session.next_event() is None and session.get_timer() == 1.4
    session.receive(serialize_rtcp([ReceiverReport(0xBBBB)]), 1.3)
    session.handle_timer(1.4)
    assert session.next_event() is None and session.get_timer() == 2.3


def test_hold_suspends_the_timeout() -> None:
    """Check no timeout while media is not expected, and a fresh period
    once it is again."""
    session, _ = make()
    session.set_inactivity_timeout(1.0, 0.0)
    session.set_media_expected(False, 0.5)
    assert session.get_timer() is None
    session.handle_timer(30.0)
    assert session.next_event() is None
    session.set_media_expected(True, 30.0)
    session.set_media_expected(True, 30.5)  # already expected: no change
    assert session.get_timer() == 31.0
    session.set_inactivity_timeout(0.0, 31.0)  # off
    assert session.get_timer() is None


def test_bye_at_close() -> None:
    """Check close() gives report + SDES + BYE once we sent something, and
    stops the timers."""
    session, sender = make()
    session.start(0.0)
    sender.next_packet(b"\xff", 0, 160)
    data = session.close(3.0)
    assert data is not None
    packets = parse_rtcp(data)
    assert isinstance(packets[0], SenderReport)
    assert packets[1:] == [Sdes.cname(0xAAAA, "me@test"), Bye((0xAAAA,))]
    assert session.close(4.0) is None and session.get_timer() is None
    session.handle_timer(10.0)
    assert session.datagrams_to_send() == [] and session.rtcp_sent == 1


def test_no_bye_from_a_silent_session() -> None:
    """Check RFC 3550 6.3.7: no BYE when we never sent RTP nor RTCP."""
    session, _ = make()
    session.start(0.0)
    assert session.close(1.0) is None


def test_default_cname_is_random() -> None:
    a = RtcpSession(RtpSender())
    b = RtcpSession(RtpSender())
    assert a.cname != b.cname and len(a.cname) == 16
    assert a.stats() == MediaStats(packets_sent=0)
