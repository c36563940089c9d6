"""End-to-end media routing with real SIP callers and real RTP.

Each caller (:class:`tests.e2e.phone.RtpPhone`) sends its own tone as PCMU
paced at 20 ms and keeps what it receives. The callers reach one scenario
session the way the canonical application does: their own session answers,
calls the conference session (``VoxEngine.call_conference``) and joins its
call to that internal leg with ``send_media_between``; the conference
session then routes the internal legs. What each caller hears is checked
with Goertzel filters on the RTP it received.
"""

from __future__ import annotations

import asyncio

import pytest

from logs import session_logs, wait_for_log

from .phone import RtpPhone, tone_level

pytestmark = pytest.mark.e2e

RULES = """
rules:
  - {name: Room, pattern: "room_.*", scenarios: [room]}
  - {name: Door, pattern: "(conf|oneway|both)", scenarios: [door]}
"""

DOOR = """
from engine.runtime.scenario import AppEvents, CallEvents, VoxEngine


async def on_alerting(e):
    call = e.call
    await call.answer()
    leg = VoxEngine.call_conference("room_" + call.number)
    leg.add_event_listener(CallEvents.Disconnected, lambda ev: call.hangup())
    call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    await leg.wait_for(CallEvents.Connected, timeout=5)
    VoxEngine.send_media_between(call, leg)


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
"""

ROOM = """
from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine

legs = []
conference = None


async def on_alerting(e):
    global conference
    call = e.call
    kind = VoxEngine.custom_data() or e.destination
    await call.answer()
    legs.append(call)
    if "conf" in e.destination:
        if conference is None:
            conference = VoxEngine.create_conference("room")
            conference.add_event_listener("EndpointAdded", lambda ev: Logger.write(f"joined {len(conference.endpoints)}"))
            conference.add_event_listener("EndpointRemoved", lambda ev: Logger.write(f"left {len(conference.endpoints)}"))
        conference.add(call)
    elif len(legs) == 2 and "oneway" in e.destination:
        legs[0].send_media_to(legs[1])
        Logger.write("routed one way")
    elif len(legs) == 2:
        VoxEngine.send_media_between(legs[0], legs[1])
        Logger.write("routed both ways")


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
"""

FREQS = (500.0, 700.0, 1100.0)


async def _phones(engine, number: str, freqs: tuple[float, ...]) -> list[RtpPhone]:
    phones = [RtpPhone(engine.ua.port, number, f) for f in freqs]
    for phone in phones:
        await phone.call()
    return phones


async def _close(phones: list[RtpPhone]) -> None:
    for phone in phones:
        await phone.close()


def _heard(phone: RtpPhone) -> dict[float, float]:
    pcm = phone.heard(1.0)
    return {f: tone_level(pcm, f) for f in FREQS}


@pytest.mark.parametrize("send_workers, pacing", [(0, True), (0, False), (2, True)])
async def test_conference_tones(make_engine, send_workers: int, pacing: bool) -> None:
    """Three callers in one conference: each hears both other callers' tones
    (amplitude above 1000 of the ~5000 sent) and not its own (below 100: the
    mix-minus removes it exactly); the conference reports joins and leaves.
    The same with the frames paced onto the grid (the default), sent as
    made (``--media-pacing off``), and with RTP send workers
    (``--media-send-workers 2``), where the frames went through the workers."""
    engine = await make_engine(RULES, {"door": DOOR, "room": ROOM}, media_send_workers=send_workers,
                               media_pacing=pacing)
    phones = await _phones(engine, "conf", FREQS)
    try:
        await wait_for_log(engine, "joined 3", timeout=5)
        for phone in phones:
            phone.clear()
        await asyncio.sleep(1.5)
        for phone in phones:
            levels = _heard(phone)
            others = [f for f in FREQS if f != phone.freq]
            assert all(levels[f] > 1000 for f in others), (phone.freq, levels)
            assert levels[phone.freq] < 100, (phone.freq, levels)
        await phones[0].hang_up()
        await wait_for_log(engine, "left 2", timeout=5)
        for phone in phones[1:]:
            phone.clear()
        await asyncio.sleep(1.0)
        for phone in phones[1:]:
            assert _heard(phone)[FREQS[0]] < 100, _heard(phone)
        if send_workers:
            assert engine.send_workers is not None and len(engine.send_workers.pids) == send_workers
            assert engine.send_workers.packets > 100 and engine.send_workers.fallbacks == 0
            assert engine.pacer is None
        else:
            assert engine.send_workers is None
        if pacing and not send_workers:
            assert engine.pacer is not None and engine.pacer.packets > 100
            assert engine.media_clock.dispatch is engine.pacer
        elif not send_workers:
            assert engine.pacer is None and engine.media_clock.dispatch is None
    finally:
        await _close(phones)


@pytest.mark.parametrize("number, logged, both", [("oneway", "routed one way", False),
                                                  ("both", "routed both ways", True)])
async def test_send_media_to_and_between(make_engine, number: str, logged: str, both: bool) -> None:
    """``a.send_media_to(b)``: b hears a's tone, a hears nothing of b's.
    ``VoxEngine.send_media_between(a, b)``: each hears the other. Neither
    ever hears itself."""
    engine = await make_engine(RULES, {"door": DOOR, "room": ROOM})
    phones = await _phones(engine, number, FREQS[:2])
    try:
        await wait_for_log(engine, logged, timeout=5)
        await asyncio.sleep(0.3)
        for phone in phones:
            phone.clear()
        await asyncio.sleep(1.2)
        a, b = phones
        assert _heard(b)[a.freq] > 1000 and _heard(b)[b.freq] < 100, _heard(b)
        if both:
            assert _heard(a)[b.freq] > 1000, _heard(a)
        else:
            assert _heard(a)[b.freq] < 100, _heard(a)
        assert _heard(a)[a.freq] < 100, _heard(a)
    finally:
        await _close(phones)
    assert "Traceback" not in session_logs(engine)
