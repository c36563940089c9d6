"""``callbridge_invite_to_alerting_seconds`` of a running engine (issue 17):
real SIP calls over UDP on 127.0.0.1 each add exactly one observation when
their scenario's ``CallAlerting`` handler is entered, and only those: a call
refused before any scenario runs (404) and a scenario's internal call into a
conference do not count. No figure here is timed: speed lives in
``bench/latency.py``."""

from __future__ import annotations

from e2e.phone import UdpUac

from engine.server import Engine

from .conftest import EngineFactory, PeerFactory
from .sip_peer import Dialog
from .test_metrics import RULES, SCENARIOS, answered_and_rejected, samples, scrape, value

NAME = "callbridge_invite_to_alerting_seconds"

# A caller's session that joins it to conference "confx" (a second session,
# alerted with an internal leg) and answers once that leg is connected.
FORWARD = """
from engine.runtime.scenario import AppEvents, CallEvents, VoxEngine

def on_alerting(e):
    leg = VoxEngine.call_conference("confx")
    leg.add_event_listener(CallEvents.Connected, lambda ev: e.call.answer())
    e.call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())

VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
"""

CONFX = """
from engine.runtime.scenario import AppEvents, VoxEngine

VoxEngine.add_event_listener(AppEvents.CallAlerting, lambda e: e.call.answer())
"""

MORE_RULES = RULES + """
  - {name: Fwd, pattern: "fwd", scenarios: [fwd]}
  - {name: Confx, pattern: "confx", scenarios: [confx]}
"""


async def latency(engine: Engine) -> dict[str, float]:
    """The histogram's samples from the ``--metrics-listen`` address: each
    ``le`` bucket, ``count`` and ``sum``."""
    status, text = await scrape(engine, port=engine.metrics_port)
    assert status == 200
    found = samples(text)
    out = {le: v for (name, labels), v in found.items() if name == f"{NAME}_bucket" for _, le in labels}
    out["count"] = value(found, f"{NAME}_count")
    out["sum"] = value(found, f"{NAME}_sum")
    return out


async def test_each_sip_call_that_reaches_its_scenario_counts_once(
        make_engine: EngineFactory, peers: PeerFactory) -> None:
    """Check 3 answered calls and 2 the scenario rejects (486) raise the
    histogram's count by exactly 5, ``+Inf`` equals the count, the buckets
    are cumulative, the sum grew, and /metrics shows ``_bucket`` lines."""
    engine = await make_engine(RULES, SCENARIOS, metrics_listen="127.0.0.1:0")
    before = await latency(engine)
    assert before["count"] == 0 and before["+Inf"] == 0
    await answered_and_rejected(engine, peers)
    after = await latency(engine)
    assert after["count"] == 5
    assert after["+Inf"] == 5
    assert after["sum"] > 0.0
    counts = [after[le] for le in sorted((k for k in after if k not in ("count", "sum", "+Inf")), key=float)]
    assert len(counts) == 19 and counts == sorted(counts)
    _, text = await scrape(engine, port=engine.metrics_port)
    assert f'{NAME}_bucket{{le="0.002"}}' in text and f"# TYPE {NAME} histogram" in text


async def test_a_call_refused_before_any_scenario_does_not_count(
        make_engine: EngineFactory, peers: PeerFactory) -> None:
    """Check an INVITE to a number no rule takes gets 404 and leaves the
    count where it was, while a following call to a scenario adds one
    (so the 404 was not merely slower to be counted)."""
    engine = await make_engine(RULES, SCENARIOS, metrics_listen="127.0.0.1:0")
    peer = await peers.udp(engine)
    Dialog(peer, f"sip:nobody@127.0.0.1:{engine.ua.port}").invite()
    await peer.expect(404, method="INVITE")
    assert (await latency(engine))["count"] == 0
    Dialog(peer, f"sip:busy@127.0.0.1:{engine.ua.port}").invite()
    await peer.expect(486, method="INVITE")
    assert (await latency(engine))["count"] == 1


async def test_an_internal_call_into_a_conference_does_not_count(make_engine: EngineFactory) -> None:
    """Check a SIP call whose scenario calls a conference session counts
    once: the conference session's CallAlerting (an internal leg, no
    INVITE) is not an observation, though its handler ran (the caller was
    answered only after the conference answered its leg)."""
    scenarios = {**SCENARIOS, "fwd": FORWARD, "confx": CONFX}
    engine = await make_engine(MORE_RULES, scenarios, metrics_listen="127.0.0.1:0")
    uac = UdpUac(engine.ua.port, 40000, "fwd")
    try:
        await uac.invite()
        assert engine.runtime.sessions_started == 2  # the caller's and the conference's
        assert (await latency(engine))["count"] == 1
        await uac.bye()
    finally:
        uac.close()
