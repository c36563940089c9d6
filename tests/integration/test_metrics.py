"""``GET /metrics`` of a running engine (engine.web.metrics): who may
scrape it, calls counted once each with the right labels, and the media
figures of a live conference."""

from __future__ import annotations

import asyncio

import aiohttp
from e2e.phone import RtpPhone, UdpUac
from prometheus_client.parser import text_string_to_metric_families

from engine.server import Engine

from .api_client import new_key
from .conftest import EngineFactory, PeerFactory, wait_until
from .sip_peer import Dialog
from .test_web_conference import ROOM, ROOM_GATE

RULES = """
rules:
  - {name: Talk, pattern: "talk", scenarios: [talk]}
  - {name: Busy, pattern: "busy", scenarios: [busy]}
  - {name: Gate, pattern: "room", scenarios: [gate]}
  - {name: Conf, pattern: "conf_room", scenarios: [room]}
"""

TALK = """
from engine.runtime.scenario import AppEvents, CallEvents, VoxEngine

async def on_alerting(e):
    e.call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    await e.call.answer()

VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
"""

BUSY = """
from engine.runtime.scenario import AppEvents, VoxEngine

def on_alerting(e):
    e.call.reject(486)
    VoxEngine.terminate()

VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
"""

# The conference and its gatekeeper: test_web_conference's.
SCENARIOS = {"talk": TALK, "busy": BUSY, "room": ROOM, "gate": ROOM_GATE}


async def scrape(engine: Engine, key: str | None = None, port: int | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port or engine.http_port}/metrics", headers=headers) as resp:
            return resp.status, await resp.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def sample(engine: Engine, name: str, **labels: str) -> float:
    assert engine.metrics is not None
    return engine.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_metrics_are_closed_without_a_metrics_key(make_engine: EngineFactory) -> None:
    """Check an anonymous scrape of the HTTP port gets 401 with no figure in
    it, a wrong secret 401, a key of another scope 403, and keys with the
    metrics or admin scope the exposition."""
    engine = await make_engine(RULES, SCENARIOS)
    status, body = await scrape(engine)
    assert status == 401 and "callbridge_" not in body and "unauthorized" in body
    metrics_key = new_key(engine, "metrics")
    status, body = await scrape(engine, metrics_key.split(".")[0] + ".wrong")
    assert status == 401 and "callbridge_" not in body
    status, body = await scrape(engine, new_key(engine, "calls"))
    assert status == 403 and "callbridge_" not in body
    for key in (metrics_key, new_key(engine, "admin")):
        status, body = await scrape(engine, key)
        assert status == 200 and "callbridge_sessions_live 0.0" in body
    status, _ = await scrape(engine, metrics_key.replace(".", ":"))  # neither Bearer form nor Basic
    assert status == 401


async def test_metrics_listen_serves_without_a_key(make_engine: EngineFactory) -> None:
    """Check --metrics-listen serves /metrics without a key on its own
    address, while the HTTP port still refuses an anonymous scrape."""
    engine = await make_engine(RULES, SCENARIOS, metrics_listen="127.0.0.1:0")
    assert engine.metrics_port is not None and engine.metrics_port != engine.http_port
    status, body = await scrape(engine, port=engine.metrics_port)
    assert status == 200 and "callbridge_calls_live" in body
    status, body = await scrape(engine)
    assert status == 401 and "callbridge_" not in body


async def test_metrics_listen_is_checked(make_engine: EngineFactory) -> None:
    """Check a --metrics-listen without a port stops start-up with an error naming it."""
    from engine.server import StartupError

    try:
        await make_engine(RULES, SCENARIOS, metrics_listen="localhost")
    except StartupError as exc:
        assert "--metrics-listen 'localhost': expected HOST:PORT" in str(exc)
    else:
        raise AssertionError("started with a bad --metrics-listen")


async def answered_and_rejected(engine: Engine, peers: PeerFactory, answered: int = 3, rejected: int = 2) -> None:
    """Place ``answered`` calls to ``talk`` (answered, then BYE) and
    ``rejected`` to ``busy`` (486), one after the other, over UDP."""
    for _ in range(answered):
        uac = UdpUac(engine.ua.port, 40000, "talk")
        try:
            await uac.invite()
            await uac.bye()
        finally:
            uac.close()
    for _ in range(rejected):
        peer = await peers.udp(engine)
        Dialog(peer, f"sip:busy@127.0.0.1:{engine.ua.port}").invite()
        await peer.expect(486, method="INVITE")


async def test_calls_are_counted_once_with_their_labels(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """Check 3 answered calls and 2 rejected ones raise callbridge_calls_total
    by exactly 3 (sip, inbound, connected) and 2 (rejected), and
    callbridge_calls_started_total by 5."""
    engine = await make_engine(RULES, SCENARIOS)
    key = new_key(engine, "metrics")
    _, text = await scrape(engine, key)
    before = samples(text)
    connected = dict(kind="sip", direction="inbound", outcome="connected")
    rejected = dict(kind="sip", direction="inbound", outcome="rejected")
    await answered_and_rejected(engine, peers)
    assert await wait_until(lambda: sample(engine, "callbridge_calls_total", **connected) == 3
                            and sample(engine, "callbridge_calls_total", **rejected) == 2)
    _, text = await scrape(engine, key)
    after = samples(text)
    assert value(after, "callbridge_calls_total", **connected) - value(before, "callbridge_calls_total",
                                                                        **connected) == 3
    assert value(after, "callbridge_calls_total", **rejected) - value(before, "callbridge_calls_total",
                                                                       **rejected) == 2
    ended = sum(v for (name, _), v in after.items() if name == "callbridge_calls_total")
    assert ended == 5  # no other outcome counted
    assert value(after, "callbridge_calls_started_total", kind="sip", direction="inbound") == 5
    assert value(after, "callbridge_call_duration_seconds_count", kind="sip") == 3
    assert value(after, "callbridge_calls_live", kind="sip", direction="inbound") == 0
    assert value(after, "callbridge_sessions_started_total") == 5


async def test_conference_media_figures(make_engine: EngineFactory) -> None:
    """Check three phones talking in one conference show in the figures:
    one conference of 3, 3 live calls, RTP packets received and sent
    rising between two scrapes, loss, jitter and clock lateness present and
    not negative, the mixer ticking; after the hang-ups no live call is left."""
    engine = await make_engine(RULES, SCENARIOS)
    key = new_key(engine, "metrics")
    phones = [RtpPhone(engine.ua.port, "room", f) for f in (500.0, 700.0, 900.0)]
    try:
        for phone in phones:
            await phone.call()
        assert await wait_until(lambda: all(len(p.packets) > 25 for p in phones), timeout=15)
        _, text = await scrape(engine, key)
        first = samples(text)
        await asyncio.sleep(0.3)
        _, text = await scrape(engine, key)
        second = samples(text)
        assert value(second, "callbridge_conferences_live") == 1
        assert value(second, "callbridge_conference_participants") == 3
        assert value(second, "callbridge_conference_participants_max") == 3
        assert value(second, "callbridge_conferences_by_size", le="2") == 0
        assert value(second, "callbridge_conferences_by_size", le="5") == 1
        assert value(second, "callbridge_calls_live", kind="sip", direction="inbound") == 3
        # RTP figures are the process's (every engine of it): at least these 3 legs
        assert value(second, "callbridge_rtp_legs_live") >= 3
        for name in ("callbridge_rtp_packets_received_total", "callbridge_rtp_packets_sent_total",
                     "callbridge_media_clock_ticks_total", "callbridge_media_mixer_ticks_total"):
            assert value(second, name) > value(first, name) > 0, name
        for name in ("callbridge_rtp_packets_lost_total", "callbridge_rtp_jitter_seconds_max",
                     "callbridge_rtp_jitter_seconds_mean", "callbridge_media_clock_lateness_seconds_total",
                     "callbridge_media_clock_lateness_max_seconds", "callbridge_media_mixer_busy_seconds_total"):
            assert ("callbridge_" in name and value(second, name) >= 0.0
                    and any(k[0] == name for k in second)), name
        assert value(second, "callbridge_rtp_jitter_seconds_max") < 1.0  # loopback: milliseconds
        for phone in phones:
            await phone.hang_up()
        assert await wait_until(lambda: sample(engine, "callbridge_calls_total", kind="sip",
                                               direction="inbound", outcome="connected") == 3)
        _, text = await scrape(engine, key)
        third = samples(text)
        assert value(third, "callbridge_calls_live", kind="sip", direction="inbound") == 0
        # the closed legs' counts stay in the counters
        assert value(third, "callbridge_rtp_packets_received_total") >= value(
            second, "callbridge_rtp_packets_received_total")
        assert value(third, "callbridge_call_jitter_seconds_count") == 3
    finally:
        for phone in phones:
            await phone.close()
