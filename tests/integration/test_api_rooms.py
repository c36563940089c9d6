"""``/api/v1`` rooms, join tokens and invites against a running engine:
create, list, get with live participants, lock, end; join tokens checked
by the web SDK's login; the participant cap enforced through the scenario
API; one-time invites redeemed once; and everything still there after a
restart on the same data directory."""

from __future__ import annotations

import datetime
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sdk_peer import BrowserPeer, SdkSocket

from engine.server import Engine

from .api_client import Api, error, new_key
from .conftest import EngineFactory, wait_until

#: An hour ago, to the second, in UTC.
START = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) - datetime.timedelta(hours=1)

RULES = """
rules:
  - {name: Fwd, pattern: "conf_[A-Za-z0-9]+", scenarios: [room_conf]}
"""

#: A conference that admits callers through the rooms API (as the shipped
#: conference scenario is to do) and refuses them with the refusal's code.
SCENARIOS = {
    "room_conf": """
        from engine.runtime.scenario import AppEvents, CallEvents, Logger, RoomRefused, VoxEngine

        async def on_alerting(e):
            call = e.call
            try:
                # identity and role come from the call's grant (the join token)
                VoxEngine.room_join(e.destination, call, kind="web" if call.kind == "web" else "pstn",
                                    display_name=e.display_name)
            except RoomRefused as exc:
                Logger.write(f"refused {exc.code}")
                call.reject(486)
                return
            await call.answer()

        VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
    """,
}


@pytest.fixture
async def engine(make_engine: EngineFactory) -> Engine:
    return await make_engine(RULES, SCENARIOS)


@pytest.fixture
def api(engine: Engine, http: aiohttp.ClientSession) -> Api:
    return Api(engine, http, new_key(engine, "calls"))


async def test_room_create_list_get_end(api: Api) -> None:
    """Check a room is created with its settings, listed, read, and ended;
    an ended room refuses tokens and its conference is no longer open."""
    status, room = await api.post("/rooms", {
        "name": "class1", "display_name": "Class", "max_participants": 2, "record_on_start": True,
        "pin": "432198", "moderator_pin": "999911", "end_when_empty_after": 60,
        "schedule": {"start": START.isoformat(), "duration": 86400}})
    assert status == 201, room
    assert (room["id"], room["conference"], room["max_participants"], room["pin"], room["moderator_pin"],
            room["state"], room["participants"], room["starts_at"]) == (
        "class1", "conf_class1", 2, "432198", "999911", "open", [], START.timestamp())
    status, listing = await api.get("/rooms?limit=10")
    assert status == 200 and [r["id"] for r in listing["rooms"]] == ["class1"] and listing["total"] == 1
    assert "432198" not in str(listing) and "999911" not in str(listing)
    status, got = await api.get("/rooms/class1")
    assert status == 200 and got["display_name"] == "Class"
    assert (got["pin_set"], got["moderator_pin_set"]) == (True, True)
    assert "pin" not in got and "moderator_pin" not in got and "432198" not in str(got)
    assert api.engine.runtime.conference_is_open("conf_class1")
    status, ended = await api.post("/rooms/class1/end")
    assert status == 200 and ended["state"] == "ended"
    assert not api.engine.runtime.conference_is_open("conf_class1")
    status, body = await api.post("/rooms/class1/tokens", {"identity": "amy"})
    assert status == 409 and error(body) == ("room_ended", "room")
    status, _ = await api.delete("/rooms/class1")
    assert status == 204
    status, body = await api.get("/rooms/class1")
    assert status == 404 and error(body) == ("not_found", "room")


async def test_room_pins_are_generated_shown_once_and_stored_hashed(api: Api) -> None:
    """Check a room created without a PIN gets a random 6-digit one, shown
    in the creation answer only; ``"pin": null`` makes an open room joined
    by its id; the database file holds neither PIN, and the room service
    still tells which PIN gives which role."""
    status, room = await api.post("/rooms", {"name": "gen", "moderator_pin": "86420975"})
    assert status == 201 and re.fullmatch(r"[0-9]{6}", room["pin"]) and room["pin_set"] is True
    status, open_room = await api.post("/rooms", {"name": "424242", "pin": None})
    assert status == 201 and open_room["pin"] is None and open_room["pin_set"] is False
    status, got = await api.get("/rooms/gen")
    assert status == 200 and room["pin"] not in str(got) and "86420975" not in str(got)
    store = api.engine.store
    assert store is not None and isinstance(store.path, Path)
    with sqlite3.connect(store.path) as db:
        rows = db.execute("SELECT pin, moderator_pin FROM rooms WHERE room_id = 'gen'").fetchall()
    assert rows and all(v.startswith("h1:") for v in rows[0])
    assert room["pin"] not in repr(rows) and "86420975" not in repr(rows)
    rooms = api.engine.rooms
    assert rooms is not None
    assert [rooms.pin_role("gen", p) for p in (room["pin"], "86420975", "gen", "000000")] == [
        "guest", "moderator", None, None]
    assert rooms.pin_role("conf_424242", "424242") == "guest"
    assert rooms.pin_role("nosuch", "424242") is None


@pytest.mark.parametrize("body, status, code, field", [
    ({"name": "bad name"}, 400, "invalid_field", "name"),
    ({"name": 5}, 400, "invalid_field", "name"),
    ({"max_participants": 0}, 400, "invalid_field", "max_participants"),
    ({"max_participants": "2"}, 400, "invalid_field", "max_participants"),
    ({"pin": "12"}, 400, "invalid_field", "pin"),
    ({"pin": "4321"}, 400, "invalid_field", "pin"),
    ({"pin": "12345a"}, 400, "invalid_field", "pin"),
    ({"moderator_pin": "9999"}, 400, "invalid_field", "moderator_pin"),
    ({"schedule": {"start": "tomorrow"}}, 400, "invalid_field", "schedule.start"),
    ({"schedule": {"duration": 0}}, 400, "invalid_field", "schedule.duration"),
    ({"schedule": {"when": 1}}, 400, "unknown_field", "schedule.when"),
    ({"colour": "red"}, 400, "unknown_field", "colour"),
])
async def test_room_bad_inputs(api: Api, body: dict[str, Any], status: int, code: str, field: str) -> None:
    """Check each malformed room field is refused with 400 naming the field."""
    got, answer = await api.post("/rooms", body)
    assert (got, error(answer)) == (status, (code, field))


async def test_room_conflicts_and_malformed_bodies(api: Api) -> None:
    """Check a taken name and a PIN in use answer 409/400, and a body that
    is not a JSON object answers 400."""
    assert (await api.post("/rooms", {"name": "r1", "pin": "555555"}))[0] == 201
    status, body = await api.post("/rooms", {"name": "r1"})
    assert status == 409 and error(body) == ("room_exists", "name")
    status, body = await api.post("/rooms", {"name": "r2", "pin": "555555"})
    assert status == 400 and error(body) == ("invalid_field", "pin")
    status, body = await api.post("/rooms", {"name": "r3", "moderator_pin": "555555"})
    assert status == 400 and error(body) == ("invalid_field", "moderator_pin")
    status, body = await api.post("/rooms", {"name": "555555", "pin": None})
    assert status == 400 and error(body) == ("invalid_field", "pin")  # its id is r1's PIN
    status, body = await api.post("/rooms", raw="{nope")
    assert status == 400 and error(body) == ("invalid_json", None)
    status, body = await api.post("/rooms", [1])
    assert status == 400 and error(body) == ("invalid_body", None)
    status, body = await api.post("/rooms/r1/lock", {})
    assert status == 400 and error(body) == ("missing_field", "locked")
    status, body = await api.post("/rooms/r1/lock", {"locked": True})
    assert status == 200 and body["locked"] is True


async def test_scheduled_room_refuses_before_start(api: Api) -> None:
    """Check a room scheduled in the future says so, and the scenario API refuses a join."""
    status, room = await api.post("/rooms", {"name": "later", "schedule": {"start": time.time() + 3600,
                                                                         "duration": 60}})
    assert status == 201 and room["state"] == "scheduled"
    rooms = api.engine.rooms
    assert rooms is not None
    from engine.runtime.rooms import RoomRefused

    with pytest.raises(RoomRefused) as info:
        rooms.join("conf_later", "p1", kind="pstn")
    assert info.value.code == "room_not_started"


async def test_schedule_end_and_empty_end(api: Api) -> None:
    """Check a room whose time is up is ended by the engine, and one with
    end_when_empty_after ends after its last participant left."""
    await api.post("/rooms", {"name": "short", "schedule": {"duration": 0.5}})
    rooms = api.engine.rooms
    assert rooms is not None
    assert await wait_until(lambda: rooms.get("short") is not None and rooms.get("short").ended_at is not None)  # type: ignore[union-attr]
    await api.post("/rooms", {"name": "quick", "end_when_empty_after": 0.2})
    rooms.join("conf_quick", "p1", kind="pstn")
    rooms.leave("conf_quick", "p1")
    assert await wait_until(lambda: rooms.get("quick").ended_at is not None)  # type: ignore[union-attr]
    status, room = await api.get("/rooms/quick")
    assert room["state"] == "ended"


async def test_join_token_sdk_login_cap_and_removal(api: Api, http: aiohttp.ClientSession) -> None:
    """Check a join token logs a browser in as its identity with its role;
    the conference admits it (listed by GET /rooms), the API mutes it in
    the media graph, refuses a second
    browser beyond max_participants 1, and DELETE of the participant hangs
    its call up. An expired or forged token is refused at login."""
    await api.post("/rooms", {"name": "consult", "max_participants": 1})
    status, tok = await api.post("/rooms/consult/tokens", {"identity": "dr", "display_name": "Dr",
                                                          "role": "moderator"})
    assert status == 201 and tok["permissions"] == ["mute_self", "mute_others", "remove", "lock", "end", "record"]
    status, verified = await api.post("/tokens/verify", {"token": tok["token"]})
    assert status == 200 and verified["identity"] == "dr" and verified["room"] == "consult"

    ws_url = f"http://127.0.0.1:{api.engine.http_port}/ws"
    sockets: list[SdkSocket] = []
    peers: list[BrowserPeer] = []

    async def join(token: str, wire: str) -> tuple[SdkSocket, dict[str, Any]]:
        sock = SdkSocket(await http.ws_connect(ws_url))
        sockets.append(sock)
        await sock.hello()
        login = await sock.request({"type": "login", "token": token})
        if login["type"] != "login_ok":
            return sock, login
        peer = BrowserPeer()
        peers.append(peer)
        await sock.send({"type": "call", "call": wire, "number": "conf_consult", "sdp": await peer.offer(),
                         "audio": True, "video": False})
        return sock, login

    try:
        sock1, login = await join(tok["token"], "c1")
        assert (login["type"], login["username"], login["role"], login["room"]) == (
            "login_ok", "dr", "moderator", "consult")
        connected = await sock1.recv("connected", call="c1", timeout=10)
        assert connected["type"] == "connected"
        status, room = await api.get("/rooms/consult")
        assert room["participant_count"] == 1
        person = room["participants"][0]
        assert (person["kind"], person["identity"], person["role"], person["display_name"]) == (
            "web", "dr", "moderator", "Dr")

        status, muted = await api.post(f"/rooms/consult/participants/{person['id']}/mute", {"muted": True})
        assert status == 200 and muted["muted"] is True
        call = api.engine.rooms.participants["consult"][person["id"]].call  # type: ignore[union-attr]
        assert api.engine.media_graph.is_muted(call)
        status, body = await api.post("/rooms/consult/participants/nobody/mute", {"muted": True})
        assert status == 404 and error(body) == ("not_found", "participant")
        status, body = await api.post(f"/rooms/consult/participants/{person['id']}/mute", {})
        assert status == 400 and error(body) == ("missing_field", "muted")

        status, tok2 = await api.post("/rooms/consult/tokens", {"identity": "guest2"})
        sock2, _ = await join(tok2["token"], "c2")
        failed = await sock2.recv("failed", call="c2", timeout=10)
        assert failed["code"] == 486
        status, body = await api.delete(f"/rooms/consult/participants/{person['id']}")
        assert status == 204
        await sock1.recv("hangup", call="c1", timeout=10)
        status, room = await api.get("/rooms/consult")
        assert room["participant_count"] == 0

        keys = api.engine.keys
        assert keys is not None
        expired, _ = keys.issue_join_token(room="consult", identity="late", display_name=None, role="guest",
                                           permissions=("mute_self",), ttl=60, now=time.time() - 3600)
        _, login = await join(expired, "c3")
        assert login["type"] == "error" and login["code"] == "login_failed"
        assert login["message"].startswith("token_expired")
        _, login = await join(tok["token"][:-4] + "AAAA", "c4")
        assert login["code"] == "login_failed" and login["message"].startswith("token_invalid")
        status, body = await api.post("/tokens/verify", {"token": expired})
        assert status == 401 and error(body) == ("token_expired", "token")
    finally:
        for sock in sockets:
            await sock.ws.close()
        for peer in peers:
            await peer.close()
    from logs import wait_for_log

    assert "refused room_full" in await wait_for_log(api.engine, "refused room_full")


@pytest.mark.parametrize("body, code, field", [
    ({}, "missing_field", "identity"),
    ({"identity": 7}, "invalid_field", "identity"),
    ({"identity": "a", "role": "king"}, "invalid_field", "role"),
    ({"identity": "a", "permissions": ["fly"]}, "invalid_field", "permissions"),
    ({"identity": "a", "ttl": -1}, "invalid_field", "ttl"),
])
async def test_token_bad_inputs(api: Api, body: dict[str, Any], code: str, field: str) -> None:
    """Check each malformed join-token field is refused with 400 naming it."""
    await api.post("/rooms", {"name": "t1"})
    status, answer = await api.post("/rooms/t1/tokens", body)
    assert (status, error(answer)) == (400, (code, field))


async def test_invites_single_use_and_locked_after_wrong_codes(api: Api) -> None:
    """Check an invite's code redeems once for a join token (no API key
    needed), a reused code answers 410 invite_used, wrong codes answer 403
    and lock the room's invites after max_attempts (423), the link token
    works like the code, and the listing never shows a code."""
    await api.post("/rooms", {"name": "meet"})
    status, inv = await api.post("/rooms/meet/invites", {"invitee": "ann@example.com",
                                                        "display_name": "Ann", "role": "guest",
                                                        "max_attempts": 2})
    assert status == 201 and len(inv["code"]) == 8 and inv["code"].isdigit() and inv["state"] == "pending"
    assert len(inv["link_token"]) >= 22
    public = api.with_key(None)
    status, tok = await public.post("/invites/redeem", {"code": inv["code"], "room": "meet"})
    assert status == 200 and (tok["identity"], tok["role"], tok["room"]) == ("ann@example.com", "guest", "meet")
    status, body = await public.post("/invites/redeem", {"code": inv["code"], "room": "meet"})
    assert status == 410 and error(body) == ("invite_used", "code")

    status, inv2 = await api.post("/rooms/meet/invites", {"invitee": "bob", "role": "moderator"})
    status, listing = await api.get("/rooms/meet/invites")
    assert [i["state"] for i in listing["invites"]] == ["used", "pending"]
    assert all("code" not in i and "link_token" not in i for i in listing["invites"])
    status, tok = await public.post("/invites/redeem", {"link_token": inv2["link_token"]})
    assert status == 200 and tok["role"] == "moderator"

    status, inv3 = await api.post("/rooms/meet/invites", {"invitee": "eve", "max_attempts": 2})
    wrong = "0" * 8 if inv3["code"] != "0" * 8 else "1" * 8
    for _ in range(2):
        status, body = await public.post("/invites/redeem", {"code": wrong, "room": "meet"})
        assert status == 403 and error(body) == ("invalid_code", "code")
    status, body = await public.post("/invites/redeem", {"code": inv3["code"], "room": "meet"})
    assert status == 423 and error(body) == ("invite_locked", "code")
    status, body = await public.post("/invites/redeem", {"room": "meet"})
    assert status == 400 and error(body) == ("missing_field", "code")
    status, body = await api.post("/rooms/nope/invites", {"invitee": "x"})
    assert status == 404 and error(body) == ("not_found", "room")
    status, body = await api.post("/rooms/meet/invites", {})
    assert status == 400 and error(body) == ("missing_field", "invitee")
    status, _ = await api.delete(f"/invites/{inv3['id']}")
    assert status == 204
    status, body = await api.delete(f"/invites/{inv3['id']}")
    assert status == 404 and error(body) == ("not_found", "invite")


async def test_expired_invite_is_refused(api: Api) -> None:
    """Check an invite past its ttl answers 410 invite_expired."""
    await api.post("/rooms", {"name": "brief"})
    status, inv = await api.post("/rooms/brief/invites", {"invitee": "x", "ttl": 0.05})
    assert status == 201
    assert await wait_until(lambda: time.time() > inv["expires_at"])
    status, body = await api.with_key(None).post("/invites/redeem", {"code": inv["code"]})
    assert status == 410 and error(body) == ("invite_expired", "code")


async def test_phone_pin_and_invite_code_through_the_scenario_api(make_engine: EngineFactory) -> None:
    """Check the scenario API a phone gatekeeper uses: room_for_pin maps a
    room's PIN and moderator PIN to its conference and role, and
    redeem_invite takes an invite's digits once."""
    engine = await make_engine(RULES, {**SCENARIOS, "gate": """
        from engine.runtime.scenario import AppEvents, Logger, RoomRefused, VoxEngine

        def started(e):
            Logger.write(f"pin {VoxEngine.room_for_pin('4321')} {VoxEngine.room_for_pin('9999')}"
                         f" {VoxEngine.room_for_pin('0000')}")
            code = VoxEngine.custom_data()
            Logger.write(f"invite {VoxEngine.redeem_invite(code)['identity']}")
            try:
                VoxEngine.redeem_invite(code)
            except RoomRefused as exc:
                Logger.write(f"again {exc.code}")
            Logger.write(f"room {VoxEngine.room('conf_dial')['max_participants']} {VoxEngine.room('adhoc')}")

        VoxEngine.add_event_listener(AppEvents.Started, started)
    """})
    assert engine.store is not None and engine.keys is not None
    engine.store.create_room("dial", pin="4321", moderator_pin="9999", max_participants=3)
    keys = engine.keys
    code, link = keys.new_invite_secrets()
    engine.store.create_invite("dial", "phone-guest", display_name=None, role="guest",
                               permissions=["mute_self"], code_hash=keys.code_hash(code),
                               link_hash=keys.link_hash(link), expires_at=time.time() + 60,
                               max_attempts=3, now=time.time())
    from engine.runtime.router import Rule
    import re

    session = engine.runtime.start_session(Rule("Gate", re.compile("gate"), None, ("gate",), 0), code)
    lines = "\n".join(engine.runtime.read_log(session.id))
    assert ("pin {'room': 'dial', 'conference': 'conf_dial', 'role': 'guest'}"
            " {'room': 'dial', 'conference': 'conf_dial', 'role': 'moderator'} None") in lines
    assert "invite phone-guest" in lines and "again invite_used" in lines
    assert "room 3 None" in lines


async def test_restart_keeps_rooms_users_invites_and_keys(make_engine: EngineFactory, http: aiohttp.ClientSession) -> None:
    """Check rooms, users, invites, API keys, join tokens and webhook
    subscriptions (with their secrets) survive stopping the engine and
    starting another on the same data directory (pending deliveries:
    test_api_sessions.test_pending_webhook_delivery_survives_restart)."""
    first = await make_engine(RULES, SCENARIOS, webhook_private_networks=True)  # a 127.0.0.1 webhook
    key = new_key(first, "admin")
    api = Api(first, http, key)
    await api.post("/rooms", {"name": "keep", "max_participants": 5, "pin": "246813"})
    await api.post("/users", {"name": "carol", "password": "pw-carol"})
    status, inv = await api.post("/rooms/keep/invites", {"invitee": "dan"})
    status, tok = await api.post("/rooms/keep/tokens", {"identity": "erin"})
    status, hook = await api.post("/webhooks", {"url": "http://127.0.0.1:9/hooks", "events": ["room.ended"]})
    assert status == 201
    await first.stop()

    second = await make_engine(RULES, SCENARIOS, data_dir=first.config.data_dir)
    api2 = Api(second, http, key)
    status, room = await api2.get("/rooms/keep")
    assert status == 200 and (room["max_participants"], room["pin_set"]) == (5, True)
    assert second.rooms is not None and second.rooms.pin_role("keep", "246813") == "guest"
    status, user = await api2.get("/users/carol")
    assert status == 200
    status, body = await api2.post("/tokens/verify", {"token": tok["token"]})
    assert status == 200 and body["identity"] == "erin"
    status, redeemed = await api2.with_key(None).post("/invites/redeem", {"code": inv["code"], "room": "keep"})
    assert status == 200 and redeemed["identity"] == "dan"
    status, kept = await api2.get(f"/webhooks/{hook['id']}")
    assert status == 200 and (kept["url"], kept["secret"]) == (hook["url"], hook["secret"])


async def test_moderation_from_the_sdk_is_checked_against_the_token(api: Api, http: aiohttp.ClientSession) -> None:
    """Check the web SDK's moderate frame: a guest may mute itself but not
    others (forbidden); a moderator mutes a guest, locks the room and ends
    it (the calls are hung up); an unknown participant is refused."""
    await api.post("/rooms", {"name": "mod"})
    ws_url = f"http://127.0.0.1:{api.engine.http_port}/ws"
    sockets: list[SdkSocket] = []
    peers: list[BrowserPeer] = []

    async def join(identity: str, role: str) -> SdkSocket:
        status, tok = await api.post("/rooms/mod/tokens", {"identity": identity, "role": role})
        sock = SdkSocket(await http.ws_connect(ws_url))
        sockets.append(sock)
        await sock.hello()
        assert (await sock.request({"type": "login", "token": tok["token"]}))["type"] == "login_ok"
        peer = BrowserPeer()
        peers.append(peer)
        await sock.send({"type": "call", "call": "c1", "number": "conf_mod", "sdp": await peer.offer(),
                         "audio": True, "video": False})
        await sock.recv("connected", call="c1", timeout=10)
        return sock

    try:
        dr = await join("dr", "moderator")
        gus = await join("gus", "guest")
        status, room = await api.get("/rooms/mod")
        ids = {p["identity"]: p["id"] for p in room["participants"]}
        denied = await gus.request({"type": "moderate", "action": "mute", "participant": ids["dr"]})
        assert (denied["type"], denied["code"]) == ("error", "forbidden")
        own = await gus.request({"type": "moderate", "action": "mute", "participant": ids["gus"]})
        assert own["type"] == "moderated"
        assert (await gus.request({"type": "moderate", "action": "lock"}))["code"] == "forbidden"
        unknown = await dr.request({"type": "moderate", "action": "remove", "participant": "nobody"})
        assert unknown["code"] == "unknown_participant"
        bad = await dr.request({"type": "moderate", "action": "explode"})
        assert bad["code"] == "bad_frame"
        assert (await dr.request({"type": "moderate", "action": "unmute", "participant": ids["gus"]}))[
            "type"] == "moderated"
        assert (await dr.request({"type": "moderate", "action": "lock"}))["type"] == "moderated"
        status, room = await api.get("/rooms/mod")
        assert room["locked"] is True and [p["muted"] for p in room["participants"]] == [False, False]
        assert (await dr.request({"type": "moderate", "action": "end"}))["type"] == "moderated"
        await gus.recv("hangup", call="c1", timeout=10)
        status, room = await api.get("/rooms/mod")
        assert room["state"] == "ended" and room["participant_count"] == 0
    finally:
        for sock in sockets:
            await sock.ws.close()
        for peer in peers:
            await peer.close()
