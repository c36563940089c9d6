"""Browser legs in the media graph, against a real engine: aiortc peer
connections stand in for browsers (each with a tone of its own as its
microphone) and a SIP caller with PCMU RTP (tests/e2e/phone.py) joins them,
through a gatekeeper that bridges each caller to its leg into one
conference session with ``send_media_between`` (as the shipped application
does).

Checks that browsers in a conference hear each other and the phone (and
not themselves), that the phone hears both browsers mixed, and that a
prompt the scenario plays to a browser in the conference is mixed with the
conference (one writer to the browser's track).
"""

from __future__ import annotations

from typing import Any

import aiohttp

from e2e.phone import RtpPhone, tone_level
from logs import wait_for_log
from sdk_peer import BrowserPeer, SdkSocket, goertzel_power

from engine.server import Engine

from .conftest import EngineFactory, wait_until

#: The conference session (rule "conf_room"): one conference, everyone joins.
ROOM = """
from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine

room = None

async def on_alerting(e):
    global room
    if room is None:
        room = VoxEngine.create_conference("room")
    call = e.call
    await call.answer()
    room.add(call)
    Logger.write(f"joined {e.callerid} ({len(room.endpoints)} in)")
    call.add_event_listener(CallEvents.Disconnected, lambda ev: room.remove(call))

VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
"""

#: The gatekeeper (rule "room"), as the shipped application's: each caller,
#: phone or browser, is bridged with send_media_between to its leg into the
#: one "conf_room" session. With X-Prompt, a tone is then played to the
#: caller on top of the conference.
ROOM_GATE = """
from engine.runtime.scenario import AppEvents, CallEvents, VoxEngine

async def on_alerting(e):
    call = e.call
    leg = VoxEngine.call_conference("conf_room", callerid=e.callerid)
    await leg.wait_for(CallEvents.Connected, timeout=10)
    await call.answer()
    VoxEngine.send_media_between(call, leg)
    if e.headers.get("X-Prompt"):
        call.start_playback_tone(float(e.headers["X-Prompt"]))
    call.add_event_listener(CallEvents.Disconnected, lambda ev: (leg.hangup(), VoxEngine.terminate()))

VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
"""

ROOM_RULES = """
rules:
  - {name: Gate, pattern: "room", scenarios: [gate]}
  - {name: Conf, pattern: "conf_room", scenarios: [room]}
"""


async def _join(engine: Engine, http: aiohttp.ClientSession, user: str, tone: float, wire: str,
                number: str = "room", headers: dict[str, str] | None = None) -> tuple[SdkSocket, BrowserPeer]:
    sock = SdkSocket(await http.ws_connect(f"http://127.0.0.1:{engine.http_port}/ws"))
    await sock.hello()
    assert (await sock.login(user, "pw"))["type"] == "login_ok"
    peer = BrowserPeer(tone=tone)
    await sock.send({"type": "call", "call": wire, "number": number, "sdp": await peer.offer(),
                     "headers": headers or {}})
    connected = await sock.recv("connected", call=wire, timeout=15)
    await peer.accept(connected["sdp"])
    return sock, peer


def _recent(peer: BrowserPeer, seconds: float = 1.0) -> Any:
    return peer.heard_pcm()[-int(8000 * seconds):]


async def test_two_browsers_and_a_phone_in_one_conference(make_engine: EngineFactory) -> None:
    """Check two browsers (500 Hz and 1000 Hz microphones) and a phone
    (700 Hz) in one conference reached through ``call_conference``: each
    browser hears the other and the phone, not itself; the phone hears
    both browsers, not itself."""
    engine = await make_engine(ROOM_RULES, scenarios={"gate": ROOM_GATE, "room": ROOM})
    assert engine.store is not None
    for name in ("alice", "bob"):
        engine.store.create_user(name, "pw")
    phone = RtpPhone(engine.ua.port, "room", 700.0)
    async with aiohttp.ClientSession() as http:
        alice_sock, alice = await _join(engine, http, "alice", 500.0, "a1")
        bob_sock, bob = await _join(engine, http, "bob", 1000.0, "b1")
        await phone.call()
        await wait_for_log(engine, "(3 in)", timeout=15)
        try:
            for peer in (alice, bob):
                await wait_until(lambda: len(peer.heard_pcm()) > 8000 * 3, timeout=15)
            await wait_until(lambda: len(phone.packets) > 150, timeout=15)
            a, b, p = _recent(alice, 1.5), _recent(bob, 1.5), phone.heard(1.5)
            assert goertzel_power(a, 1000) > 0.1 and goertzel_power(a, 700) > 0.1, "alice hears bob and the phone"
            assert goertzel_power(a, 500) < 0.02, "alice does not hear herself"
            assert goertzel_power(b, 500) > 0.1 and goertzel_power(b, 700) > 0.1, "bob hears alice and the phone"
            assert goertzel_power(b, 1000) < 0.02, "bob does not hear himself"
            assert tone_level(p, 500) > 300 and tone_level(p, 1000) > 300, "the phone hears both browsers"
            assert tone_level(p, 700) < min(tone_level(p, 500), tone_level(p, 1000)) / 5
        finally:
            await phone.hang_up()
            await phone.close()
            for sock, peer in ((alice_sock, alice), (bob_sock, bob)):
                await peer.close()
                await sock.ws.close()


async def test_prompt_to_a_browser_is_mixed_with_the_conference(make_engine: EngineFactory) -> None:
    """Check a tone the scenario plays to a browser bridged into a
    conference is heard together with the conference (the graph mixes the
    leg's own player in: one writer to the browser's track)."""
    engine = await make_engine(ROOM_RULES, scenarios={"gate": ROOM_GATE, "room": ROOM})
    assert engine.store is not None
    engine.store.create_user("alice", "pw")
    phone = RtpPhone(engine.ua.port, "room", 700.0)
    await phone.call()
    await wait_for_log(engine, "(1 in)", timeout=10)
    async with aiohttp.ClientSession() as http:
        sock, peer = await _join(engine, http, "alice", 500.0, "a1", headers={"X-Prompt": "1200"})
        try:
            await wait_for_log(engine, "(2 in)", timeout=10)
            await wait_until(lambda: len(peer.heard_pcm()) > 8000 * 3, timeout=15)
            heard = _recent(peer, 1.5)
            assert goertzel_power(heard, 1200) > 0.1, "the prompt is heard"
            assert goertzel_power(heard, 700) > 0.1, "the phone is heard"
            assert goertzel_power(heard, 500) < 0.02
        finally:
            await peer.close()
            await sock.ws.close()
            await phone.hang_up()
            await phone.close()
