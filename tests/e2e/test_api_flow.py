"""Issue 7's full flow, against a running engine with the shipped rules and
scenarios, driven only through the management HTTP API, the web SDK's
protocol and a real softphone: create a room for two (recorded), subscribe
a webhook, invite two people, one redeems the code for a join token and
joins from a browser (the scripted SDK client and an aiortc peer), the
other types the code on a baresip keypad; a third is refused (the room is
full); the moderator mutes the phone caller through the API (its tone no
longer reaches the browser) and removes it; the room is ended; the local
receiver gets every event signed, in order, ending with
``recording.ready``."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import AsyncIterator, Callable

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from local_site import local_site

from engine.web.webhooks import verify_signature
from integration.api_client import Api, new_key
from logs import wait_for_log
from sdk_peer import BrowserPeer, SdkSocket, goertzel_power

from .baresip import Baresip

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

PHONE_TONE = 440.0


class Receiver:
    """The application server's webhook endpoint: keeps what it gets."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    def events(self) -> list[str]:
        return [json.loads(body)["event"] for _, body in self.received]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", rec.handle)
    async with local_site(app) as base:
        rec.url = f"{base}/hooks"
        yield rec


async def until(predicate: Callable[[], bool], timeout: float, what: str | Callable[[], str]) -> None:
    """Wait for ``predicate``; fail naming ``what`` (called then, if callable)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"no {what() if callable(what) else what} within {timeout} s")
        await asyncio.sleep(0.05)


async def browser_join(engine, http: aiohttp.ClientSession, token: str, room: str) -> tuple[SdkSocket, BrowserPeer]:  # type: ignore[no-untyped-def]
    """Log in with a join token and call ``joinconf`` for ``room`` (as the
    demo page and the SDK do)."""
    sock = SdkSocket(await http.ws_connect(f"http://127.0.0.1:{engine.http_port}/ws"))
    await sock.hello()
    login = await sock.request({"type": "login", "token": token})
    assert login["type"] == "login_ok", login
    peer = BrowserPeer(tone=1000.0)
    await sock.send({"type": "call", "call": "c1", "number": "joinconf", "sdp": await peer.offer(),
                     "headers": {"X-Conference-Id": room}, "audio": True, "video": False})
    return sock, peer


def level(pcm: np.ndarray, freq: float) -> float:
    return goertzel_power(pcm[-8000:], freq) if pcm.size >= 8000 else 0.0


async def test_room_invites_browser_and_phone_moderation_webhooks(
        make_engine, receiver: Receiver, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Check the whole management flow of issue 7 end to end (see the
    module documentation): admission with the cap, moderation reaching the
    media, and the webhook deliveries (signed, in order, with the
    recording)."""
    engine = await make_engine((ROOT / "rules.yaml").read_text(), ROOT / "scenarios",
                               session_idle_timeout=5.0,
                               webhook_private_networks=True)  # the receiver is on 127.0.0.1
    sockets: list[SdkSocket] = []
    peers: list[BrowserPeer] = []
    phone = Baresip(tmp_path, "phone", PHONE_TONE)
    async with aiohttp.ClientSession() as http:
        api = Api(engine, http, new_key(engine, "admin"))
        public = api.with_key(None)
        try:
            status, room = await api.post("/rooms", {"name": "flow", "display_name": "Consultation",
                                                     "max_participants": 2, "record_on_start": True})
            assert status == 201, room
            status, hook = await api.post("/webhooks", {"url": receiver.url, "events": [
                "room.started", "room.ended", "participant.joined", "participant.left", "recording.ready"]})
            assert status == 201, hook
            status, doctor = await api.post("/rooms/flow/invites", {"invitee": "dr@example.org",
                                                                   "display_name": "Dr Who", "role": "moderator"})
            assert status == 201, doctor
            status, patient = await api.post("/rooms/flow/invites", {"invitee": "+15550123",
                                                                    "display_name": "Patient"})
            assert status == 201, patient

            # the doctor redeems the link; the patient's code is typed on the phone
            status, grant = await public.post("/invites/redeem", {"link_token": doctor["link_token"]})
            assert status == 200 and (grant["room"], grant["role"]) == ("flow", "moderator"), grant
            sock, peer = await browser_join(engine, http, grant["token"], "flow")
            sockets.append(sock)
            peers.append(peer)
            progress = await sock.recv("progress", call="c1", timeout=15)  # hold music first
            await peer.accept(progress["sdp"])
            await sock.recv("connected", call="c1", timeout=15)

            await phone.start()
            await phone.dial(f"sip:5550100@127.0.0.1:{engine.ua.port}")
            await phone.wait_for("Call established", 10)
            await wait_for_log(engine, "started by rule InboundFromPSTN", timeout=5)
            await asyncio.sleep(1.0)
            await phone.press(patient["code"] + "#")
            assert "(2 in)" in await wait_for_log(engine, "(2 in)", timeout=30)
            status, listing = await api.get("/rooms/flow/invites")
            assert [i["state"] for i in listing["invites"]] == ["used", "used"], listing

            status, room = await api.get("/rooms/flow")
            assert room["participant_count"] == 2
            kinds = {p["kind"]: p for p in room["participants"]}
            assert set(kinds) == {"web", "pstn"}
            assert kinds["web"]["role"] == "moderator" and kinds["pstn"]["role"] == "guest"

            # a third person is refused: the room is full
            status, extra = await api.post("/rooms/flow/tokens", {"identity": "intruder"})
            assert status == 201
            third, third_peer = await browser_join(engine, http, extra["token"], "flow")
            sockets.append(third)
            peers.append(third_peer)
            failed = await third.recv("failed", call="c1", timeout=15)
            assert (failed["code"], failed["headers"].get("X-Reason")) == (403, "room_full"), failed
            status, room = await api.get("/rooms/flow")
            assert room["participant_count"] == 2

            # the browser hears the phone's tone...
            await until(lambda: level(peer.heard_pcm(), PHONE_TONE) > 0.5, 15, "phone tone at the browser")
            # ...until the moderator mutes the phone through the API
            phone_id = kinds["pstn"]["id"]
            status, muted = await api.post(f"/rooms/flow/participants/{phone_id}/mute", {"muted": True})
            assert status == 200 and muted["muted"] is True, muted
            mark = peer.heard_pcm().size
            await until(lambda: peer.heard_pcm().size >= mark + 16000, 10, "2 s of audio at the browser")
            after = peer.heard_pcm()[mark + 8000:]
            assert goertzel_power(after, PHONE_TONE) < 0.05, goertzel_power(after, PHONE_TONE)

            status, _ = await api.delete(f"/rooms/flow/participants/{phone_id}")
            assert status == 204
            await phone.wait_for("terminated", 15)
            status, room = await api.get("/rooms/flow")
            assert [p["kind"] for p in room["participants"]] == ["web"]

            status, room = await api.post("/rooms/flow/end")
            assert status == 200 and room["state"] == "ended", room
            await sock.recv("hangup", call="c1", timeout=15)

            order = ["room.started", "participant.joined", "participant.joined", "participant.left",
                     "participant.left", "room.ended", "recording.ready"]
            await until(lambda: len(receiver.received) >= len(order), 20, lambda: f"webhooks {order} (got {receiver.events()})")
            await asyncio.sleep(0.5)  # nothing more comes
            assert receiver.events() == order, receiver.events()
            now = time.time()
            bodies = [json.loads(body) for _, body in receiver.received]
            for headers, body in receiver.received:
                assert verify_signature(hook["secret"], headers["X-Callbridge-Signature"], body, now)
                assert not verify_signature("whsec_other", headers["X-Callbridge-Signature"], body, now)
            joined = [b["data"]["participant"]["kind"] for b in bodies if b["event"] == "participant.joined"]
            assert joined == ["web", "pstn"]
            left = [b["data"]["participant"]["kind"] for b in bodies if b["event"] == "participant.left"]
            assert left == ["pstn", "web"]
            recording = bodies[-1]["data"]
            assert recording["rooms"] == ["flow"] and Path(recording["path"]).is_file(), recording
            assert recording["duration"] > 1.0
            status, deliveries = await api.get(f"/webhooks/{hook['id']}/deliveries")
            assert {d["status"] for d in deliveries["deliveries"]} == {"delivered"}
        finally:
            await phone.stop()
            for s in sockets:
                await s.ws.close()
            for p in peers:
                await p.close()
