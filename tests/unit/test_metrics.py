"""The figures of engine.web.metrics, without sockets: the collector reads
plain counters at scrape time (sessions, conferences, RTP, clock, mixer,
SRTP, webhooks, security events), calls are counted once each with their
outcome, and the lower layers' counters feed it."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine import security_log

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
from engine.calls.call import Call, CallState, InternalCall
from engine.calls.conference import MediaGraph
from engine.media import rtcp_session
from engine.media.clock import MediaClock
from engine.transport.rtp_pace import TickPacer
from engine.transport.rtp_send import SendWorkers
from engine.media.rtcp_session import ClosedTotals, RtcpSession
from engine.transport.overload import OverloadBounds, OverloadDetector
from engine.media.rtp import RtpSender
from engine.runtime.histogram import INVITE_TO_ALERTING_BUCKETS, BucketHistogram
from engine.web.metrics import EngineMetrics, MetricsSources, call_outcome, parse_listen


def samples(metrics: EngineMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(metrics: EngineMetrics, name: str, **labels: str) -> float:
    return samples(metrics).get((name, tuple(sorted(labels.items()))), -1.0)


@dataclass
class Runtime:
    sessions: dict[str, object] = field(default_factory=dict)
    sessions_started: int = 0
    sessions_ended: int = 0
    scenario_errors: dict[str, int] = field(default_factory=dict)
    invite_to_alerting: BucketHistogram = field(
        default_factory=lambda: BucketHistogram(INVITE_TO_ALERTING_BUCKETS))


@dataclass
class Webhooks:
    outcomes: dict[str, int] = field(default_factory=lambda: {"delivered": 0, "retry": 0, "failed": 0})


def leg(received: int, sent: int, lost_seq_gap: int = 0) -> RtcpSession:
    """An RTCP session that accepted ``received`` packets (with a gap of
    ``lost_seq_gap`` sequence numbers after the fifth) and sent ``sent``."""
    out = RtpSender()
    for _ in range(sent):
        out.next_packet(b"\x00" * 160, 0, 160)
    session = RtcpSession(out)
    peer = RtpSender()
    for i in range(received + lost_seq_gap):
        packet = peer.next_packet(b"\x00" * 160, 0, 160)
        if not 5 <= i < 5 + lost_seq_gap:  # the gap after the source is valid (RFC 3550 A.1)
            session.on_rtp_received(packet, i * 0.02)
    return session


def isolated(**parts: Any) -> tuple[EngineMetrics, list[RtcpSession], ClosedTotals]:
    """Metrics over their own RTP registry, SRTP and security counts (not the process's)."""
    live: list[RtcpSession] = []
    closed = ClosedTotals()
    sources = MetricsSources(rtp_live=lambda: live, rtp_closed=closed,
                             srtp_refused={"srtp_auth_failed": 4, "srtp_replay": 1, "srtp_malformed": 0},
                             security_events={"banned": 2, "auth_failed": 7}, **parts)
    return EngineMetrics(sources), live, closed


def test_sessions_webhooks_security_and_srtp_are_read_at_scrape_time() -> None:
    """Check the collector shows the runtime's, the webhooks', the SRTP and
    the security counts as they are when scraped, with their labels."""
    runtime, webhooks = Runtime(), Webhooks()
    metrics, _, _ = isolated(runtime=runtime, webhooks=webhooks)
    assert value(metrics, "callbridge_sessions_live") == 0
    runtime.sessions["s1"] = object()
    runtime.sessions_started, runtime.sessions_ended = 4, 3
    runtime.scenario_errors["Answer"] = 2
    webhooks.outcomes.update(delivered=5, retry=2, failed=1)
    assert value(metrics, "callbridge_sessions_live") == 1
    assert value(metrics, "callbridge_sessions_started_total") == 4
    assert value(metrics, "callbridge_sessions_ended_total") == 3
    assert value(metrics, "callbridge_scenario_errors_total", rule="Answer") == 2
    assert value(metrics, "callbridge_webhook_attempts_total", outcome="delivered") == 5
    assert value(metrics, "callbridge_webhook_attempts_total", outcome="retry") == 2
    assert value(metrics, "callbridge_webhook_attempts_total", outcome="failed") == 1
    assert value(metrics, "callbridge_security_events_total", event="banned") == 2
    assert value(metrics, "callbridge_security_events_total", event="auth_failed") == 7
    assert value(metrics, "callbridge_srtp_refused_packets_total", reason="auth_failed") == 4
    assert value(metrics, "callbridge_srtp_refused_packets_total", reason="replay") == 1


def test_invite_to_alerting_is_exposed_as_a_cumulative_histogram() -> None:
    """Check the runtime's INVITE-to-CallAlerting histogram is read at scrape
    time as ``callbridge_invite_to_alerting_seconds``: cumulative buckets
    by ``le`` (Prometheus' float spelling), ``+Inf``, count and sum."""
    runtime = Runtime()
    metrics, _, _ = isolated(runtime=runtime)
    name = "callbridge_invite_to_alerting_seconds"
    assert value(metrics, f"{name}_count") == 0
    for seconds in (0.0004, 0.0009, 0.001, 0.004, 2.0):
        runtime.invite_to_alerting.observe(seconds)
    assert value(metrics, f"{name}_bucket", le="0.0003") == 0
    assert value(metrics, f"{name}_bucket", le="0.0005") == 1
    assert value(metrics, f"{name}_bucket", le="0.001") == 3
    assert value(metrics, f"{name}_bucket", le="0.005") == 4
    assert value(metrics, f"{name}_bucket", le="1.0") == 4
    assert value(metrics, f"{name}_bucket", le="+Inf") == 5
    assert value(metrics, f"{name}_count") == 5
    assert value(metrics, f"{name}_sum") == pytest.approx(2.0063)


def test_missing_parts_leave_their_figures_out() -> None:
    """Check metrics without a runtime, UA, clock or graph still render,
    without those families (the RTP and security ones stay)."""
    metrics, _, _ = isolated()
    names = {name for name, _ in samples(metrics)}
    assert "callbridge_sessions_live" not in names and "callbridge_conferences_live" not in names
    assert "callbridge_media_clock_ticks_total" not in names
    assert "callbridge_rtp_packets_received_total" in names
    assert all(name.startswith("callbridge_") for name in names)


def test_rtp_counts_add_live_and_closed_legs_and_never_go_down() -> None:
    """Check RTP packets are the closed legs' totals plus the live legs'
    counts, loss and jitter come from the live legs, and a leg that
    vanishes without closing does not make a counter go down."""
    metrics, live, closed = isolated()
    a, b = leg(received=10, sent=7), leg(received=8, sent=3, lost_seq_gap=2)
    live.extend([a, b])
    assert value(metrics, "callbridge_rtp_legs_live") == 2
    assert value(metrics, "callbridge_rtp_packets_received_total") == 18
    assert value(metrics, "callbridge_rtp_packets_sent_total") == 10
    assert value(metrics, "callbridge_rtp_packets_lost_total") == 2
    assert value(metrics, "callbridge_rtp_jitter_seconds_max") >= 0.0
    closed.add(a)  # a closes: its counts move to the totals
    live.remove(a)
    assert value(metrics, "callbridge_rtp_packets_received_total") == 18
    assert value(metrics, "callbridge_rtp_legs_live") == 1
    live.clear()  # b freed without closing: its 8 packets are lost to the count...
    assert value(metrics, "callbridge_rtp_packets_received_total") == 18  # ...but it holds
    live.append(leg(received=20, sent=0))
    assert value(metrics, "callbridge_rtp_packets_received_total") == 30


def test_rtcp_sessions_move_from_live_to_closed() -> None:
    """Check a new RTCP session is in rtcp_session.LIVE and, once closed
    (only the first close counts), its counts are in CLOSED."""
    session = leg(received=3, sent=2)
    assert session in rtcp_session.LIVE
    before = (rtcp_session.CLOSED.sessions, rtcp_session.CLOSED.packets_received,
              rtcp_session.CLOSED.packets_sent)
    session.close(1.0)
    session.close(2.0)
    assert session not in rtcp_session.LIVE
    after = (rtcp_session.CLOSED.sessions, rtcp_session.CLOSED.packets_received,
             rtcp_session.CLOSED.packets_sent)
    assert [x - y for x, y in zip(after, before)] == [1, 3, 2]


def test_clock_and_conferences() -> None:
    """Check the media clock's counts, the mixer's and the conferences with
    their sizes, as read from a clock and a graph."""
    clock = MediaClock()
    graph = MediaGraph(clock)
    metrics, _, _ = isolated(clock=clock, graph=graph)
    assert value(metrics, "callbridge_conferences_live") == 0
    assert value(metrics, "callbridge_conference_participants_max") == 0
    big, small = graph.create_conference("big"), graph.create_conference("small")
    for _ in range(3):
        big.add(InternalCall(direction="inbound", number="big", callerid="x"))
    small.add(InternalCall(direction="inbound", number="small", callerid="y"))
    clock.ticks, clock.skipped, clock.lateness_sum, clock.max_lateness = 100, 2, 0.25, 0.03
    graph.bridge.ticks, graph.bridge.busy_seconds = 40, 0.5
    assert value(metrics, "callbridge_conferences_live") == 2
    assert value(metrics, "callbridge_conference_participants") == 4
    assert value(metrics, "callbridge_conference_participants_max") == 3
    assert value(metrics, "callbridge_conferences_by_size", le="2") == 1
    assert value(metrics, "callbridge_conferences_by_size", le="5") == 2
    assert value(metrics, "callbridge_conferences_by_size", le="+Inf") == 2
    assert value(metrics, "callbridge_media_clock_ticks_total") == 100
    assert value(metrics, "callbridge_media_clock_skipped_ticks_total") == 2
    assert value(metrics, "callbridge_media_clock_lateness_seconds_total") == 0.25
    assert value(metrics, "callbridge_media_clock_lateness_max_seconds") == 0.03
    assert value(metrics, "callbridge_media_mixer_ticks_total") == 40
    assert value(metrics, "callbridge_media_mixer_busy_seconds_total") == 0.5
    assert value(metrics, "callbridge_media_send_worker_packets_total") == -1.0  # no send workers: left out


def test_send_workers() -> None:
    """Check the RTP send workers' figures, read from the clock's dispatch."""
    clock = MediaClock()
    workers = SendWorkers(1)  # not started: only its counters are read
    workers.packets, workers.fallbacks, workers.restarts, workers.lead = 5000, 2, 1, 0.004
    clock.dispatch = workers
    metrics, _, _ = isolated(clock=clock, send_workers=lambda: workers)
    assert value(metrics, "callbridge_media_send_worker_packets_total") == 5000
    assert value(metrics, "callbridge_media_send_worker_fallback_ticks_total") == 2
    assert value(metrics, "callbridge_media_send_worker_restarts_total") == 1
    assert value(metrics, "callbridge_media_send_worker_lead_seconds") == 0.004


def test_paced_sending() -> None:
    """Check the pacer's figures, read from the clock's dispatch, and no send worker's."""
    clock = MediaClock()
    pacer = TickPacer()
    pacer.packets, pacer.overruns, pacer.lead = 7000, 3, 0.006
    clock.dispatch = pacer
    metrics, _, _ = isolated(clock=clock)
    assert value(metrics, "callbridge_media_paced_packets_total") == 7000
    assert value(metrics, "callbridge_media_pace_overrun_ticks_total") == 3
    assert value(metrics, "callbridge_media_pace_lead_seconds") == 0.006
    assert value(metrics, "callbridge_media_send_worker_packets_total") == -1.0


def test_send_workers_given_up_are_still_counted_next_to_the_pacer() -> None:
    """Check the send workers' counters stay on /metrics once they were
    given up and a pacer took the clock over (counters never vanish)."""
    clock = MediaClock()
    workers = SendWorkers(1)  # not started
    workers.packets, workers.fallbacks, workers.restarts = 900, 4, 3
    workers.given_up = True
    pacer = TickPacer()
    pacer.packets = 50
    clock.dispatch = pacer
    metrics, _, _ = isolated(clock=clock, send_workers=lambda: workers)
    assert value(metrics, "callbridge_media_send_worker_restarts_total") == 3
    assert value(metrics, "callbridge_media_send_worker_packets_total") == 900
    assert value(metrics, "callbridge_media_paced_packets_total") == 50


async def test_calls_are_counted_once_at_start_and_end() -> None:
    """Check a tracked call counts as started and live, then once as ended
    with its outcome, however often it is handed over or ends."""
    metrics, _, _ = isolated()
    call = InternalCall(direction="outbound", number="100", callerid="me")
    metrics.on_call(call)
    metrics.on_call(call)  # a second session adopting it
    assert value(metrics, "callbridge_calls_started_total", kind="internal", direction="outbound") == 1
    assert value(metrics, "callbridge_calls_live", kind="internal", direction="outbound") == 1
    call._conclude(CallState.FAILED, 486, "Busy Here")
    call._conclude(CallState.FAILED, 500, "again")  # ended already: nothing
    assert value(metrics, "callbridge_calls_total", kind="internal", direction="outbound", outcome="busy") == 1
    assert value(metrics, "callbridge_calls_live", kind="internal", direction="outbound") == -1  # none left
    assert value(metrics, "callbridge_call_duration_seconds_count", kind="internal") == -1  # never connected


@dataclass
class FakeCall:
    direction: str
    end_code: int | None
    connected_at: float | None = None
    was_connected: bool = False


@pytest.mark.parametrize(("direction", "code", "connected", "outcome"), [
    ("inbound", 200, True, "connected"),
    ("outbound", 408, True, "connected"),
    ("inbound", 487, False, "cancelled"),
    ("outbound", 487, False, "cancelled"),
    ("inbound", 486, False, "rejected"),
    ("inbound", 603, False, "rejected"),
    ("inbound", None, False, "failed"),
    ("outbound", 486, False, "busy"),
    ("outbound", 600, False, "busy"),
    ("outbound", 480, False, "no_answer"),
    ("outbound", 408, False, "no_answer"),
    ("outbound", 503, False, "failed"),
    ("outbound", 404, False, "failed"),
])
def test_call_outcomes(direction: str, code: int | None, connected: bool, outcome: str) -> None:
    """Check each way a call ends maps to its outcome label."""
    call = FakeCall(direction, code, 1.0 if connected else None, connected)
    assert call_outcome(cast(Call, call)) == outcome


def test_security_events_are_counted_even_when_throttled(caplog: pytest.LogCaptureFixture) -> None:
    """Check security_event counts every event, and the throttled form
    counts every refusal while logging only the first of a period."""

    class Buckets:
        def __init__(self) -> None:
            self.seen: set[str] = set()

        def hit(self, key: str, now: float, *, rate: float, burst: int) -> bool:
            first = key not in self.seen
            self.seen.add(key)
            return first

    before = security_log.EVENT_COUNTS["test_event"]
    buckets = Buckets()
    with caplog.at_level(logging.WARNING, logger="callbridge.security"):
        security_log.security_event("test_event", "192.0.2.1")
        for _ in range(3):
            security_log.security_event_throttled(buckets, 0.0, "test_event", "192.0.2.1", cap="x")
    assert security_log.EVENT_COUNTS["test_event"] - before == 4
    assert len(caplog.messages) == 2


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    ("[::1]:9464", ("::1", 9464)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
])
def test_metrics_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    """Check HOST:PORT and [v6]:PORT are read."""
    assert parse_listen(text) == expected


@pytest.mark.parametrize(("text", "error"), [
    ("9464", "expected HOST:PORT"),
    (":9464", "expected HOST:PORT"),
    ("localhost:http", "the port 'http' is not a number"),
    ("localhost:70000", "the port must be 0-65535"),
])
def test_bad_metrics_listen_is_named(text: str, error: str) -> None:
    """Check a bad --metrics-listen is refused with what is wrong."""
    with pytest.raises(ValueError, match=error):
        parse_listen(text)


def test_readme_and_dashboard_name_only_real_metrics() -> None:
    """Check every metric the README's Metrics table and the Grafana
    dashboard name is one the engine exposes (paced, or with send workers),
    and the table lists them all."""

    @dataclass
    class Ua:
        calls: tuple[object, ...] = ()
        endpoint: Any = None

    exposed: set[str] = set()
    for dispatch in (TickPacer(), SendWorkers(1)):  # not started: only their counters are read
        clock = MediaClock()
        clock.dispatch = dispatch
        workers = dispatch if isinstance(dispatch, SendWorkers) else None
        endpoint = type("Endpoint", (), {
            "stats": {"received": 1, "overload_refused": 0, "overload_dropped": 0},
            "overload": OverloadDetector(OverloadBounds()), "receive_drops": lambda self: 0})()
        metrics, _, _ = isolated(runtime=Runtime(), ua=Ua(endpoint=endpoint), clock=clock,
                                 graph=MediaGraph(clock), webhooks=Webhooks(),
                                 send_workers=lambda w=workers: w)
        text = metrics.render().decode()
        families = {f.name for f in text_string_to_metric_families(text) if not f.name.endswith("_created")}
        exposed |= {f"{name}_total" if f"# TYPE {name}_total counter" in text else name for name in families}
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Metrics"):readme.index("## The CLI")]
    listed = set(re.findall(r"`(callbridge_[a-z_]+)`", table))
    assert listed == exposed
    dashboard = (ROOT / "deploy" / "grafana-callbridge.json").read_text()
    used = {re.sub(r"_(bucket|count|sum)$", "", n) for n in re.findall(r"callbridge_[a-z_]+", dashboard)}
    assert used - {"callbridge"} <= exposed
