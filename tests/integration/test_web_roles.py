"""Join-token roles and data against a real engine: the shipped
conference's roster carries a token's free-form ``data`` to the other
pages, and a ``subscriber`` (listen only) hears the conference while the
others never hear it (aiortc peers with a tone each as their microphone)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import aiohttp
import pytest

from sdk_peer import BrowserPeer, SdkSocket, goertzel_power

from .api_client import Api, error, new_key
from .conftest import EngineFactory, wait_until

ROOT = Path(__file__).resolve().parents[2]

#: One conference everyone sends to and hears (not themselves), admitted
#: through the room by the call's grant.
MIX = """
from engine.runtime.scenario import AppEvents, CallEvents, VoxEngine

room = None

async def on_alerting(e):
    global room
    if room is None:
        room = VoxEngine.create_conference("room")
    call = e.call
    VoxEngine.room_join(e.destination, call, kind="web", display_name=e.display_name)
    await call.answer()
    room.add(call)
    call.add_event_listener(CallEvents.Disconnected, lambda ev: room.remove(call))

VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
"""

#: Each page's call is bridged to its leg into the one conf_<room> session,
#: the grant going with it (as the shipped gatekeeper does).
GATE = """
from engine.runtime.scenario import AppEvents, CallEvents, VoxEngine

async def on_alerting(e):
    call = e.call
    leg = VoxEngine.call_conference("conf_" + e.destination[5:], callerid=e.callerid, on_behalf_of=call)
    await leg.wait_for(CallEvents.Connected, timeout=10)
    await call.answer()
    VoxEngine.send_media_between(call, leg)
    call.add_event_listener(CallEvents.Disconnected, lambda ev: (leg.hangup(), VoxEngine.terminate()))

VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
"""


async def _page(api: Api, http: aiohttp.ClientSession, room: str, body: dict[str, object], tone: float,
                number: str, headers: dict[str, str] | None = None) -> tuple[SdkSocket, BrowserPeer]:
    status, tok = await api.post(f"/rooms/{room}/tokens", body)
    assert status == 201, tok
    sock = SdkSocket(await http.ws_connect(f"http://127.0.0.1:{api.engine.http_port}/ws"))
    await sock.hello()
    assert (await sock.request({"type": "login", "token": tok["token"]}))["type"] == "login_ok"
    peer = BrowserPeer(tone=tone)
    await sock.send({"type": "call", "call": "c1", "number": number, "sdp": await peer.offer(),
                     "headers": headers or {}})
    while True:  # the answer comes in progress 183 (early media) or in connected
        frame = await sock.recv(call="c1", timeout=15)
        if frame.get("sdp"):
            await peer.accept(frame["sdp"])
        if frame["type"] in ("connected", "failed"):
            break
    return sock, peer


async def test_token_data_reaches_the_other_pages_roster(make_engine: EngineFactory) -> None:
    """Check the shipped application: the ``data`` of one page's join token
    (kept in its call's grant) is in the participant list another page
    gets; data over 1 KB is refused 400 naming the field."""
    engine = await make_engine((ROOT / "rules.yaml").read_text(), ROOT / "scenarios")
    async with aiohttp.ClientSession() as http:
        api = Api(engine, http, new_key(engine, "calls"))
        assert (await api.post("/rooms", {"name": "team"}))[0] == 201
        status, body = await api.post("/rooms/team/tokens", {"identity": "x", "data": "é" * 513})
        assert status == 400 and error(body) == ("invalid_field", "data") and "1024 bytes" in str(body)
        info = '{"avatar": "ann.png"}'
        ann, ann_peer = await _page(api, http, "team", {"identity": "ann", "data": info}, 500.0, "joinconf",
                                    {"X-Conference-Id": "team"})
        bob, bob_peer = await _page(api, http, "team", {"identity": "bob"}, 700.0, "joinconf",
                                    {"X-Conference-Id": "team"})
        try:
            while True:
                msg = await bob.recv("message", call="c1", timeout=10)
                if '"PARTICIPANTS"' in msg["text"] and '"ann"' in msg["text"]:
                    break
            roster = {p["name"]: p for p in json.loads(msg["text"])["participants"]}
            assert roster["ann"]["data"] == info and roster["ann"]["role"] == "guest"
        finally:
            for sock, peer in ((ann, ann_peer), (bob, bob_peer)):
                await peer.close()
                await sock.ws.close()


async def test_subscriber_hears_and_is_never_heard(make_engine: EngineFactory,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Check a ``subscriber`` token (no permissions): its page hears the
    conference (the guest's 500 Hz) while its own 1000 Hz never reaches
    the guest; the room lists it muted, unmuting it is refused (API 409
    listen_only, SDK listen_only), its offer is answered sendonly (the
    guest's sendrecv), and direct calls from it and to it are
    refused 403 ``listen_only`` (its page never rung), each a security event."""
    rules = "rules:\n  - {name: Gate, pattern: \"gate_[a-z]+\", scenarios: [gate]}\n" \
            "  - {name: Conf, pattern: \"conf_[a-z]+\", scenarios: [mix]}\n" \
            "  - {name: P2P, pattern: \".*\", scenarios: [p2p]}\n"
    p2p = (ROOT / "scenarios" / "p2p.py").read_text()
    engine = await make_engine(rules, {"gate": GATE, "mix": MIX, "p2p": p2p})
    async with aiohttp.ClientSession() as http:
        api = Api(engine, http, new_key(engine, "calls"))
        await api.post("/rooms", {"name": "talk"})
        status, tok = await api.post("/rooms/talk/tokens", {"identity": "sue", "role": "subscriber"})
        assert status == 201 and tok["permissions"] == [] and tok["role"] == "subscriber"
        guest, guest_peer = await _page(api, http, "talk", {"identity": "gil", "role": "moderator"}, 500.0,
                                        "gate_talk")
        sub, sub_peer = await _page(api, http, "talk", {"identity": "sue", "role": "subscriber"}, 1000.0,
                                    "gate_talk")
        try:
            answers = [next(f["sdp"] for f in sock.frames if f.get("call") == "c1" and f.get("sdp"))
                       for sock in (guest, sub)]
            assert "a=sendrecv" in answers[0] and "a=sendonly" in answers[1], "the subscriber is told to only listen"
            for peer in (guest_peer, sub_peer):
                await wait_until(lambda: len(peer.heard_pcm()) > 8000 * 3, timeout=15)
            heard_by_guest, heard_by_sub = guest_peer.heard_pcm()[-12000:], sub_peer.heard_pcm()[-12000:]
            assert goertzel_power(heard_by_sub, 500) > 0.1, "the subscriber hears the conference"
            assert goertzel_power(heard_by_guest, 1000) < 0.02, "nobody hears the subscriber"
            status, room = await api.get("/rooms/talk")
            sue = next(p for p in room["participants"] if p["identity"] == "sue")
            assert sue["role"] == "subscriber" and sue["muted"] is True
            status, body = await api.post(f"/rooms/talk/participants/{sue['id']}/mute", {"muted": False})
            assert status == 409 and error(body)[0] == "listen_only"
            refused = await guest.request({"type": "moderate", "action": "unmute", "participant": sue["id"]})
            assert (refused["type"], refused["code"]) == ("error", "listen_only")
            offerer = BrowserPeer()
            try:
                await sub.send({"type": "call", "call": "d1", "number": "gil", "sdp": await offerer.offer(),
                                "headers": {"X-DirectCall": "true"}})
            finally:
                await offerer.close()
            failed = await sub.recv("failed", call="d1", timeout=10)
            assert failed["code"] == 403 and failed["headers"].get("X-Reason") == "listen_only"
            caller = BrowserPeer()
            try:
                with caplog.at_level(logging.WARNING, logger="callbridge.security"):
                    await guest.send({"type": "call", "call": "d2", "number": "sue",
                                      "sdp": await caller.offer(), "headers": {"X-DirectCall": "true"}})
                    failed = await guest.recv("failed", call="d2", timeout=10)
            finally:
                await caller.close()
            assert failed["code"] == 403 and failed["headers"].get("X-Reason") == "listen_only"
            assert "security event=listen_only_direct_call src=127.0.0.1 callee=sue identity=gil" in caplog.text
            await sub.request({"type": "ping"})  # every frame sent to the page before is now read
            assert not [f for f in sub.frames if f.get("type") == "incoming"], "the subscriber was rung"
        finally:
            for sock, peer in ((guest, guest_peer), (sub, sub_peer)):
                await peer.close()
                await sock.ws.close()
