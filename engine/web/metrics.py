"""``GET /metrics``: the engine's figures in Prometheus' text format
(README "Metrics" lists every one; every name starts ``callbridge_``).

Theory of operation
-------------------
Two kinds of figures, one registry per engine (never the process-global
one, so that two engines in one process, as in the tests, do not mix):

- Events counted as they happen, with ``prometheus-client``'s
  :class:`~prometheus_client.Counter` and
  :class:`~prometheus_client.Histogram`: a call that starts and ends (the
  runtime's :class:`~engine.runtime.records.CallRecords` hands each tracked
  call to :meth:`EngineMetrics.on_call`, which watches its end). That is a
  few operations per call, none per packet.
- Everything else is read when scraped, by :class:`EngineCollector` (a
  custom collector): live calls and sessions, conferences and their sizes,
  the latency from a SIP INVITE to its scenario's ``CallAlerting``
  handler (:class:`~engine.runtime.histogram.BucketHistogram`, filled by
  the runtime), the RTP counts that the media code keeps anyway
  (:data:`engine.media.rtcp_session.LIVE` and
  :data:`~engine.media.rtcp_session.CLOSED`), the media clock's and the
  mixer's tick counts, SRTP refusals, webhook attempts, security events,
  SIP messages. Lower layers keep plain integers and never import this
  module; nothing calls into ``prometheus-client`` per packet.

Access is closed by default: on the main HTTP port ``/metrics`` needs an
API key with the ``metrics`` scope (or ``admin``), sent like the API's
(``Authorization: Bearer KEYID.SECRET``); ``--metrics-listen HOST:PORT``
serves it without a key on a separate address of the operator's choosing
(:func:`create_metrics_app`), off by default.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.calls.call import Call
from engine.media import rtcp_session, srtp
from engine.security_log import EVENT_COUNTS
from engine.transport.rtp_pace import TickPacer
from engine.web.api import _CHALLENGE, _credentials
from engine.web.errors import ApiError

__all__ = ["CONTENT_TYPE", "EngineCollector", "EngineMetrics", "MetricsSources", "call_outcome",
           "create_metrics_app", "parse_listen", "scrape"]

logger = logging.getLogger(__name__)

#: Prometheus' text exposition format, version 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: The API key scope that may scrape ``/metrics`` on the main port.
SCOPE = "metrics"

#: Seconds; interarrival jitter of a call's received RTP at its end (RFC 3550 A.8).
JITTER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)
#: Share of the packets the peer sent that never arrived, over a whole call.
LOSS_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
#: Seconds a connected call lasted.
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


def call_outcome(call: Call) -> str:
    """How ``call`` ended, as the ``outcome`` label of ``callbridge_calls_total``:
    ``connected`` (it was answered), ``cancelled`` (487: the caller gave
    up, or we did), ``rejected`` (an inbound call we refused with a final
    4xx-6xx), ``busy`` (486, 600) and ``no_answer`` (408, 480) for outbound
    calls, else ``failed``."""
    if call.connected_at is not None or call.was_connected:
        return "connected"
    code = call.end_code
    if code == 487:
        return "cancelled"
    if call.direction == "inbound":
        return "rejected" if code is not None and 400 <= code <= 699 else "failed"
    if code in (486, 600):
        return "busy"
    if code in (408, 480):
        return "no_answer"
    return "failed"


@dataclass
class MetricsSources:
    """Where :class:`EngineCollector` reads; each part may be missing
    (``None``: its figures are left out).

    :param runtime: the scenario runtime (``sessions``, ``sessions_started``,
        ``sessions_ended``, ``scenario_errors``, ``invite_to_alerting``).
    :param ua: the SIP user agent (``calls``, ``endpoint.stats``).
    :param clock: the media clock (``ticks``, ``skipped``, ``lateness_sum``, ``max_lateness``,
        and its ``dispatch``'s figures when that is a pacer).
    :param send_workers: returns the engine's RTP send workers (or ``None``),
        read also once they were given up and a pacer took the clock over.
    :param graph: the media graph (``conferences``, ``bridge.ticks``, ``bridge.busy_seconds``).
    :param webhooks: the webhook dispatcher (``outcomes``).
    """

    runtime: Any = None
    ua: Any = None
    clock: Any = None
    graph: Any = None
    webhooks: Any = None
    send_workers: Callable[[], Any] = field(default=lambda: None)
    #: RTP counts: the live RTCP sessions and the closed ones' totals.
    rtp_live: Callable[[], Iterable[rtcp_session.RtcpSession]] = field(
        default=lambda: list(rtcp_session.LIVE))
    rtp_closed: rtcp_session.ClosedTotals = field(default_factory=lambda: rtcp_session.CLOSED)
    srtp_refused: dict[str, int] = field(default_factory=lambda: srtp.TOTALS)
    security_events: dict[str, int] = field(default_factory=lambda: EVENT_COUNTS)


class EngineCollector(Collector):
    """The figures read when scraped (see the module notes). RTP counters
    never go down: a leg freed without closing (its counts then lost) holds
    the counter where it was until new packets pass it."""

    def __init__(self, sources: MetricsSources, live_calls: Callable[[], Iterable[Call]]) -> None:
        self.sources = sources
        self.live_calls = live_calls
        self._rtp_high: dict[str, int] = {}

    def collect(self) -> Iterator[Metric]:
        yield from self._calls()
        yield from self._sessions()
        yield from self._conferences()
        yield from self._rtp()
        yield from self._clock()
        yield from self._security()

    # -- calls, sessions, conferences ---------------------------------------------

    def _calls(self) -> Iterator[Metric]:
        live = GaugeMetricFamily("callbridge_calls_live", "Calls with a record, not ended yet",
                                 labels=["kind", "direction"])
        counts: dict[tuple[str, str], int] = {}
        for call in self.live_calls():
            if not call.state.ended:
                key = (call.kind, call.direction)
                counts[key] = counts.get(key, 0) + 1
        for (kind, direction), n in sorted(counts.items()):
            live.add_metric([kind, direction], n)
        yield live
        ua = self.sources.ua
        if ua is not None:
            yield GaugeMetricFamily("callbridge_sip_calls_live",
                                    "SIP calls (dialogs) the user agent holds, records or not",
                                    value=sum(1 for c in list(ua.calls) if not c.state.ended))
            stats = getattr(ua.endpoint, "stats", None) if ua.endpoint is not None else None
            if stats:
                sip = CounterMetricFamily("callbridge_sip_messages",
                                          "SIP messages by what became of them", labels=["result"])
                for result, n in sorted(stats.items()):
                    sip.add_metric([result], n)
                yield sip
            overload = getattr(ua.endpoint, "overload", None) if ua.endpoint is not None else None
            if stats and overload is not None:
                yield from _overload(ua.endpoint, stats, overload)

    def _sessions(self) -> Iterator[Metric]:
        runtime = self.sources.runtime
        if runtime is None:
            return
        yield GaugeMetricFamily("callbridge_sessions_live", "Scenario sessions running",
                                value=len(runtime.sessions))
        yield CounterMetricFamily("callbridge_sessions_started", "Scenario sessions started",
                                  value=runtime.sessions_started)
        yield CounterMetricFamily("callbridge_sessions_ended", "Scenario sessions ended",
                                  value=runtime.sessions_ended)
        errors = CounterMetricFamily("callbridge_scenario_errors",
                                     "Sessions a scenario exception ended, by rule", labels=["rule"])
        for rule, n in sorted(runtime.scenario_errors.items()):
            errors.add_metric([rule], n)
        yield errors
        latency = runtime.invite_to_alerting
        yield HistogramMetricFamily(
            "callbridge_invite_to_alerting_seconds",
            "From a SIP INVITE read by the transport to its scenario's CallAlerting handler entered",
            buckets=[("+Inf" if le == math.inf else repr(le), n) for le, n in latency.cumulative()], sum_value=latency.sum)

    def _conferences(self) -> Iterator[Metric]:
        graph = self.sources.graph
        if graph is None:
            return
        sizes = [len(conf.endpoints) for conf in graph.conferences]
        yield GaugeMetricFamily("callbridge_conferences_live", "Conferences open", value=len(sizes))
        yield GaugeMetricFamily("callbridge_conference_participants",
                                "Endpoints (calls, linked conferences) in all conferences", value=sum(sizes))
        yield GaugeMetricFamily("callbridge_conference_participants_max",
                                "Endpoints in the largest conference", value=max(sizes, default=0))
        size = GaugeMetricFamily("callbridge_conferences_by_size",
                                 "Conferences open with at most `le` endpoints (cumulative)", labels=["le"])
        for le in (2, 5, 10, 25, 50, 100):
            size.add_metric([str(le)], sum(1 for s in sizes if s <= le))
        size.add_metric(["+Inf"], len(sizes))
        yield size
        bridge = graph.bridge
        yield CounterMetricFamily("callbridge_media_mixer_ticks", "Frames the conference mixer ran",
                                  value=bridge.ticks)
        yield CounterMetricFamily("callbridge_media_mixer_busy_seconds",
                                  "Seconds the mixer spent on its frames (rate: share of one core)",
                                  value=bridge.busy_seconds)

    # -- media --------------------------------------------------------------------

    def _monotonic(self, name: str, value: int) -> int:
        high = max(self._rtp_high.get(name, 0), value)
        self._rtp_high[name] = high
        return high

    def _rtp(self) -> Iterator[Metric]:
        closed = self.sources.rtp_closed
        sent, received, lost = closed.packets_sent, closed.packets_received, closed.packets_lost
        jitters: list[float] = []
        fractions: list[float] = []
        legs = 0
        for session in self.sources.rtp_live():
            if session.closed:
                continue
            # The fields MediaStats is made of, read directly: a scrape of
            # thousands of legs runs on the event loop, between media ticks.
            legs += 1
            sent += session.sender.packet_count
            received += session.packets_received
            for source in session.sources.values():
                if source.lost > 0:
                    lost += source.lost
            current = session._current
            if current is not None and session.packets_received:
                jitters.append(current.jitter / session.clock_rate)
                fractions.append(current.fraction_lost / 256)
        yield GaugeMetricFamily("callbridge_rtp_legs_live", "RTP streams (SIP call legs) open", value=legs)
        for name, doc, value in (
            ("callbridge_rtp_packets_sent", "RTP packets sent", sent),
            ("callbridge_rtp_packets_received", "RTP packets received and accepted", received),
            ("callbridge_rtp_packets_lost", "RTP packets peers sent that never arrived (RFC 3550 A.3)", lost),
        ):
            yield CounterMetricFamily(name, doc, value=self._monotonic(name, value))
        yield GaugeMetricFamily("callbridge_rtp_jitter_seconds_max",
                                "Largest interarrival jitter among live receiving legs (RFC 3550 A.8)",
                                value=max(jitters, default=0.0))
        yield GaugeMetricFamily("callbridge_rtp_jitter_seconds_mean",
                                "Mean interarrival jitter of live receiving legs",
                                value=sum(jitters) / len(jitters) if jitters else 0.0)
        yield GaugeMetricFamily("callbridge_rtp_fraction_lost_max",
                                "Largest fraction lost of a live leg over its last report interval",
                                value=max(fractions, default=0.0))
        refused = CounterMetricFamily("callbridge_srtp_refused_packets",
                                      "SRTP packets refused, by reason", labels=["reason"])
        for reason, n in sorted(self.sources.srtp_refused.items()):
            refused.add_metric([reason.removeprefix("srtp_")], n)
        yield refused

    def _clock(self) -> Iterator[Metric]:
        clock = self.sources.clock
        if clock is None:
            return
        yield CounterMetricFamily("callbridge_media_clock_ticks", "Media clock ticks (20 ms frames)",
                                  value=clock.ticks)
        yield CounterMetricFamily("callbridge_media_clock_skipped_ticks",
                                  "Frames dropped because the loop was blocked too long", value=clock.skipped)
        yield CounterMetricFamily("callbridge_media_clock_lateness_seconds",
                                  "Seconds ticks fired late, summed (divide by ticks for the mean)",
                                  value=clock.lateness_sum)
        yield GaugeMetricFamily("callbridge_media_clock_lateness_max_seconds",
                                "Latest a tick fired since start", value=clock.max_lateness)
        yield GaugeMetricFamily("callbridge_media_clock_sinks", "Streams the clock ticks now", value=len(clock))
        dispatch = clock.dispatch
        if isinstance(dispatch, TickPacer):  # frames sent at their due time by the loop
            yield CounterMetricFamily("callbridge_media_paced_packets",
                                      "RTP datagrams of the media clock held and sent at their tick's due time",
                                      value=dispatch.packets)
            yield CounterMetricFamily("callbridge_media_pace_overrun_ticks",
                                      "Ticks whose frames were ready only after their due time",
                                      value=dispatch.overruns)
            yield GaugeMetricFamily("callbridge_media_pace_lead_seconds",
                                    "How far ahead of its due time the clock prepares a tick", value=dispatch.lead)
        workers = self.sources.send_workers()  # also once given up, when a pacer has the clock
        if workers is not None:
            yield CounterMetricFamily("callbridge_media_send_worker_packets",
                                      "RTP datagrams of the media clock sent by the send workers",
                                      value=workers.packets)
            yield CounterMetricFamily("callbridge_media_send_worker_fallback_ticks",
                                      "Ticks the engine sent itself because a send worker died or fell behind",
                                      value=workers.fallbacks)
            yield CounterMetricFamily("callbridge_media_send_worker_restarts",
                                      "Send workers started again after one died", value=workers.restarts)
            yield GaugeMetricFamily("callbridge_media_send_worker_lead_seconds",
                                    "How far ahead of its due time the clock prepares a tick", value=workers.lead)

    # -- webhooks, security ----------------------------------------------------------

    def _security(self) -> Iterator[Metric]:
        webhooks = self.sources.webhooks
        if webhooks is not None:
            attempts = CounterMetricFamily(
                "callbridge_webhook_attempts",
                "Webhook delivery attempts: delivered, retry (failed, retried), failed (given up)",
                labels=["outcome"])
            for outcome, n in sorted(webhooks.outcomes.items()):
                attempts.add_metric([outcome], n)
            yield attempts
        events = CounterMetricFamily("callbridge_security_events",
                                     "Security events (refusals, bans, rate limits) by name", labels=["event"])
        for event, n in sorted(self.sources.security_events.items()):
            events.add_metric([event], n)
        yield events


def _overload(endpoint: Any, stats: dict[str, int], overload: Any) -> Iterator[Metric]:
    """The SIP endpoint's overload figures (engine.transport.overload)."""
    yield CounterMetricFamily("callbridge_sip_overload_refused",
                              "New INVITEs answered 503 while overloaded", value=stats["overload_refused"])
    yield CounterMetricFamily("callbridge_sip_overload_dropped",
                              "New INVITEs dropped unparsed while overloaded", value=stats["overload_dropped"])
    yield CounterMetricFamily("callbridge_sip_overload_episodes", "Overload episodes begun",
                              value=overload.episodes)
    yield GaugeMetricFamily("callbridge_sip_overload_level",
                            "0 normal, 1 refusing new INVITEs, 2 dropping them", value=int(overload.level))
    yield GaugeMetricFamily("callbridge_sip_loop_lag_seconds",
                            "Smoothed lateness of the event loop, as the overload probe sees it",
                            value=overload.lag)
    yield GaugeMetricFamily("callbridge_sip_udp_receive_queue",
                            "Fill (0-1) of the fullest SIP UDP receive buffer at the last probe",
                            value=overload.queue)
    yield GaugeMetricFamily("callbridge_rtp_read_backlog_bytes",
                            "Bytes waiting for the RTP readers on the median of the sampled calls' sockets"
                            " at the last overload probe", value=overload.media_backlog)
    yield GaugeMetricFamily("callbridge_rtp_late_legs",
                            "Share (0-1) of the calls whose audio came late for its tick in each of the last"
                            " two whole seconds (0 under 50 calls), at the last overload probe",
                            value=overload.late_legs)
    yield CounterMetricFamily("callbridge_sip_udp_receive_dropped",
                              "Datagrams the kernel dropped on full SIP UDP receive buffers",
                              value=endpoint.receive_drops())


class EngineMetrics:
    """One engine's registry: counters of calls (fed by :meth:`on_call`) and
    the :class:`EngineCollector` of everything read at scrape time.

    :param sources: what the collector reads.
    """

    def __init__(self, sources: MetricsSources | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._live: weakref.WeakSet[Call] = weakref.WeakSet()
        self._children: dict[tuple[Any, ...], Any] = {}
        self.collector = EngineCollector(sources or MetricsSources(), lambda: list(self._live))
        self.registry.register(self.collector)
        self.calls_started = Counter(
            "callbridge_calls_started", "Calls that got a record (rate(): calls per second)",
            ["kind", "direction"], registry=self.registry)
        self.calls = Counter(
            "callbridge_calls", "Calls ended, by kind, direction and outcome",
            ["kind", "direction", "outcome"], registry=self.registry)
        self.call_duration = Histogram(
            "callbridge_call_duration_seconds", "How long connected calls lasted",
            ["kind"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.call_jitter = Histogram(
            "callbridge_call_jitter_seconds", "Interarrival jitter of a call's received RTP at its end",
            buckets=JITTER_BUCKETS, registry=self.registry)
        self.call_loss = Histogram(
            "callbridge_call_packet_loss_ratio", "Share of a call's incoming RTP packets lost",
            buckets=LOSS_BUCKETS, registry=self.registry)

    def on_call(self, call: Call) -> None:
        """Count ``call`` as started, and as ended when it ends (once each)."""
        if call in self._live:
            return
        self._live.add(call)
        self._child(self.calls_started, call.kind, call.direction).inc()
        call.on_ended.append(self._ended)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: prometheus-client checks
        and locks on each ``labels()`` call, twice a call's life. The label
        values are the few kinds, directions and outcomes."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _ended(self, call: Call) -> None:
        self._live.discard(call)
        self._child(self.calls, call.kind, call.direction, call_outcome(call)).inc()
        if call.connected_at is not None:
            self._child(self.call_duration, call.kind).observe(max(0.0, time.time() - call.connected_at))
        try:
            stats = call.media_stats()
        except Exception:  # statistics must never break a call's end
            logger.exception("media statistics of %s failed", call.id)
            return
        if stats.packets_received:
            self.call_jitter.observe(stats.jitter_ms / 1000.0)
            expected = stats.packets_received + stats.packets_lost
            self.call_loss.observe(stats.packets_lost / expected if expected else 0.0)

    def render(self) -> bytes:
        """The text exposition of every figure."""
        return generate_latest(self.registry)


# -- HTTP -----------------------------------------------------------------------------


def _metrics_of(engine: Any) -> EngineMetrics:
    metrics = getattr(engine, "metrics", None)
    if not isinstance(metrics, EngineMetrics):
        raise ApiError(503, "unavailable", "the engine is not started")
    return metrics


def _response(metrics: EngineMetrics) -> web.Response:
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE,
                                                        "Cache-Control": "no-store"})


async def scrape(request: web.Request, engine: Any) -> web.Response:
    """``GET /metrics`` on the main port: needs an API key with the
    ``metrics`` (or ``admin``) scope, like the API's routes. A refusal says
    nothing about the engine."""
    header = request.headers.get("Authorization")
    if not header:
        raise ApiError(401, "unauthorized", "send an API key: Authorization: Bearer KEYID.SECRET",
                       headers=_CHALLENGE)
    store = getattr(engine, "store", None)
    if store is None:
        raise ApiError(503, "unavailable", "the store is not open")
    creds = _credentials(header)
    key = store.verify_api_key(*creds) if creds is not None else None
    if key is None:
        raise ApiError(401, "invalid_credentials", "unknown API key or wrong secret", headers=_CHALLENGE)
    if SCOPE not in key.scopes and "admin" not in key.scopes:
        raise ApiError(403, "forbidden", f"this API key lacks the {SCOPE!r} scope")
    return _response(_metrics_of(engine))


def create_metrics_app(engine: Any) -> web.Application:
    """The ``--metrics-listen`` application: ``GET /metrics`` without a key
    (the address is what protects it: a loopback or a monitoring network)."""

    async def metrics(request: web.Request) -> web.Response:
        try:
            return _response(_metrics_of(engine))
        except ApiError as exc:
            return web.Response(status=exc.status, text=exc.message)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) of ``--metrics-listen``.

    :raises ValueError: naming what is wrong.
    """
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"--metrics-listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"--metrics-listen {value!r}: the port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"--metrics-listen {value!r}: the port must be 0-65535")
    return host, port
