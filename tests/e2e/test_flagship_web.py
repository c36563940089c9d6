"""The flagship application's web side with the shipped rules and
scenarios, driven by the scripted SDK client of tests/sdk_peer.py (the web
SDK's JSON protocol over a real WebSocket, an aiortc peer as the browser's
media): a browser joins conference 777 through ``joinconf``, gets the
participant list, and asks the conference to dial a phone number out
through the trunk, where sipp stands in for the carrier and the person
who answers and later hangs up."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from aiohttp import ClientSession

from engine.runtime.dialout import DialPolicy
from logs import wait_for_log
from sdk_peer import BrowserPeer, SdkSocket

from .baresip import free_udp_port
from .sipp import start_sipp

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def dial_out_token(engine, room: str, identity: str = "ada") -> str:
    """A join token for ``room`` (created if need be) that holds ``dial_out``,
    as ``POST /api/v1/rooms/{room}/tokens`` with those permissions issues."""
    if engine.store.get_room(room) is None:
        engine.store.create_room(room)
    token, _ = engine.keys.issue_join_token(
        room=room, identity=identity, display_name="Ada Lovelace", role="custom",
        permissions=("mute_self", "dial_out"), ttl=600, now=time.time())
    return token


async def join_conference(engine, http: ClientSession, conf_id: str | None) -> tuple[SdkSocket, BrowserPeer]:
    engine.store.create_user("ada", "lovelace", "Ada Lovelace")
    sock = SdkSocket(await http.ws_connect(f"http://127.0.0.1:{engine.http_port}/ws"))
    assert (await sock.hello())["type"] == "hello"
    if conf_id is not None:  # a join token for the room, allowed to dial out
        ok = await sock.request({"type": "login", "token": dial_out_token(engine, conf_id)})
    else:
        ok = await sock.login("ada", "lovelace")
    assert ok["type"] == "login_ok", ok
    peer = BrowserPeer()
    headers = {"X-Conference-Id": conf_id} if conf_id is not None else {}
    await sock.send({"type": "call", "call": "c1", "number": "joinconf", "sdp": await peer.offer(),
                     "headers": headers, "audio": True, "video": False})
    return sock, peer


def messages(sock: SdkSocket, kind: str) -> list[dict]:
    out = []
    for frame in sock.frames:
        if frame.get("type") == "message":
            data = json.loads(frame["text"])
            if data.get("type") == kind:
                out.append(data)
    return out


async def message(sock: SdkSocket, kind: str, timeout: float = 10.0) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        for data in messages(sock, kind):
            return data
        await sock.recv("message", timeout=max(0.1, deadline - loop.time()))


async def test_browser_joins_and_dials_a_phone_out(make_engine) -> None:
    """A logged-in browser calls ``joinconf`` with X-Conference-Id 777: it
    hears hold music first (183 with SDP), is connected, and receives the
    participant list naming itself. Its CALL_PARTICIPANT for 15551234 makes
    the conference call through the trunk; sipp answers (the browser gets
    CALL_PARTICIPANT_CONNECTED and a list with the phone), then hangs up
    (CALL_PARTICIPANT_DISCONNECTED). A bad number fails with 484."""
    port = free_udp_port()
    uas = await start_sipp(["-p", str(port), "-m", "1"], scenario="uas_answer_bye.xml", timeout=30)
    try:
        engine = await make_engine((ROOT / "rules.yaml").read_text(), ROOT / "scenarios",
                                   trunk=f"sip:127.0.0.1:{port}", dial_policy=DialPolicy(allow=(r"[0-9]+",)))
        async with ClientSession() as http:
            sock, peer = await join_conference(engine, http, "777")
            progress = await sock.recv("progress", call="c1", timeout=10)
            assert progress.get("sdp"), progress  # early media: the hold music
            connected = await sock.recv("connected", call="c1", timeout=15)
            if connected.get("sdp"):
                await peer.accept(connected["sdp"])
            first = await message(sock, "PARTICIPANTS")
            assert [p["kind"] for p in first["participants"]] == ["web"]
            assert first["participants"][0]["number"] == "ada"
            await sock.send({"type": "message", "call": "c1",
                             "text": json.dumps({"type": "CALL_PARTICIPANT", "number": "12"})})
            failed = await message(sock, "CALL_PARTICIPANT_FAILED")
            assert failed["code"] == 484 and failed["number"] == "12"
            await sock.send({"type": "message", "call": "c1",
                             "text": json.dumps({"type": "CALL_PARTICIPANT", "number": "15551234"})})
            ok = await message(sock, "CALL_PARTICIPANT_CONNECTED", timeout=15)
            assert ok["number"] == "15551234"
            gone = await message(sock, "CALL_PARTICIPANT_DISCONNECTED", timeout=15)
            assert gone["number"] == "15551234"
            await sock.recv("message", timeout=5)  # the list sent after the DISCONNECTED
            lists = [[p["kind"] for p in m["participants"]] for m in messages(sock, "PARTICIPANTS")]
            assert lists == [["web"], ["web", "pstn"], ["web"]], lists
            logs = await wait_for_log(engine, "dialing 15551234 into the conference")
            assert "pstn participant 15551234 left" in await wait_for_log(engine, "15551234 left")
            await sock.send({"type": "hangup", "call": "c1"})
            await wait_for_log(engine, "web participant", timeout=5)
            await peer.close()
            await sock.ws.close()
        out, err = await asyncio.wait_for(uas.communicate(), 20)
        assert uas.returncode == 0, out.decode(errors="replace")[-2000:] + err.decode(errors="replace")
        assert "started by rule Fwd" in logs
    finally:
        if uas.returncode is None:
            uas.kill()
            await uas.wait()


async def test_browser_without_conference_id_is_refused(make_engine) -> None:
    """A ``joinconf`` call without X-Conference-Id is rejected with 400 and
    starts no conference."""
    engine = await make_engine((ROOT / "rules.yaml").read_text(), ROOT / "scenarios")
    async with ClientSession() as http:
        sock, peer = await join_conference(engine, http, None)
        failed = await sock.recv("failed", call="c1", timeout=10)
        assert failed["code"] == 400
        await peer.close()
        await sock.ws.close()
    logs = await wait_for_log(engine, "refused: bad X-Conference-Id")
    assert "rule Fwd" not in logs


async def test_guest_profile_lives_for_the_visit(make_engine) -> None:
    """A guest login (the demo page's way in) gets a stored web user profile
    ``guest-…`` while it is in the conference; the conference deletes it
    when the browser leaves; a guest that only logged in loses it when its
    socket closes."""
    engine = await make_engine((ROOT / "rules.yaml").read_text(), ROOT / "scenarios")
    async with ClientSession() as http:
        sock = SdkSocket(await http.ws_connect(f"http://127.0.0.1:{engine.http_port}/ws"))
        await sock.hello()
        ok = await sock.request({"type": "login", "guest": "Grace"})
        name = ok["username"]
        assert name.startswith("guest-") and engine.store.get_user(name).display_name == "Grace"
        peer = BrowserPeer()
        await sock.send({"type": "call", "call": "c1", "number": "joinconf", "sdp": await peer.offer(),
                         "headers": {"X-Conference-Id": "909"}, "audio": True, "video": False})
        connected = await sock.recv("connected", call="c1", timeout=15)
        if connected.get("sdp"):  # else it came with the early media's progress
            await peer.accept(connected["sdp"])
        await message(sock, "PARTICIPANTS")
        await sock.send({"type": "hangup", "call": "c1"})
        await wait_for_log(engine, f"deleted web user {name}", timeout=10)
        assert engine.store.get_user(name) is None
        await peer.close()
        await sock.ws.close()
        idle = SdkSocket(await http.ws_connect(f"http://127.0.0.1:{engine.http_port}/ws"))
        await idle.hello()
        other = (await idle.request({"type": "login", "guest": "Hopper"}))["username"]
        assert engine.store.get_user(other) is not None
        await idle.ws.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while engine.store.get_user(other) is not None and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert engine.store.get_user(other) is None
