"""``/api/v1`` room changes against a running engine: ``PATCH`` of a
room's settings (each bad value named by its field), ``PUT`` that creates
a room or answers the existing one (idempotent), mute-all through the API
and a moderator's SDK with ``participant.updated`` events, and a guest's
moderation refused and logged as a security event."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sdk_peer import BrowserPeer, SdkSocket

from engine.server import Engine

from .api_client import Api, error, new_key
from .conftest import EngineFactory
from .test_api_rooms import RULES, SCENARIOS


@pytest.fixture
async def engine(make_engine: EngineFactory) -> Engine:
    return await make_engine(RULES, SCENARIOS)


@pytest.fixture
def api(engine: Engine, http: aiohttp.ClientSession) -> Api:
    return Api(engine, http, new_key(engine, "calls"))


async def test_patch_changes_a_rooms_settings(api: Api) -> None:
    """Check PATCH changes title, cap, recording, lock and schedule, keeps
    what it does not name, and that null clears a nullable setting."""
    await api.post("/rooms", {"name": "p1", "display_name": "Old", "max_participants": 5})
    status, room = await api.patch("/rooms/p1", {
        "display_name": "New title", "max_participants": 12, "record_on_start": True, "locked": True,
        "schedule": {"start": "2099-01-01T10:00:00Z", "duration": 3600}})
    assert status == 200, room
    assert (room["display_name"], room["max_participants"], room["record_on_start"], room["locked"],
            room["starts_at"], room["duration"], room["state"]) == (
        "New title", 12, True, True, 4070944800.0, 3600.0, "scheduled")
    status, room = await api.patch("/rooms/p1", {"max_participants": None, "schedule": {"start": None}})
    assert status == 200 and room["max_participants"] is None and room["starts_at"] is None
    assert room["display_name"] == "New title" and room["state"] == "open"
    status, got = await api.get("/rooms/p1")
    assert got["record_on_start"] is True and got["locked"] is True


@pytest.mark.parametrize("body, code, field", [
    ({"max_participants": 0}, "invalid_field", "max_participants"),
    ({"max_participants": "9"}, "invalid_field", "max_participants"),
    ({"display_name": "x" * 129}, "invalid_field", "display_name"),
    ({"display_name": "a\x00b"}, "invalid_field", "display_name"),
    ({"locked": None}, "invalid_field", "locked"),
    ({"record_on_start": "yes"}, "invalid_field", "record_on_start"),
    ({"schedule": {"start": "tomorrow"}}, "invalid_field", "schedule.start"),
    ({"schedule": {"duration": 0}}, "invalid_field", "schedule.duration"),
    ({"schedule": {"end": 5}}, "unknown_field", "schedule.end"),
    ({"schedule": 5}, "invalid_field", "schedule"),
    ({"end_when_empty_after": -1}, "invalid_field", "end_when_empty_after"),
    ({"pin": "123456"}, "unknown_field", "pin"),
])
async def test_patch_bad_values_name_their_field(api: Api, body: dict[str, Any], code: str, field: str) -> None:
    """Check each bad PATCH value is refused with 400 naming its field, and
    the room is unchanged."""
    await api.post("/rooms", {"name": "p2", "max_participants": 3})
    status, answer = await api.patch("/rooms/p2", body)
    assert status == 400 and error(answer) == (code, field), answer
    status, room = await api.get("/rooms/p2")
    assert room["max_participants"] == 3 and room["locked"] is False


async def test_patch_refuses_missing_ended_and_malformed_rooms(api: Api, engine: Engine,
                                                               http: aiohttp.ClientSession) -> None:
    """Check PATCH of an unknown or malformed room id is 404, of an ended
    room 409, and without the ``calls`` scope 403."""
    status, body = await api.patch("/rooms/nosuch", {"locked": True})
    assert status == 404 and error(body) == ("not_found", "room")
    status, body = await api.patch("/rooms/bad%20id", {"locked": True})
    assert status == 404 and error(body) == ("not_found", "room")
    await api.post("/rooms", {"name": "p3"})
    await api.post("/rooms/p3/end")
    status, body = await api.patch("/rooms/p3", {"locked": True})
    assert status == 409 and error(body) == ("room_ended", "room")
    users_only = Api(engine, http, new_key(engine, "users"))
    status, body = await users_only.patch("/rooms/p3", {"locked": True})
    assert status == 403 and error(body)[0] == "forbidden"


async def test_put_creates_once_then_answers_the_same_room(api: Api) -> None:
    """Check PUT creates a room (201), a second identical PUT answers 200
    with the same body, a PUT with another PIN is a conflict, and a PUT
    without pin or with a bad id is refused naming the field."""
    body = {"pin": "48151623", "display_name": "Weekly", "max_participants": 8}
    status, first = await api.put("/rooms/weekly", body)
    assert status == 201, first
    assert "pin" not in first and first["pin_set"] is True and first["display_name"] == "Weekly"
    status, second = await api.put("/rooms/weekly", body)
    assert status == 200 and second == first
    status, answer = await api.put("/rooms/weekly", {**body, "pin": "99999999"})
    assert status == 409 and error(answer) == ("room_exists", "pin")
    status, answer = await api.put("/rooms/weekly", {**body, "pin": None})
    assert status == 409 and error(answer) == ("room_exists", "pin")
    status, answer = await api.put("/rooms/weekly2", {"display_name": "x"})
    assert status == 400 and error(answer) == ("missing_field", "pin")
    status, answer = await api.put("/rooms/bad-id", {"pin": None})
    assert status == 400 and error(answer) == ("invalid_field", "room")
    status, answer = await api.put("/rooms/open1", {"pin": None})
    assert status == 201 and answer["pin_set"] is False
    status, again = await api.put("/rooms/open1", {"pin": None})
    assert status == 200 and again == answer
    status, answer = await api.put("/rooms/short", {"pin": "12"})
    assert status == 400 and error(answer) == ("invalid_field", "pin")


async def _join(api: Api, http: aiohttp.ClientSession, room: str, identity: str, role: str,
                sockets: list[SdkSocket], peers: list[BrowserPeer]) -> SdkSocket:
    status, tok = await api.post(f"/rooms/{room}/tokens", {"identity": identity, "role": role})
    sock = SdkSocket(await http.ws_connect(f"http://127.0.0.1:{api.engine.http_port}/ws"))
    sockets.append(sock)
    await sock.hello()
    assert (await sock.request({"type": "login", "token": tok["token"]}))["type"] == "login_ok"
    peer = BrowserPeer()
    peers.append(peer)
    await sock.send({"type": "call", "call": "c1", "number": f"conf_{room}", "sdp": await peer.offer(),
                     "audio": True, "video": False})
    await sock.recv("connected", call="c1", timeout=10)
    return sock


async def test_mute_all_through_the_api_and_the_sdk(api: Api, http: aiohttp.ClientSession,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Check mute-all: the API mutes everyone but the identities spared
    (in the media graph too), a moderator's ``mute_all`` frame unmutes all
    but itself, each change is one ``participant.updated`` event (none when
    nothing changed), and a guest's ``mute_all`` is forbidden and logged as
    a security event."""
    await api.post("/rooms", {"name": "all"})
    events: list[tuple[str, dict[str, Any]]] = []
    rooms = api.engine.rooms
    assert rooms is not None
    rooms.on_event.append(lambda name, data: events.append((name, data)))
    sockets: list[SdkSocket] = []
    peers: list[BrowserPeer] = []
    try:
        dr = await _join(api, http, "all", "dr", "moderator", sockets, peers)
        gus = await _join(api, http, "all", "gus", "guest", sockets, peers)
        amy = await _join(api, http, "all", "amy", "guest", sockets, peers)
        status, room = await api.get("/rooms/all")
        ids = {p["identity"]: p["id"] for p in room["participants"]}

        status, answer = await api.post("/rooms/all/mute_all", {"muted": True, "except": ["dr"]})
        assert status == 200 and sorted(answer["changed"]) == sorted([ids["gus"], ids["amy"]])
        assert {p["identity"]: p["muted"] for p in answer["participants"]} == {
            "dr": False, "gus": True, "amy": True}
        graph = api.engine.media_graph
        assert graph.is_muted(rooms.participants["all"][ids["gus"]].call)
        updated = [(d["participant"]["identity"], d["participant"]["muted"])
                   for n, d in events if n == "participant.updated"]
        assert sorted(updated) == [("amy", True), ("gus", True)]
        status, again = await api.post("/rooms/all/mute_all", {"muted": True, "except": ["dr"]})
        assert again["changed"] == [] and len([n for n, _ in events if n == "participant.updated"]) == 2

        with caplog.at_level(logging.WARNING, logger="callbridge.security"):
            denied = await gus.request({"type": "moderate", "action": "unmute_all"})
        assert (denied["type"], denied["code"]) == ("error", "forbidden")
        assert ("security event=forbidden src=127.0.0.1 reason=moderate_not_permitted user=gus room=all"
                " action=unmute_all permission=mute_others") in caplog.text
        assert rooms.participants["all"][ids["gus"]].muted is True

        done = await dr.request({"type": "moderate", "action": "unmute_all"})
        assert done["type"] == "moderated"
        status, room = await api.get("/rooms/all")
        assert all(p["muted"] is False for p in room["participants"])
        done = await dr.request({"type": "moderate", "action": "mute_all"})
        status, room = await api.get("/rooms/all")
        assert {p["identity"]: p["muted"] for p in room["participants"]} == {
            "dr": False, "gus": True, "amy": True}
        assert amy is not None
    finally:
        for sock in sockets:
            await sock.ws.close()
        for peer in peers:
            await peer.close()


@pytest.mark.parametrize("body, code, field", [
    ({}, "missing_field", "muted"),
    ({"muted": "yes"}, "invalid_field", "muted"),
    ({"muted": True, "except": "dr"}, "invalid_field", "except"),
    ({"muted": True, "except": ["x" * 257]}, "invalid_field", "except"),
    ({"muted": True, "except": ["a"] * 101}, "invalid_field", "except"),
    ({"muted": True, "everyone": True}, "unknown_field", "everyone"),
])
async def test_mute_all_bad_inputs(api: Api, body: dict[str, Any], code: str, field: str) -> None:
    """Check each bad mute-all body is refused naming its field."""
    await api.post("/rooms", {"name": "m2"})
    status, answer = await api.post("/rooms/m2/mute_all", body)
    assert status == 400 and error(answer) == (code, field), answer
    status, answer = await api.post("/rooms/nosuch/mute_all", {"muted": True})
    assert status == 404 and error(answer) == ("not_found", "room")


async def test_moderation_without_a_join_token_is_logged(api: Api, http: aiohttp.ClientSession,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Check a password-less guest login sending ``moderate`` is refused and
    logged as a security event (the frame names no room it could act on)."""
    sock = SdkSocket(await http.ws_connect(f"http://127.0.0.1:{api.engine.http_port}/ws"))
    try:
        await sock.hello()
        assert (await sock.request({"type": "login", "guest": "Eve"}))["type"] == "login_ok"
        with caplog.at_level(logging.WARNING, logger="callbridge.security"):
            denied = await sock.request({"type": "moderate", "action": "end"})
        assert (denied["type"], denied["code"]) == ("error", "forbidden")
        assert "security event=forbidden src=127.0.0.1 reason=moderate_without_token user=guest-" in caplog.text
    finally:
        await sock.ws.close()


ROOT = Path(__file__).resolve().parents[2]


async def _message(sock: SdkSocket, kind: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
    """The next conference message (JSON in a ``message`` frame) of ``kind``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        frame = await sock.recv("message", timeout=max(0.1, deadline - loop.time()))
        data = json.loads(frame["text"])
        if data.get("type") == kind and all(data.get(k) == v for k, v in match.items()):
            return dict(data)


async def test_recording_and_live_mute_state_in_the_shipped_conference(
        make_engine: EngineFactory, http: aiohttp.ClientSession) -> None:
    """Check, against the shipped rules and conference scenario: the API
    and a moderator's SDK start and stop the room's recording (webhook
    events recording.started/recording.stopped, the WAV written), a guest
    may not, nothing records in an empty room; and a mute made through
    the API reaches the pages as PARTICIPANT_UPDATED and a roster with
    ``muted``."""
    engine = await make_engine((ROOT / "rules.yaml").read_text(), ROOT / "scenarios")
    api = Api(engine, http, new_key(engine, "calls"))
    await api.post("/rooms", {"name": "rec1", "pin": None})
    await api.post("/rooms", {"name": "empty1", "pin": None})
    events: list[tuple[str, dict[str, Any]]] = []
    assert engine.rooms is not None
    engine.rooms.on_event.append(lambda name, data: events.append((name, data)))
    sockets: list[SdkSocket] = []
    peers: list[BrowserPeer] = []

    async def join(identity: str, role: str) -> SdkSocket:
        status, tok = await api.post("/rooms/rec1/tokens", {"identity": identity, "role": role})
        sock = SdkSocket(await http.ws_connect(f"http://127.0.0.1:{engine.http_port}/ws"))
        sockets.append(sock)
        await sock.hello()
        assert (await sock.request({"type": "login", "token": tok["token"]}))["type"] == "login_ok"
        peer = BrowserPeer()
        peers.append(peer)
        await sock.send({"type": "call", "call": "c1", "number": "joinconf", "sdp": await peer.offer(),
                         "audio": True, "video": False, "headers": {"X-Conference-Id": "rec1"}})
        await sock.recv("connected", call="c1", timeout=15)
        return sock

    try:
        status, body = await api.post("/rooms/empty1/recording", {"action": "start"})
        assert status == 409 and error(body)[0] == "no_conference"
        dr = await join("dr", "moderator")
        gus = await join("gus", "guest")
        roster = await _message(dr, "PARTICIPANTS", timeout=15)
        while len(roster["participants"]) < 2:
            roster = await _message(dr, "PARTICIPANTS", timeout=15)
        assert all(p["muted"] is False for p in roster["participants"])
        gus_id = next(p["id"] for p in roster["participants"] if p["number"] == "gus")

        status, rec = await api.post("/rooms/rec1/recording", {"action": "start"})
        assert status == 200 and rec["recording"] is True and rec["path"].endswith(".wav"), rec
        status, again = await api.post("/rooms/rec1/recording", {"action": "start"})
        assert status == 200 and again["path"] == rec["path"]  # the one running
        status, got = await api.get("/rooms/rec1/recording")
        assert got["recording"] is True
        denied = await gus.request({"type": "moderate", "action": "stop_recording"})
        assert (denied["type"], denied["code"]) == ("error", "forbidden")
        stopped = await dr.request({"type": "moderate", "action": "stop_recording"})
        assert stopped["type"] == "moderated"
        assert Path(rec["path"]).read_bytes()[:4] == b"RIFF"  # a complete WAV (length: however long it ran)
        status, body = await api.post("/rooms/rec1/recording", {"action": "stop"})
        assert status == 409 and error(body)[0] == "not_recording"
        started = await dr.request({"type": "moderate", "action": "start_recording"})
        assert started["type"] == "moderated"
        status, rec2 = await api.post("/rooms/rec1/recording", {"action": "stop"})
        assert status == 200 and rec2["recording"] is False and rec2["path"] != rec["path"]
        names = [n for n, _ in events if n.startswith("recording.")]
        assert names == ["recording.started", "recording.stopped"] * 2, names
        assert all(d["room"] == "rec1" for n, d in events if n.startswith("recording."))

        status, _ = await api.post(f"/rooms/rec1/participants/{gus_id}/mute", {"muted": True})
        assert status == 200
        update = await _message(dr, "PARTICIPANT_UPDATED")
        assert update["participant"] == {"id": gus_id, "muted": True}
        roster = await _message(dr, "PARTICIPANTS")
        assert {p["id"]: p["muted"] for p in roster["participants"]}[gus_id] is True
        mine = await _message(gus, "PARTICIPANT_UPDATED")
        assert mine["participant"] == {"id": gus_id, "muted": True}
    finally:
        for sock in sockets:
            await sock.ws.close()
        for peer in peers:
            await peer.close()


@pytest.mark.parametrize("body, status, code, field", [
    ({}, 400, "missing_field", "action"),
    ({"action": "pause"}, 400, "invalid_field", "action"),
    ({"action": 1}, 400, "invalid_field", "action"),
    ({"action": "start", "path": "/etc/passwd"}, 400, "unknown_field", "path"),
])
async def test_recording_bad_inputs(api: Api, body: dict[str, Any], status: int, code: str, field: str) -> None:
    """Check each bad recording request is refused naming its field (a
    client cannot choose the file)."""
    await api.post("/rooms", {"name": "r2"})
    got, answer = await api.post("/rooms/r2/recording", body)
    assert got == status and error(answer) == (code, field), answer
